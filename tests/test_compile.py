"""compile=...: the network's evaluation under torch.compile (inductor on the CPU), at 24 px with a short
network (to conv2_2) so that compiling stays in seconds. One compile in the whole file (the module
fixture); the fallback test traces with a backend that fails, which compiles nothing."""

import logging

import pytest
import torch

from helpers import read_jsonl, run_alone, settings, trial
from nst import compiled, engine

# conv2_2 at 24x18 px (the metrics need a short side of 16): a short network, compiled in seconds rather than minutes on two cores
BASE = ("device=cpu", "size=24", "steps=6", "content_layers=[conv2_2]", "style_layers=[conv1_1,conv2_1]")
TRIALS = [("style_weight=1e3",), ("style_weight=1e5", "seed=1", "init=content_noise", "init.noise_ratio=0.3")]


def _graphs() -> int:
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two trials of one shape, compiled, one batch after the other; and each run eagerly."""
    tmp = tmp_path_factory.mktemp("compile")
    compiled.clear()
    start = compiled.compilations, _graphs()
    first = engine.run_trials([trial(settings(*BASE, *TRIALS[0], "compile=default"), tmp / "c0")])[0]
    after_first = compiled.compilations, _graphs()
    second = engine.run_trials([trial(settings(*BASE, *TRIALS[1], "compile=default"), tmp / "c1")])[0]
    after_second = compiled.compilations, _graphs()
    eager = [run_alone(settings(*BASE, *o, "compile=off"), tmp / f"e{i}") for i, o in enumerate(TRIALS)]
    return {"tmp": tmp, "compiled": [first, second], "eager": eager, "counts": [start, after_first, after_second]}


def _close(a: float, b: float, rel: float) -> bool:
    return abs(a - b) <= rel * max(abs(a), abs(b)) + 1e-6


def test_compiled_results_equal_eager_within_the_float_noise_floor(runs):
    tmp = runs["tmp"]
    for i, (c, e) in enumerate(zip(runs["compiled"], runs["eager"], strict=True)):
        assert c["status"] == e["status"] == "completed", (c.get("error"), e.get("error"))
        assert c["compile"] == "default" and e["compile"] == "off"
        assert c["evaluations"] == e["evaluations"] == 6
        rows_c, rows_e = read_jsonl(tmp / f"c{i}" / "metrics.jsonl"), read_jsonl(tmp / f"e{i}" / "metrics.jsonl")
        # the first evaluation: the same image through other kernels (fused, reordered sums)
        for key in ("content", "style", "total"):
            assert _close(rows_c[0][key], rows_e[0][key], 1e-5), (i, key, rows_c[0][key], rows_e[0][key])
        # after 6 L-BFGS steps the rounding has moved the path a little, no more
        assert _close(c["final"]["total"], e["final"]["total"], 0.02), (i, c["final"], e["final"])
    assert runs["compiled"][0]["final"]["total"] != runs["compiled"][1]["final"]["total"]  # two different trials


def test_one_compilation_serves_every_later_trial_of_that_shape(runs):
    start, after_first, after_second = runs["counts"]
    assert after_first[0] == start[0] + 1, "the first trial compiles the network once"
    assert after_first[1] > start[1], "and torch traced its graph"
    # the second trial (another batch, other weights, seed and init) reuses the graph: nothing compiled or traced
    assert after_second == after_first


def test_a_failed_compile_says_so_in_one_line_and_evaluates_eagerly(runs, tmp_path, monkeypatch, caplog):
    real = torch.compile

    def failing_backend(gm, example_inputs):
        raise RuntimeError("no compiler on this machine")

    # torch.compile as the product calls it, with a backend that fails when the first graph is compiled
    monkeypatch.setattr(torch, "compile", lambda model, mode=None, dynamic=None: real(model, backend=failing_backend,
                                                                                        dynamic=dynamic))
    compiled.clear()
    with caplog.at_level(logging.WARNING, logger="nst.compiled"):
        out = engine.run_trials([trial(settings(*BASE, *TRIALS[0], "compile=default"), tmp_path / "f")])[0]
    lines = [r.getMessage() for r in caplog.records if r.name == "nst.compiled"]
    assert len(lines) == 1 and "\n" not in lines[0], lines
    assert lines[0].startswith("compile=default failed (") and "no compiler on this machine" in lines[0]
    assert lines[0].endswith("evaluating without compiling")
    assert out["status"] == "completed" and out["compile"] == "off"
    # the eager path: every evaluation's terms as compile=off gives them, to the bit
    rows_f = read_jsonl(tmp_path / "f" / "metrics.jsonl")
    rows_e = read_jsonl(runs["tmp"] / "e0" / "metrics.jsonl")
    assert [{k: v for k, v in r.items() if k != "wall_time"} for r in rows_f] == \
           [{k: v for k, v in r.items() if k != "wall_time"} for r in rows_e]
    compiled.clear()


def test_auto_compiles_on_a_gpu_for_long_trials_only():
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert compiled.resolve_mode("auto", cpu, 10**6) == "off"
    assert compiled.resolve_mode("auto", gpu, compiled.AUTO_MIN_EVALUATIONS) == "reduce-overhead"
    assert compiled.resolve_mode("auto", gpu, compiled.AUTO_MIN_EVALUATIONS - 1) == "off"
    assert compiled.resolve_mode("default", cpu, 1) == "default"


def test_a_shrinking_batch_compiles_for_powers_of_two_rows():
    assert [compiled.bucket(k, 8) for k in range(1, 9)] == [1, 2, 4, 4, 8, 8, 8, 8]
    assert [compiled.bucket(k, 6) for k in range(1, 7)] == [1, 2, 4, 4, 6, 6]
