"""Typed, validated settings for one trial, built from a plain dict (the resolved Hydra config).

The keys, their types and their choices are the schema's alone (nst.schema): `Settings` holds the
validated config as the schema's own `Config` dataclass (`config`, each closed choice its Enum
member) and adds only what is worked out here: the style list and its normalised blend, the pyramid
levels run and their steps (after a budget), the loss (`LossSpec`), the optimiser (`OptimizerSpec`),
the loss weights a null resolves to, and the content image's size. The flat names the rest of nst
reads (`s.size`, `s.arch`, `s.init`, ...) are read-only properties over `config`; `to_dict` is
those names with their values, the trial's record in summary.json.

Every check here is cheap and runs before a network is built, so bad input costs nothing.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from enum import Enum

from nst import device as devices
from nst import features, images, methods
from nst import schema as sc
from nst.errors import InputError
from nst.loss import LossSpec, layer_weights
from nst.optimizers import OptimizerSpec
from nst.schema import plain, typed, validated

MAX_LEVELS = 6
MAX_SIDE = 8192


@dataclass(frozen=True)
class Settings:
    # The validated config, typed by the schema. Not hashed (a dataclass with lists is not hashable):
    # what a hash needs is in the fields below and in the config's own values, which equality compares.
    config: sc.Config = field(hash=False)
    # Worked out from the config (validate):
    style: tuple[str, ...]  # one or more style images
    style_blend: tuple[float, ...]  # one weight per style, summing to 1
    pyramid_levels: int  # the levels run: those too small for the network's poolings dropped
    pyramid_steps: tuple[int, ...]  # budgets of the coarser levels, coarse to fine (levels - 1 numbers)
    objective: LossSpec
    content_weight: float  # a null in the config: the weights' default
    style_weight: float
    optimizer: OptimizerSpec
    steps: int  # with a budget, the resolved ones (as pyramid_steps)
    # The content image's (width, height) as loaded and cropped, before resizing: read once from the
    # file's header when the settings are made, so that every size below is worked out without
    # opening a file. None where the file is not there yet (an image the Python API was given in
    # memory: nst.api fills it in from the image). Not a setting: not in to_dict.
    content_size: tuple[int, int] | None = None
    method: methods.StrotssSpec | methods.NnstSpec | None = None  # engine=strotss or nnst: its keys (nst.methods)

    # The config's own keys under the names nst reads them by.
    @property
    def content(self) -> str:
        return self.config.content

    @property
    def size(self) -> int:
        return self.config.size

    @property
    def scale(self) -> float:
        return self.config.scale

    @property
    def style_size(self) -> sc.StyleSize:
        return self.config.style_size

    @property
    def style_scale(self) -> float:
        return self.config.style_scale

    @property
    def crop(self) -> sc.Crop:
        return self.config.crop

    @property
    def color(self) -> sc.Color:
        return self.config.color

    @property
    def pyramid_factor(self) -> float:
        return self.config.pyramid.factor

    @property
    def pyramid_carry_optimizer(self) -> bool:
        return self.config.pyramid.carry_optimizer

    @property
    def arch(self) -> sc.Arch:
        return self.config.model.arch

    @property
    def weights(self) -> sc.Weights:
        return self.config.model.weights

    @property
    def pooling(self) -> sc.Pooling:
        return self.config.pooling

    @property
    def tv_weight(self) -> float:
        return self.config.tv_weight

    @property
    def init(self) -> sc.InitKind:
        return self.config.init.kind

    @property
    def noise(self) -> sc.Noise:
        return self.config.init.noise

    @property
    def noise_ratio(self) -> float:
        return self.config.init.noise_ratio

    @property
    def init_path(self) -> str | None:
        return self.config.init.path or None

    @property
    def budget(self) -> float | None:
        return self.config.budget

    @property
    def average_decay(self) -> float:
        return self.config.average_decay

    @property
    def frame_every(self) -> int:
        return self.config.frame_every

    @property
    def log_every(self) -> int:
        return self.config.log_every

    @property
    def seed(self) -> int:
        return self.config.seed

    @property
    def device(self) -> str:
        return self.config.device

    @property
    def precision(self) -> sc.Precision:
        return self.config.precision

    @property
    def deterministic(self) -> bool:
        return self.config.deterministic

    @property
    def compile(self) -> sc.Compile:
        return self.config.compile

    @property
    def engine(self) -> sc.Engine:
        return self.config.engine

    @property
    def long_side(self) -> int:
        return max(1, round(self.size * self.scale))

    def level_long_sides(self) -> list[int]:
        """The long side of each pyramid level, coarse to fine (one level when the pyramid is off)."""
        n = self.pyramid_levels
        return [max(1, round(self.long_side / self.pyramid_factor ** (n - 1 - i))) for i in range(n)]

    @property
    def level_steps(self) -> tuple[int, ...]:
        return (*self.pyramid_steps, self.steps)

    @property
    def total_steps(self) -> int:
        """Evaluations over every level: what the progress bar and the sinks count to."""
        if self.method is not None:
            return self.method.evaluations(self.long_side, self.image_size, self.steps)
        return sum(self.level_steps)

    def size_at(self, long_side: int) -> tuple[int, int]:
        """(width, height) of the trial's images with this long side (a pyramid level, or the output's)."""
        if self.content_size is None:  # a file that was not there when validated: its own error now
            return images.target_size(*images.cropped_size(images.oriented_size("content", self.content), self.crop), long_side)
        return images.target_size(*self.content_size, long_side)

    @property
    def image_size(self) -> tuple[int, int]:
        """(width, height) of the output."""
        return self.size_at(self.long_side)

    def level_sizes(self) -> list[tuple[int, int]]:
        """(width, height) of each pyramid level, coarse to fine."""
        return [self.size_at(long_side) for long_side in self.level_long_sides()]

    def to_dict(self) -> dict:
        """The trial's settings by the names above (the config's keys read through the properties, and
        what was worked out), as plain values: the `settings` record of summary.json."""
        derived = [f.name for f in fields(self) if f.name not in ("config", "content_size")]
        names = [n for n, v in vars(Settings).items() if isinstance(v, property) and n not in _COMPUTED] + derived
        if self.method is None:  # engine=gatys: the record as before there were other engines
            names = [n for n in names if n not in ("engine", "method")]
        return {n: _plain(getattr(self, n)) for n in names}


_COMPUTED = {"long_side", "level_steps", "total_steps", "image_size"}  # worked out on reading: not settings


def _plain(v):
    if isinstance(v, Enum):
        return v.value
    if hasattr(v, "__dataclass_fields__"):
        return asdict(v)
    return v


# Types and choices are the schema's (nst.schema); what follows checks what a type cannot say.

def _at(d: dict, dotted: str):
    for part in dotted.split("."):
        d = d[part]
    return d


def _number(d: dict, key: str, *, positive=False, non_negative=False, maximum=None):
    v = _at(d, key)
    if v is None:  # a null the schema allows (content_weight, style_weight)
        return None
    if isinstance(v, float) and not math.isfinite(v):
        raise InputError(key, f"must be a finite number, got {v!r}")
    if positive and v <= 0:
        raise InputError(key, f"must be positive, got {v!r}")
    if non_negative and v < 0:
        raise InputError(key, f"must be zero or positive, got {v!r}")
    if maximum is not None and v > maximum:
        raise InputError(key, f"must be at most {maximum}, got {v!r}")
    return v


def _names(d: dict, key: str, what: str) -> list[str]:
    """A name or a list of names (the schema types these keys Any: a list or one string)."""
    v = _at(d, key)
    if v is None:
        return []
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list) or not all(isinstance(x, str) and x for x in v):
        raise InputError(key, f"must be {what}, got {v!r}")
    return v


def settings_from_dict(d: dict) -> Settings:
    """Settings from a resolved config (a plain dict, as OmegaConf.to_container gives it), checked
    against this machine's devices: for a script or a test. A command validates each trial once
    through its stage (nst.stage.Stage.settings). Raises InputError."""
    settings = validate(d)
    devices.check_here(settings.device, settings.precision)
    return settings


def validate(d: dict) -> Settings:
    """Settings from a resolved config: its types and choices checked against the schema, then what
    types cannot say. Raises InputError."""
    d = plain(validated(d))
    arch, weights = d["model"]["arch"], d["model"]["weights"]
    spec = features.get_weights_spec(arch, weights)
    styles, blend = _styles(d)
    content_size = _content_size(d)
    levels, factor, steps, coarse = _pyramid(d, content_size)
    init = d["init"]
    if init["kind"] == "image" and not init["path"]:
        raise InputError("init.path", "init=image needs init.path, the image to start from")
    if init["kind"] == "content_matched" and d["color"] != "none":
        raise InputError("init", f"init=content_matched starts in the painting's colours, which color={d['color']} "
                                 "keeps out of the result; use init=content with it")
    content_weight = _number(d, "content_weight", non_negative=True)
    style_weight = _number(d, "style_weight", non_negative=True)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", str(d.get("sweep_name", "sweep"))):
        raise InputError("sweep_name", f"must be a name (letters, digits, '.', '_', '-'), not a path, "
                                       f"got {d.get('sweep_name')!r}")
    # the ranges of the keys read as they are (through the properties), in the order they are reported
    _number(d, "size", positive=True, maximum=MAX_SIDE)
    _number(d, "scale", positive=True)
    _number(d, "style_scale", positive=True)
    objective = _objective(d, arch)
    _number(d, "tv_weight", non_negative=True)
    optimizer = _optimizer(d)
    _number(d, "init.noise_ratio", non_negative=True, maximum=1)
    _number(d, "budget", positive=True)
    _number(d, "average_decay", non_negative=True)
    _number(d, "frame_every", positive=True)
    _number(d, "log_every", positive=True)
    settings = Settings(
        config=typed(d),
        style=tuple(styles),
        style_blend=tuple(w / sum(blend) for w in blend),  # normalised: style_weight keeps its meaning
        pyramid_levels=levels,
        pyramid_steps=tuple(coarse),
        objective=objective,
        # null means: the default that suits these weights (the spec owns it)
        content_weight=spec.content_weight if content_weight is None else content_weight,
        style_weight=spec.style_weight if style_weight is None else style_weight,
        optimizer=optimizer,
        steps=steps,
        content_size=content_size,
        method=methods.spec_from(d),
    )
    _check_limits(settings)
    refused = methods.refusal(settings)
    if refused is not None:
        raise refused
    if settings.budget is not None:
        names = features.layer_names(settings.arch)
        deepest = max((*settings.objective.content_layers, *settings.objective.style_layers), key=names.index)
        *coarser, finest = features.budget_steps(settings.arch, deepest, settings.level_sizes(), settings.level_steps,
                                                 settings.budget)
        settings = replace(settings, pyramid_steps=tuple(coarser), steps=finest)
    if settings.average_decay >= 1:
        raise InputError("average_decay", f"must be in [0, 1) (0: off; 0.99: an average over about the last 100 steps), "
                                          f"got {settings.average_decay!r}")
    if settings.content_weight == 0 and settings.style_weight == 0 and settings.tv_weight == 0:
        raise InputError("style_weight", "content_weight, style_weight and tv_weight are all 0: there is nothing to "
                                         "optimise (the result would be the start image)")
    return settings


def _objective(d: dict, arch: str) -> LossSpec:
    layers = "a layer name or a list of them like [conv1_1,conv2_1]"
    content_layers = _names(d, "content_layers", layers)
    style_layers = _names(d, "style_layers", layers)
    features.check_layers("content_layers", arch, content_layers)
    features.check_layers("style_layers", arch, style_layers)
    for key, names in (("content_layers", content_layers), ("style_layers", style_layers)):
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise InputError(key, f"names {', '.join(twice)} more than once; give each layer once (weight layers with "
                                  "loss.style_layer_weights)")
    if not content_layers and not style_layers:
        raise InputError("style_layers", "content_layers and style_layers are both empty: there is nothing to optimise")
    return LossSpec(
        content_layers=tuple(content_layers),
        style_layers=tuple(style_layers),
        style_layer_weights=layer_weights("loss.style_layer_weights", style_layers, d["loss"]["style_layer_weights"]),
        content_form=d["loss"]["content"],
        style_form=d["loss"]["style"],
        tv_form=d["loss"]["tv"],
    )


def _optimizer(d: dict) -> OptimizerSpec:
    opt = d["optimizer"]
    lr = _number(d, "optimizer.lr", positive=True)
    if opt["name"] == "lbfgs":
        return OptimizerSpec("lbfgs", lr=lr, history_size=_number(d, "optimizer.history_size", positive=True),
                             line_search=opt["line_search"])
    betas = opt["betas"]
    if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
        raise InputError("optimizer.betas", f"must be two numbers in [0, 1), got {betas!r}")
    return OptimizerSpec("adam", lr=lr, betas=(betas[0], betas[1]))


def _styles(d: dict) -> tuple[list[str], list[float]]:
    styles = _names(d, "style", "an image (a bundled name or a path) or a list of them")
    if not styles:
        raise InputError("style", f"must be an image (a bundled name or a path) or a list of them, got {d['style']!r}")
    blend = d["style_blend"]
    if blend is None:
        blend = [1.0] * len(styles)
    if len(blend) != len(styles) or not all(math.isfinite(w) and w >= 0 for w in blend) or not sum(blend) > 0:
        raise InputError("style_blend", f"must be null or {len(styles)} non-negative number(s) with a positive sum, one per "
                                        f"style image, got {_at(d, 'style_blend')!r}")
    return styles, blend


def _content_size(d: dict) -> tuple[int, int] | None:
    """The content image's size as loaded and cropped, from its header; None when the file cannot be
    read here (its inputs say why, in their words: nst.stage), unless a budget needs it now."""
    try:
        return images.cropped_size(images.oriented_size("content", d["content"]), d["crop"])
    except InputError:
        if d.get("budget") is not None:
            raise
        return None


def _pyramid(d: dict, content: tuple[int, int] | None) -> tuple[int, float, int, list[int]]:
    """(levels, factor, steps, the coarser levels' steps). A level at which the content or a style image
    would be too small for the network's poolings is dropped, coarsest first, as crowsonkb/style-transfer-pytorch's pyramid
    starts at a minimum scale and has fewer levels for small images: the coarsest level kept gets the
    coarsest level's budget. The levels run are recorded in the trial's settings (pyramid_levels)."""
    levels = _number(d, "pyramid.levels", positive=True, maximum=MAX_LEVELS)
    factor = _number(d, "pyramid.factor", positive=True)
    if factor <= 1:
        raise InputError("pyramid.factor", f"must be greater than 1, got {factor!r}")
    steps = _number(d, "steps", positive=True)
    coarse = d["pyramid"]["steps"]
    if coarse is None:
        coarse = [steps] * (levels - 1)
    if len(coarse) != levels - 1 or not all(n > 0 for n in coarse):
        raise InputError("pyramid.steps", f"must be null or {levels - 1} positive whole number(s), the budgets of the "
                                          f"coarser levels from coarse to fine, got {coarse!r}")
    if levels == 1:
        return levels, factor, steps, coarse
    if content is None:
        return levels, factor, steps, coarse  # the checks that follow say what is wrong, in their words
    try:  # the styles' sizes after the crop (from their headers), and what the network needs
        style_layers = _names(d, "style_layers", "layer names")
        used = [*_names(d, "content_layers", "layer names"), *style_layers]
        need = 2 ** _poolings_before(d["model"]["arch"], [*used, "conv5_1"])
        styles = ([images.cropped_size(images.oriented_size("style", name), d["crop"]) for name in _styles(d)[0]]
                  if style_layers else [])
        style_need = 2 ** _poolings_before(d["model"]["arch"], style_layers) if style_layers else 0
        style_scale = _number(d, "style_scale", positive=True)
        long_side = max(1, round(_number(d, "size", positive=True) * _number(d, "scale", positive=True)))
    except (InputError, ValueError, KeyError, TypeError):
        return levels, factor, steps, coarse  # the checks that follow say what is wrong, in their words
    def fits(n: int) -> bool:  # the coarsest of n levels, as check_image_size measures it
        w, h = images.target_size(*content, max(1, round(long_side / factor ** (n - 1))))
        return min(w, h) >= need and all(min(images.style_base_size(d["style_size"], st, (w, h))) * style_scale >= style_need
                                         for st in styles)

    keep = levels
    while keep > 1 and not fits(keep):
        keep -= 1
    if keep < levels:
        import logging

        logging.getLogger("nst").info(
            f"pyramid: {levels - keep} of {levels} levels dropped: the image would be smaller than the {need} px its "
            f"short side needs for the network's poolings at size {long_side}; {keep} level(s) run")
        coarse = [coarse[0], *coarse[levels - keep + 1:]] if keep > 1 else []
    return keep, factor, steps, coarse


def _check_limits(settings: Settings) -> None:
    if settings.long_side > MAX_SIDE:
        raise InputError("scale", f"size x scale = {settings.long_side} px exceeds the limit of {MAX_SIDE} px")
    if settings.long_side * settings.style_scale > MAX_SIDE:
        raise InputError("style_scale", f"the style image would be {settings.long_side * settings.style_scale:.0f} px, "
                                        f"over the limit of {MAX_SIDE} px")
    devices.check_device_name(settings.device)


def _poolings_before(arch: str, layers) -> int:
    names = features.layer_names(arch)
    deepest = max(names.index(n) for n in layers)
    return sum(1 for n in names[:deepest] if n.startswith("pool"))


def check_image_size(s: Settings, size: tuple[int, int], style_sizes: Sequence[tuple[int, int]] = ()) -> None:
    """Every pooling layer halves the image: no side may reach 0 before the deepest layer used, by
    the trial or by the standardised metrics (conv5_1, after four poolings), at the coarsest
    pyramid level; nor may a style image's before the deepest style layer."""
    w, h = images.target_size(*images.cropped_size(size, s.crop), s.level_long_sides()[0])
    coarsest = " at the coarsest level" if s.pyramid_levels > 1 else ""
    need = 2 ** _poolings_before(s.arch, (*s.objective.content_layers, *s.objective.style_layers, "conv5_1"))
    if min(w, h) < need:
        key = "pyramid.levels" if s.pyramid_levels > 1 else "size" if s.scale == 1 else "scale"
        raise InputError(key, f"the image would be {w}x{h} px{coarsest}; its short side must be at least {need} px for "
                              f"the network's poolings (raise size, or use a squarer image)")
    if not s.objective.style_layers:
        return
    need = 2 ** _poolings_before(s.arch, s.objective.style_layers)
    for sw, sh in style_sizes:
        base = images.style_base_size(s.style_size, images.cropped_size((sw, sh), s.crop), (w, h))
        if min(base) * s.style_scale < need:
            raise InputError("style_scale", f"the style image would be about {base[0] * s.style_scale:.0f}x"
                                            f"{base[1] * s.style_scale:.0f} px{coarsest}; its short side must be at least "
                                            f"{need} px for the style layers (raise style_scale or size)")
