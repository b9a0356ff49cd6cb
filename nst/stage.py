"""One stage from a composed config to what a trial runs on: its validated `Settings` and its decoded
input images.

A `Stage` lives as long as the command and belongs to the app (nst.run.NstApp): the up-front check
(nst.preflight) runs it early for every trial, and the launcher's grouping and sizing and the trial's
own preparation then find each trial's Settings and images already there, so that each resolved
config is validated once and each input file decoded once in the process, with no module-level
state. A worker process or a SLURM task gets an empty Stage (it pickles without its contents) and
fills it for the trials it runs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from PIL import Image

    from nst.settings import Settings

# nst.settings, nst.images and nst.device (torch) are imported where they are used: the app holds a
# Stage from the start, and `nst --help` and tab completion must not import torch.


class Stage:
    def __init__(self) -> None:
        self._settings: dict[str, Settings] = {}
        self._images: dict[tuple, Image.Image] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {"_settings": {}, "_images": {}}  # another process decides for itself (its device, its files)

    def settings(self, resolved: dict) -> Settings:
        """A trial's Settings from its resolved config (a plain dict, as OmegaConf.to_container gives
        it); raises InputError. What this machine has (its devices) is asked every time: it is cheap,
        and a config validated for one machine may run on another."""
        try:
            key: str | None = json.dumps(resolved, sort_keys=True, default=str)
        except (TypeError, ValueError):
            key = None
        from nst import device
        from nst import settings as validation

        settings = self._settings.get(key) if key is not None else None
        if settings is None:
            settings = validation.validate(resolved)
            if key is not None:
                self._settings[key] = settings
        device.check_here(settings.device, settings.precision)
        return settings

    def image(self, key: str, value: str) -> Image.Image:
        """An input image, decoded once per file (its path, size and modification time: an edited
        file is decoded again). Shared by the trials that use it: never changed in place."""
        from nst import images

        path = images.resolve_image_path(key, value)
        try:
            st = path.stat()
            identity: tuple | None = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns)
        except OSError:
            identity = None
        if identity is not None and identity in self._images:
            return self._images[identity]
        image = images.decode(key, path)
        if identity is not None:
            self._images[identity] = image
        return image

    def inputs(self, s: Settings) -> dict:
        """Every input image of a trial, decoded (raising InputError for a bad file) and its sizes
        checked against the network's. PIL images: content, style (a list, one per style image),
        init (for init=image)."""
        from nst import settings as validation

        out: dict[str, Any] = {"content": self.image("content", s.content)}
        if s.objective.style_layers:
            out["style"] = [self.image("style" if len(s.style) == 1 else f"style[{i}]", name) for i, name in enumerate(s.style)]
        validation.check_image_size(s, out["content"].size, [img.size for img in out.get("style", [])])
        if s.init == "image":
            assert s.init_path is not None  # validation requires it for init=image
            out["init"] = self.image("init.path", s.init_path)
        return out


def load_inputs(s: Settings) -> dict:
    """One trial's input images, decoded now (a script's or a test's; a command's come from its Stage)."""
    return Stage().inputs(s)
