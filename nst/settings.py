"""Typed, validated settings for one trial, built from a plain dict (the resolved Hydra config).

Every check here is cheap and runs before a network is built, so bad input costs nothing.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from nst import features, images
from nst.errors import InputError
from nst.objective import CONTENT_FORMS, STYLE_FORMS, ObjectiveSpec, layer_weights
from nst.optimize import OPTIMIZERS, OptimizerSpec

INITS = ("content", "noise", "content_noise", "image")
STYLE_SIZES = ("match", "keep_aspect")
MAX_SIDE = 8192


@dataclass(frozen=True)
class Settings:
    content: str
    style: str
    size: int  # long side of the output before `scale`
    scale: float
    style_size: str
    arch: str
    weights: str
    pooling: str
    objective: ObjectiveSpec
    content_weight: float
    style_weight: float
    tv_weight: float
    optimizer: OptimizerSpec
    init: str
    noise_ratio: float
    init_path: str | None
    steps: int
    frame_every: int
    log_every: int
    seed: int
    device: str
    deterministic: bool

    @property
    def long_side(self) -> int:
        return max(1, round(self.size * self.scale))

    def to_dict(self) -> dict:
        return asdict(self)


def _get(d: dict, dotted: str):
    cur = d
    for part in dotted.split("."):
        if not isinstance(cur, dict) or part not in cur:
            raise InputError(dotted, "is missing from the config")
        cur = cur[part]
    return cur


def _choice(d: dict, key: str, allowed) -> str:
    v = _get(d, key)
    if v not in allowed:
        raise InputError(key, f"unknown value {v!r}; allowed: {', '.join(allowed)}")
    return v


def _number(d: dict, key: str, *, positive=False, non_negative=False, integer=False, maximum=None, allow_none=False):
    v = _get(d, key)
    if v is None and allow_none:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (isinstance(v, float) and not math.isfinite(v)):
        raise InputError(key, f"must be a {'whole ' if integer else ''}number, got {v!r}")
    if integer and int(v) != v:
        raise InputError(key, f"must be a whole number, got {v!r}")
    if positive and v <= 0:
        raise InputError(key, f"must be positive, got {v!r}")
    if non_negative and v < 0:
        raise InputError(key, f"must be zero or positive, got {v!r}")
    if maximum is not None and v > maximum:
        raise InputError(key, f"must be at most {maximum}, got {v!r}")
    return int(v) if integer else float(v)


def _layers(d: dict, key: str, arch: str) -> list[str]:
    v = _get(d, key)
    if v is None:
        return []
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, (list, tuple)) or not all(isinstance(x, str) for x in v):
        raise InputError(key, f"must be a list of layer names like [conv1_1,conv2_1], got {v!r}")
    features.check_layers(key, arch, list(v))
    return list(v)


def settings_from_dict(d: dict) -> Settings:
    arch = _choice(d, "model.arch", list(features.ARCHS))
    weights = _choice(d, "model.weights", list(features.WEIGHTS))
    spec = features.get_weights_spec(arch, weights)
    content_layers = _layers(d, "content_layers", arch)
    style_layers = _layers(d, "style_layers", arch)
    if not content_layers and not style_layers:
        raise InputError("style_layers", "content_layers and style_layers are both empty: there is nothing to optimise")
    slw = _get(d, "loss.style_layer_weights")
    if slw is not None and (not isinstance(slw, (list, tuple)) or not all(isinstance(w, (int, float)) for w in slw)):
        raise InputError("loss.style_layer_weights", f"must be null or a list of numbers, got {slw!r}")
    objective = ObjectiveSpec(
        content_layers=tuple(content_layers),
        style_layers=tuple(style_layers),
        style_layer_weights=layer_weights("loss.style_layer_weights", style_layers, slw),
        content_form=_choice(d, "loss.content", CONTENT_FORMS),
        style_form=_choice(d, "loss.style", STYLE_FORMS),
    )
    opt_name = _choice(d, "optimizer.name", OPTIMIZERS)
    if opt_name == "lbfgs":
        optimizer = OptimizerSpec("lbfgs", lr=_number(d, "optimizer.lr", positive=True),
                                  history_size=_number(d, "optimizer.history_size", positive=True, integer=True),
                                  line_search=bool(_get(d, "optimizer.line_search")))
    else:
        betas = _get(d, "optimizer.betas")
        if not isinstance(betas, (list, tuple)) or len(betas) != 2 or not all(isinstance(b, (int, float)) and 0 <= b < 1 for b in betas):
            raise InputError("optimizer.betas", f"must be two numbers in [0, 1), got {betas!r}")
        optimizer = OptimizerSpec("adam", lr=_number(d, "optimizer.lr", positive=True), betas=(float(betas[0]), float(betas[1])))

    init = _choice(d, "init.kind", INITS)
    noise_ratio = _number(d, "init.noise_ratio", non_negative=True, maximum=1)
    init_path = _get(d, "init.path")
    if init == "image" and not init_path:
        raise InputError("init.path", "init=image needs init.path, the image to start from")

    content_weight = _number(d, "content_weight", non_negative=True, allow_none=True)
    style_weight = _number(d, "style_weight", non_negative=True, allow_none=True)
    steps = _number(d, "steps", positive=True, integer=True)
    settings = Settings(
        content=str(_get(d, "content")),
        style=str(_get(d, "style")),
        size=_number(d, "size", positive=True, integer=True, maximum=MAX_SIDE),
        scale=_number(d, "scale", positive=True),
        style_size=_choice(d, "style_size", STYLE_SIZES),
        arch=arch,
        weights=weights,
        pooling=_choice(d, "pooling", list(features.POOLING)),
        objective=objective,
        # null means: the default that suits these weights (the spec owns it)
        content_weight=spec.content_weight if content_weight is None else content_weight,
        style_weight=spec.style_weight if style_weight is None else style_weight,
        tv_weight=_number(d, "tv_weight", non_negative=True),
        optimizer=optimizer,
        init=init,
        noise_ratio=noise_ratio,
        init_path=str(init_path) if init_path else None,
        steps=steps,
        frame_every=_number(d, "frame_every", positive=True, integer=True),
        log_every=_number(d, "log_every", positive=True, integer=True),
        seed=_number(d, "seed", integer=True),
        device=str(_get(d, "device")),
        deterministic=bool(_get(d, "deterministic")),
    )
    if settings.long_side > MAX_SIDE:
        raise InputError("scale", f"size x scale = {settings.long_side} px exceeds the limit of {MAX_SIDE} px")
    check_device_name(settings.device)
    logger = _choice(d, "logger.name", ("wandb", "none"))
    if logger == "wandb":
        from nst.wandb_sink import check_options

        check_options(_get(d, "wandb"))
    return settings


def check_device_name(device: str) -> None:
    ok = device in ("auto", "cpu", "cuda") or (device.startswith("cuda:") and device[5:].isdigit())
    if not ok:
        raise InputError("device", f"unknown device {device!r}; allowed: auto, cpu, cuda, cuda:N")


def check_image_size(s: Settings, content_size: tuple[int, int]) -> None:
    """Every pooling layer halves the image: one side must not reach 0 before the deepest layer
    used, by the trial or by the standardised metrics (conv5_1, after four poolings)."""
    w, h = images.target_size(*content_size, s.long_side)
    names = features.layer_names(s.arch)
    deepest = max(names.index(n) for n in (*s.objective.content_layers, *s.objective.style_layers, "conv5_1"))
    need = 2 ** sum(1 for n in names[:deepest] if n.startswith("pool"))
    if min(w, h) < need:
        key = "size" if s.scale == 1 else "scale"
        raise InputError(key, f"the image would be {w}x{h} px; its short side must be at least {need} px for the "
                              f"network's poolings (raise size, or use a squarer image)")


def load_inputs(s: Settings) -> dict:
    """Open and decode every input image (raising InputError for a bad file). Returns PIL images."""
    out = {"content": images.load_image("content", s.content)}
    check_image_size(s, out["content"].size)
    if s.objective.style_layers:
        out["style"] = images.load_image("style", s.style)
    if s.init == "image":
        out["init"] = images.load_image("init.path", s.init_path)
    return out
