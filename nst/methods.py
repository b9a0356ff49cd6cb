"""STROTSS and NNST as engines of the runner (engine=strotss, engine=nnst): a batch of compatible trials
runs through `nst.strotss.stylize` or `nst.nnst.stylize` with one network, each trial keeping its content
weight and its generator (seeded with its own seed), and every step of every trial becomes a record for
its sinks. The runner (nst.engine) then completes each trial as it completes a gatys trial: final.png,
metrics, summary.

`steps` is the user's cost in full-size evaluations, as `budget` counts them: each scale runs the same
number of iterations n, chosen so that n x (the scales' pixel counts over the output's, summed) is
`steps` (network cost; the losses' own work is extra, nst.strotss.run_flops and nst.nnst.nnst_flops).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from nst import interrupt, nnst, strotss
from nst.errors import InputError
from nst.features import FeatureExtractor, get_weights_spec, layer_names
from nst.sinks import due

# STROTSS's alpha at the coarsest scale is 16 x the weight its command line takes (styleTransfer.py).
STROTSS_ALPHA_PER_WEIGHT = 16.0


@dataclass(frozen=True)
class StrotssSpec:
    """engine=strotss: the `strotss` keys (nst.schema.StrotssConf)."""

    coarsest: int
    lr: float
    content_weight_factor: float
    moment_weight: float
    pyramid_levels: int
    samples: int
    layers: tuple[str, ...]

    def schedule(self, long_side: int, steps: int) -> strotss.Schedule:
        sides = strotss.Schedule.for_size(long_side, coarsest=self.coarsest).long_sides
        n = iterations(steps, [(side / long_side) ** 2 for side in sides])
        return strotss.Schedule(long_sides=sides, lrs=tuple([self.lr] * (len(sides) - 1) + [self.lr / 2]),
                                iterations=(n,) * len(sides), content_weight_factor=self.content_weight_factor,
                                moment_weight=self.moment_weight, pyramid_levels=self.pyramid_levels,
                                samples=self.samples, layers=self.layers)

    def evaluations(self, long_side: int, size: tuple[int, int], steps: int) -> int:
        return sum(self.schedule(long_side, steps).iterations)


@dataclass(frozen=True)
class NnstSpec:
    """engine=nnst: the `nnst` keys (nst.schema.NnstConf)."""

    lr: float
    betas: tuple[float, float]
    scales: int | None
    pyramid_levels: int
    rotations: bool
    layers: tuple[str, ...]
    final_layers: tuple[str, ...] | None
    hypercolumn_stride: int
    final_max_side: int

    def params(self, size: tuple[int, int], steps: int, alpha: float) -> nnst.NNSTParams:
        w, h = size
        base = nnst.NNSTParams(scales=self.scales)
        scales = nnst.resolve_scales(base, h, w)
        n = iterations(steps, [4.0 ** -k for k in range(scales)] + [1.0])  # the scales, then the final pass
        return nnst.NNSTParams(alpha=alpha, lr=self.lr, betas=self.betas, steps=n, final_steps=n, scales=scales,
                               pyramid_levels=self.pyramid_levels, rotations=self.rotations, layers=self.layers,
                               final_layers=self.final_layers, hypercolumn_stride=self.hypercolumn_stride,
                               final_max_side=self.final_max_side)

    def evaluations(self, long_side: int, size: tuple[int, int], steps: int) -> int:
        p = self.params(size, steps, 1.0)
        return p.steps * nnst.resolve_scales(p, size[1], size[0]) + p.final_steps


def iterations(steps: int, fractions: Sequence[float]) -> int:
    """Iterations per scale so that they cost `steps` full-size evaluations, the scales' pixel counts
    being `fractions` of the output's."""
    return max(1, round(steps / sum(fractions)))


def spec_from(d: dict) -> StrotssSpec | NnstSpec | None:
    """The engine's keys from a resolved config, checked; None for engine=gatys. Raises InputError."""
    engine = str(d["engine"])
    if engine == "gatys":
        return None
    g = dict(d[engine])
    if g["layers"] is None:  # the port's own (its module's layer table)
        g["layers"] = list(strotss.HYPERCOLUMN_LAYERS if engine == "strotss" else nnst.LAYERS)
    relus = [n for n in layer_names("vgg19") if n.startswith("relu")]
    for key in ("layers", "final_layers"):
        names = g.get(key)
        if names is None and key == "final_layers":
            continue
        wrong = [n for n in names or [] if n not in relus]
        if not names or wrong:
            raise InputError(f"{engine}.{key}", f"rectified VGG-19 layers only ({', '.join(relus)}), got {names!r}")
    if not g["lr"] > 0:
        raise InputError(f"{engine}.lr", f"must be positive, got {g['lr']!r}")
    if engine == "strotss":
        for key in ("coarsest", "pyramid_levels", "samples"):
            if g[key] < 1:
                raise InputError(f"strotss.{key}", f"must be at least 1, got {g[key]!r}")
        return StrotssSpec(coarsest=g["coarsest"], lr=g["lr"], content_weight_factor=g["content_weight_factor"],
                           moment_weight=g["moment_weight"], pyramid_levels=g["pyramid_levels"], samples=g["samples"],
                           layers=tuple(g["layers"]))
    betas = g["betas"]
    if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
        raise InputError("nnst.betas", f"must be two numbers in [0, 1), got {betas!r}")
    if g["scales"] is not None and g["scales"] < 1:
        raise InputError("nnst.scales", f"must be null or at least 1, got {g['scales']!r}")
    for key in ("pyramid_levels", "hypercolumn_stride", "final_max_side"):
        if g[key] < 1:
            raise InputError(f"nnst.{key}", f"must be at least 1, got {g[key]!r}")
    return NnstSpec(lr=g["lr"], betas=(betas[0], betas[1]), scales=g["scales"], pyramid_levels=g["pyramid_levels"],
                    rotations=g["rotations"], layers=tuple(g["layers"]),
                    final_layers=tuple(g["final_layers"]) if g["final_layers"] is not None else None,
                    hypercolumn_stride=g["hypercolumn_stride"], final_max_side=g["final_max_side"])


def refusal(s) -> InputError | None:
    """What a trial of another engine cannot combine with (settings `s`), as one line; None when it can run.
    These engines run their own optimiser, start, scales and colour handling, so a key that would change
    them is refused rather than ignored."""
    e = str(getattr(s.engine, "value", s.engine))  # the schema's Engine member, or its name
    if e == "gatys":
        if s.color == "nnst":
            return InputError("color", "color=nnst is NNST's post-process: it needs engine=nnst (recipe=nnst)")
        return None
    why = "stochastic" if e == "strotss" else "not nst's"
    checks = [
        (s.optimizer.name == "lbfgs", "optimizer", f"engine={e} runs its own optimiser on a {why} objective: L-BFGS "
                                                   f"cannot; use optimizer=adam (its keys are not used; `{e}.lr` is)"),
        (s.arch != "vgg19", "model", f"engine={e} runs on VGG-19 layers: use model=vgg19"),
        (len(s.style) != 1, "style", f"engine={e} takes one style image, got {len(s.style)}"),
        (s.color not in ("none", "histogram", "nnst"), "color",
         f"engine={e} takes color=none or histogram{' or nnst' if e == 'nnst' else ''}, got {s.color}"),
        (s.color == "nnst" and e != "nnst", "color", "color=nnst is NNST's post-process: it needs engine=nnst"),
        (s.pyramid_levels != 1, "pyramid.levels", f"engine={e} runs its own scales: use pyramid.levels=1"),
        (s.init != "content", "init", f"engine={e} makes its own start image: use init=content"),
        (s.tv_weight != 0, "tv_weight", f"engine={e} has no TV term: use tv_weight=0"),
        (s.average_decay != 0, "average_decay", f"engine={e} saves its last iterate: use average_decay=0"),
        (e == "nnst" and not 0 <= s.content_weight <= 1, "content_weight",
         f"engine=nnst takes content_weight as its alpha, in [0, 1], got {s.content_weight}"),
    ]
    for bad, key, message in checks:
        if bad:
            return InputError(key, message)
    return _too_small(s)


def _too_small(s) -> InputError | None:
    """The method's own size checks, on the output's size, before any work."""
    w, h = s.image_size
    if s.engine == "nnst":
        try:
            nnst.check_params(s.method.params((w, h), s.steps, s.content_weight), h, w)
        except InputError as e:
            return InputError("size", f"{e} (at size={s.size})")
        return None
    schedule = s.method.schedule(s.long_side, s.steps)
    need = 2 ** max(int(name[4:].split("_")[0]) - 1 for name in schedule.layers)  # the deepest layer's poolings
    coarsest = min(w, h) * schedule.long_sides[0] / max(w, h)
    if int(coarsest) < need:
        return InputError("size", f"engine=strotss: the coarsest scale ({schedule.long_sides[0]} px long) would be "
                                  f"{int(coarsest)} px on its short side, under the {need} px {schedule.layers[-1]} needs; "
                                  "raise size or strotss.coarsest")
    return None


class _Watching:
    """The network, noting each image it is asked to differentiate (the image a step evaluates): the
    method's loops keep their images to themselves, and a trial's frames need them."""

    def __init__(self, extractor: FeatureExtractor):
        self.extractor, self.layers, self.spec = extractor, extractor.layers, extractor.spec
        self.seen: torch.Tensor | None = None

    def __call__(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        if torch.is_grad_enabled() and image.requires_grad:
            self.seen = image.detach()
        return self.extractor(image)


# on_record(trial's position in the batch, evaluation (1-based), scale (None: one), terms, image [1,3,h,w])
OnRecord = Callable[[int, int, int | None, dict[str, float], torch.Tensor], None]


@dataclass
class Outcome:
    image: torch.Tensor  # [B,3,H,W] in [0,1]: the result, as saved
    final: list[dict[str, float]]  # each trial's terms at its last step
    evaluations: int  # per trial


def run(settings: list, contents: torch.Tensor, style: torch.Tensor, device: torch.device, precision: str,
        on_record: OnRecord) -> Outcome:
    """One batch of trials of one engine (their settings agree on everything but content_weight and seed):
    contents [B,3,H,W], style [1 or B,3,h,w] in [0,1] on `device`."""
    s0 = settings[0]
    spec = s0.method
    b, (height, width) = contents.shape[0], contents.shape[-2:]
    layers = list(spec.layers) + [n for n in (getattr(spec, "final_layers", None) or ()) if n not in spec.layers]
    extractor = _Watching(FeatureExtractor(s0.arch, get_weights_spec(s0.arch, s0.weights), layers, s0.pooling, device,
                                           precision))
    generators = [torch.Generator().manual_seed(s.seed) for s in settings]
    count = [0]
    if s0.engine == "strotss":
        schedule = spec.schedule(s0.long_side, s0.steps)
        alpha = [STROTSS_ALPHA_PER_WEIGHT * s.content_weight for s in settings]
        last: list[dict[str, float]] = [{} for _ in range(b)]
        multi = len(schedule.long_sides) > 1

        def on_step(scale: int, _step: int, terms: dict[str, torch.Tensor]) -> None:
            count[0] += 1
            values = torch.stack([terms[k].float() for k in terms]).cpu().tolist()  # host synchronisation: once a step
            seen = extractor.seen
            assert seen is not None
            for j in range(b):
                last[j] = {k: values[a][j] for a, k in enumerate(terms)}
                on_record(j, count[0], scale if multi else None, last[j], seen[j:j + 1].clamp(0, 1))

        result = strotss.stylize(contents, style, extractor, schedule=schedule, alpha=alpha,  # type: ignore[arg-type]
                                 generators=generators, on_step=on_step)
        return Outcome(result.images, last, count[0])
    params = [spec.params((width, height), s.steps, s.content_weight) for s in settings]
    total = spec.evaluations(s0.long_side, (width, height), s0.steps)
    frames: dict[int, torch.Tensor] = {}

    def watching(image: torch.Tensor) -> dict[str, torch.Tensor]:
        interrupt.check()  # a Ctrl-C whose KeyboardInterrupt was swallowed stops the run here
        feats = extractor(image)
        if torch.is_grad_enabled() and image.requires_grad:
            count[0] += 1
            if due(count[0], s0.frame_every, total):  # the steps' images are kept only where a sink saves them
                frames[count[0]] = image.detach().clamp(0, 1)
        return feats

    out = nnst.stylize(contents, style, watching, params, generators, color=s0.color == "nnst")
    stages = [losses for _, losses in out.history]  # [steps, B] each, in order
    n, final = 0, [dict[str, float]() for _ in range(b)]
    shown = out.image
    for k, losses in enumerate(stages):
        for row in losses.float().cpu().tolist():  # host synchronisation: once per trial batch, at its end
            n += 1
            shown = frames.get(n, shown)
            for j in range(b):
                # the scales' cosine to the nearest-neighbour targets, then the final pass's per-layer term
                final[j] = {"total": row[j], "per_layer" if k == len(stages) - 1 else "hypercolumn": row[j]}
                on_record(j, n, k if len(stages) > 1 else None, final[j], shown[j:j + 1])
    return Outcome(out.image, final, n)


__all__ = ["NnstSpec", "Outcome", "StrotssSpec", "iterations", "refusal", "run", "spec_from"]
