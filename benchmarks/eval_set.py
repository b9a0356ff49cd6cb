"""The evaluation set file (benchmarks/eval_set.toml): photographs crossed with paintings, each
resolved offline to an image: a bundled example's name, or `skimage:NAME` for a photograph that
scikit-image ships inside its wheel (loaded by skimage.data.NAME(), never downloaded)."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from pathlib import Path

import tomllib
from PIL import Image

DEFAULT = Path(__file__).with_name("eval_set.toml")
# content metrics whose photograph-against-itself value is finite (its best): the content axis' 0
# (psnr's is infinite); each is used where nst.metrics measures it
CONTENT_METRICS = ("gmsd", "ssim", "self_sim_dist")
FIELDS = ("source", "work", "author", "licence")
# skimage.data's photographs that are inside the wheel (skimage/data/, its legacy datasets); others
# would be fetched from the network by pooch, which an offline set must not do
SKIMAGE_SHIPPED = {"astronaut", "chelsea", "coffee", "rocket", "camera", "hubble_deep_field", "immunohistochemistry",
                   "retina"}


class SetError(ValueError):
    """A bad set file, in one line naming the file and the key."""


@dataclass(frozen=True)
class Entry:
    name: str
    role: str  # "photographs" or "paintings"
    source: str
    work: str
    author: str
    licence: str


@dataclass(frozen=True)
class Pair:
    photo: Entry
    painting: Entry

    @property
    def label(self) -> str:
        return f"{self.photo.name}:{self.painting.name}"


def load(path: str | Path, only: str | None = None) -> list[Pair]:
    """Every photograph x every painting, in the file's order, less those `only` leaves out."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise SetError(f"{path}: no such set file") from None
    except tomllib.TOMLDecodeError as e:
        raise SetError(f"{path}: not TOML: {e}") from None
    groups = {}
    for role in ("photographs", "paintings"):
        table = data.get(role)
        if not isinstance(table, dict) or not table:
            raise SetError(f"{path}: [{role}.NAME] tables expected (at least one)")
        groups[role] = [_entry(path, role, name, fields) for name, fields in table.items()]
    extra = sorted(set(data) - {"photographs", "paintings"})
    if extra:
        raise SetError(f"{path}: unknown table {extra[0]!r} (allowed: photographs, paintings)")
    pairs = [Pair(p, q) for p in groups["photographs"] for q in groups["paintings"]]
    if only:
        patterns = [o for o in only.split(",") if o]
        pairs = [x for x in pairs if any(fnmatch.fnmatchcase(x.label, pat) for pat in patterns)]
        if not pairs:
            raise SetError(f"{path}: --only {only!r} matches no photograph:painting pair")
    return pairs


def _entry(path: Path, role: str, name: str, fields) -> Entry:
    where = f"{path}: {role}.{name}"
    if not isinstance(fields, dict):
        raise SetError(f"{where}: a table with {', '.join(FIELDS)} expected")
    unknown = sorted(set(fields) - set(FIELDS))
    missing = [f for f in FIELDS if not isinstance(fields.get(f), str) or not fields[f].strip()]
    if unknown:
        raise SetError(f"{where}: unknown key {unknown[0]!r} (allowed: {', '.join(FIELDS)})")
    if missing:
        raise SetError(f"{where}: {missing[0]} missing (every entry says {', '.join(FIELDS)})")
    if ":" in name or "/" in name:
        raise SetError(f"{where}: a name without ':' or '/' expected (it names the pair and its folder)")
    src = fields["source"]
    if src.startswith("skimage:") and src.split(":", 1)[1] not in SKIMAGE_SHIPPED:
        raise SetError(f"{where}: source {src!r}: not one of the photographs scikit-image ships "
                       f"({', '.join(sorted(SKIMAGE_SHIPPED))})")
    if not src.startswith("skimage:") and src not in _bundled():
        raise SetError(f"{where}: source {src!r}: neither skimage:NAME nor a bundled example ({', '.join(sorted(_bundled()))})")
    return Entry(name, role, src, fields["work"], fields["author"], fields["licence"])


def _bundled() -> dict[str, Path]:
    from nst.images import bundled_images

    return bundled_images()


def open_image(source: str) -> Image.Image:
    """The entry's image, RGB, from the installed packages only."""
    if source.startswith("skimage:"):
        try:
            import skimage.data
        except ImportError:
            raise SetError(f"source {source!r} needs scikit-image: pip install -e '.[quality]'") from None
        return Image.fromarray(getattr(skimage.data, source.split(":", 1)[1])()).convert("RGB")
    with Image.open(_bundled()[source]) as im:
        return im.convert("RGB")


def needs_skimage(pairs: list[Pair]) -> bool:
    return any(e.source.startswith("skimage:") for x in pairs for e in (x.photo, x.painting))


def materialise(pairs: list[Pair], folder: Path) -> dict[str, str]:
    """name -> what nst takes as content= / style=: a bundled name as it is; a scikit-image
    photograph written once as folder/NAME.png (inside the run's own output folder)."""
    out: dict[str, str] = {}
    for e in {e.name: e for x in pairs for e in (x.photo, x.painting)}.values():
        if e.source.startswith("skimage:"):
            target = folder / f"{e.name}.png"
            if not target.is_file():
                folder.mkdir(parents=True, exist_ok=True)
                open_image(e.source).save(target)
            out[e.name] = str(target.resolve())
        else:
            out[e.name] = e.source
    return out
