"""The batched runner with the real VGG-19 at 32 px: trials sharing a pass give what they give alone,
and failures (a non-finite loss, a broken sink, running out of memory) stay with their trial."""

import pytest
import torch

from conftest import metrics_apart
from helpers import read_jsonl, run_alone, settings, trial
from nst import engine

BASE = ("device=cpu", "size=32", "steps=10")
# Trials of one image shape that differ in everything a batch lets differ: loss weights, layer sets,
# loss forms, optimiser hyper-parameters, images, init, noise, seed, evaluation budget and averaging.
LBFGS_TRIALS = [
    ("style_weight=1e3",),
    ("style_weight=1e6", "seed=1", "init=content_noise", "init.noise_ratio=0.3"),
    ("layers=style2", "loss.style=paper", "loss.content=paper"),
    ("optimizer.lr=0.5", "steps=7"),
    ("optimizer.line_search=false", "optimizer.history_size=5", "steps=12"),
    ("style=the_scream", "content_weight=1e3", "tv_weight=10", "init=noise", "seed=4"),
    ("layers=style2", "loss.style=w2", "loss.tv=sum", "tv_weight=1", "average_decay=0.5", "steps=8"),
]
ADAM_TRIALS = [
    ("optimizer=adam", "optimizer.lr=0.02"),
    ("optimizer=adam", "optimizer.lr=0.05", "optimizer.betas=[0.5,0.9]", "steps=6"),
    ("optimizer=adam", "style_weight=1e6", "init=noise", "seed=2", "style_layers=[conv1_1,conv3_1]"),
    ("optimizer=adam", "layers=style2", "loss.style=w2", "loss.tv=stencil", "tv_weight=5", "average_decay=0.9"),
]


def _close(a: float, b: float, rel: float) -> bool:
    # batched convolutions differ from batch-of-one ones in the last bits: a term that is exactly 0
    # alone (content loss at the content image) can be 1e-8 in a batch
    return abs(a - b) <= rel * max(abs(a), abs(b)) + 1e-6


def _together_and_alone(tmp_path, trials):
    ss = [settings(*BASE, *o) for o in trials]
    together = engine.run_trials([trial(s, tmp_path / "batched" / str(i)) for i, s in enumerate(ss)], max_batch=len(ss))
    alone = [run_alone(s, tmp_path / "alone" / str(i)) for i, s in enumerate(ss)]
    return ss, together, alone


@pytest.mark.parametrize("trials", [LBFGS_TRIALS, ADAM_TRIALS], ids=["lbfgs", "adam"])
def test_trials_in_one_batch_give_what_they_give_alone(tmp_path, trials):
    ss, together, alone = _together_and_alone(tmp_path, trials)
    assert len({t["batch"]["id"] for t in together}) == 1
    assert [t["batch"]["size"] for t in together] == [len(ss)] * len(ss)
    assert [t["batch"]["position"] for t in together] == list(range(len(ss)))
    assert all(a["batch"]["size"] == 1 for a in alone)
    for i, (t, a, s) in enumerate(zip(together, alone, ss, strict=True)):
        assert t["status"] == a["status"] == "completed", (i, t.get("error"), a.get("error"))
        assert t["evaluations"] == a["evaluations"] <= s.steps, i  # each its own budget
        assert t["stop_reason"] == a["stop_reason"], i
        rows_t = read_jsonl(tmp_path / "batched" / str(i) / "metrics.jsonl")
        rows_a = read_jsonl(tmp_path / "alone" / str(i) / "metrics.jsonl")
        assert len(rows_t) == len(rows_a) == t["evaluations"]
        # the first evaluation sees the same start and the same targets: equal up to float noise
        # (content is left out: at the content image it is 0 alone and float noise in a batch)
        for key in ("style", "tv", "total"):
            assert _close(rows_t[0][key], rows_a[0][key], 1e-5), (i, key, rows_t[0][key], rows_a[0][key])
        assert not metrics_apart(a["metrics"], t["metrics"]), (i, metrics_apart(a["metrics"], t["metrics"]))
        assert _close(t["final"]["total"], a["final"]["total"], 0.02), i
    # the trials really differ: different budgets and different losses
    assert len({t["evaluations"] for t in together}) > 1
    assert len({round(t["final"]["total"], 6) for t in together}) == len(ss)


def test_incompatible_trials_go_to_separate_batches(tmp_path):
    ss = [settings(*BASE), settings(*BASE, "style_weight=1e6"), settings("device=cpu", "size=40", "steps=3"),
          settings(*BASE, "optimizer=adam", "steps=3"), settings(*BASE, "pooling=avg", "steps=3"),
          settings(*BASE, "precision=bf16", "steps=3")]
    out = engine.run_trials([trial(s, tmp_path / str(i)) for i, s in enumerate(ss)])
    assert all(o["status"] == "completed" for o in out)
    ids = [o["batch"]["id"] for o in out]
    # same shape and optimiser share; size, optimiser, pooling and precision split
    assert ids[0] == ids[1] and len(set(ids)) == 5
    assert [o["batch"]["size"] for o in out] == [2, 2, 1, 1, 1, 1]
    assert out[2]["image_size"] == [40, 30] and out[0]["image_size"] == [32, 24]


def test_max_batch_cuts_a_group(tmp_path):
    ss = [settings(*BASE, f"seed={i}", "steps=2") for i in range(5)]
    out = engine.run_trials([trial(s, tmp_path / str(i)) for i, s in enumerate(ss)], max_batch=2)
    assert [o["batch"]["size"] for o in out] == [2, 2, 2, 2, 1]
    assert [o["batch"]["position"] for o in out] == [0, 1, 0, 1, 0]
    assert len({o["batch"]["id"] for o in out}) == 3


def test_summary_reports_the_optimiser_history_next_to_its_state_and_the_auto_batch_counts_it(tmp_path):
    ss = [settings(*BASE, "steps=3", "optimizer.history_size=7"), settings(*BASE, "steps=3", "optimizer.history_size=3")]
    out = engine.run_trials([trial(s, tmp_path / str(i)) for i, s in enumerate(ss)], max_batch=2)
    w, h = ss[0].image_size
    # s and y, [B, m, n] float32 each, with m the batch's largest history_size
    history = 2 * 2 * 7 * (3 * w * h) * 4 / 2**20
    for o in out:
        assert o["optimizer_history_mb"] == round(history, 3) > 0
        assert o["optimizer_state_mb"] > o["optimizer_history_mb"]
    adam = engine.run_trials([trial(settings(*BASE, "steps=2", "optimizer=adam"), tmp_path / "adam")])[0]
    assert adam["optimizer_history_mb"] == 0 and adam["optimizer_state_mb"] > 0
    # the automatic batch size prices a trial's history: a longer one costs more
    assert engine.trial_bytes(ss[0]) - engine.trial_bytes(ss[1]) == 2 * 4 * 3 * w * h * 4


def test_a_non_finite_trial_leaves_its_batch_and_the_others_go_on(tmp_path):
    good = [settings(*BASE, "style_weight=1e3"), settings(*BASE, "style_weight=1e5", "seed=2", "init=noise")]
    bad = settings(*BASE, "init=noise", "style_weight=1e38")  # overflows float32 at the first evaluation
    out = engine.run_trials([trial(good[0], tmp_path / "0"), trial(bad, tmp_path / "bad"), trial(good[1], tmp_path / "1")])
    assert out[1]["status"] == "failed" and out[1]["batch"]["size"] == 3
    assert out[1]["error"].startswith("the loss became inf at evaluation 1; lower the loss weights or the learning rate")
    assert not (tmp_path / "bad" / "final.png").exists()
    for i, s in enumerate(good):
        alone = run_alone(s, tmp_path / f"alone{i}")
        assert out[2 * i]["status"] == "completed"
        assert out[2 * i]["evaluations"] == alone["evaluations"]
        assert _close(out[2 * i]["final"]["total"], alone["final"]["total"], 0.02)


def test_a_broken_sink_fails_only_its_trial(tmp_path):
    class Broken:
        def on_step(self, rec):
            if rec.evaluation == 3:
                raise OSError("disk full")

        def close(self, summary):
            pass

    ss = [settings(*BASE, "steps=5"), settings(*BASE, "steps=5", "seed=1")]
    out = engine.run_trials([trial(ss[0], tmp_path / "0", sinks=[Broken()]), trial(ss[1], tmp_path / "1")])
    assert out[0]["status"] == "failed" and out[0]["error"] == "OSError: disk full"
    assert "disk full" in (tmp_path / "0" / "error.log").read_text()
    assert out[1]["status"] == "completed" and out[1]["evaluations"] == 5


def _oom_above(monkeypatch, limit: int):
    """Make the network raise CUDA's out-of-memory error for batches of more than `limit` images."""
    forward = engine.FeatureExtractor.forward
    seen = []

    def limited(self, image):
        seen.append(image.shape[0])
        if image.shape[0] > limit:
            raise torch.OutOfMemoryError(f"CUDA out of memory (a batch of {image.shape[0]})")
        return forward(self, image)

    monkeypatch.setattr(engine.FeatureExtractor, "forward", limited)
    return seen


def test_out_of_memory_splits_the_batch_and_retries_both_halves(tmp_path, monkeypatch):
    ss = [settings(*BASE, f"style_weight=1e{3 + i}", "steps=4") for i in range(4)]
    seen = _oom_above(monkeypatch, 2)
    out = engine.run_trials([trial(s, tmp_path / str(i), frame_every=2) for i, s in enumerate(ss)], max_batch=4)
    assert 4 in seen and max(n for n in seen if n != 4) == 2  # tried 4, then ran halves of 2
    assert all(o["status"] == "completed" for o in out)
    assert [o["batch"]["size"] for o in out] == [2, 2, 2, 2] and len({o["batch"]["id"] for o in out}) == 1
    for i in range(4):  # the retry rewrote the trial's files from the start
        rows = read_jsonl(tmp_path / str(i) / "metrics.jsonl")
        assert [r["evaluation"] for r in rows] == [1, 2, 3, 4]
        assert sorted(p.name for p in (tmp_path / str(i) / "frames").iterdir()) == ["1.png", "2.png", "4.png"]


def test_a_failed_attempt_frees_its_tensors_before_the_halves_run(tmp_path, monkeypatch):
    """What the attempt that ran out of memory held (here: the image batch it evaluated) is gone before
    the retry's first evaluation, or the halves would run out of memory too."""
    import weakref

    forward = engine.FeatureExtractor.forward
    failed: list = []
    alive_at_retry: list[bool] = []

    def limited(self, image):
        if image.shape[0] > 2:
            failed.append(weakref.ref(image))
            raise torch.OutOfMemoryError(f"CUDA out of memory (a batch of {image.shape[0]})")
        if failed and not alive_at_retry:
            alive_at_retry.append(failed[0]() is not None)
        return forward(self, image)

    monkeypatch.setattr(engine.FeatureExtractor, "forward", limited)
    ss = [settings(*BASE, f"style_weight=1e{3 + i}", "steps=2") for i in range(4)]
    import gc

    gc.disable()  # the collector's own schedule must not be what frees them
    try:
        out = engine.run_trials([trial(s, tmp_path / str(i)) for i, s in enumerate(ss)], max_batch=4)
    finally:
        gc.enable()
    assert all(o["status"] == "completed" for o in out)
    assert alive_at_retry == [False]


def test_a_trial_out_of_memory_even_alone_fails_with_one_line_saying_what_to_lower(tmp_path, monkeypatch):
    _oom_above(monkeypatch, 0)
    out = engine.run_trials([trial(settings(*BASE, f"seed={i}"), tmp_path / str(i)) for i in range(2)])
    for o in out:
        assert o["status"] == "failed"
        assert o["error"].startswith("out of memory even alone: 32x24 px on ")
        assert "lower `size` or `optimizer.history_size`" in o["error"] and "\n" not in o["error"]


def test_a_trial_does_not_depend_on_its_batch_companions_seeds(tmp_path):
    """Its start noise comes from its own generator: the same trial beside companions with other seeds
    (first in the batch, where a batch-wide seed would come from) starts and ends the same."""
    mine = ("init=noise", "seed=3", "steps=4")
    runs = []
    for companion_seed in (11, 12):
        ss = [settings(*BASE, "init=noise", f"seed={companion_seed}", "steps=4"), settings(*BASE, *mine)]
        out = engine.run_trials([trial(s, tmp_path / str(companion_seed) / str(i)) for i, s in enumerate(ss)], max_batch=2)
        assert [o["batch"]["size"] for o in out] == [2, 2]
        runs.append((out[1], read_jsonl(tmp_path / str(companion_seed) / "1" / "metrics.jsonl")))
    (a, rows_a), (b, rows_b) = runs
    assert rows_a[0]["total"] == rows_b[0]["total"]  # the same start, to the bit
    assert _close(a["final"]["total"], b["final"]["total"], 1e-5)


def test_a_batch_restores_the_torch_settings_it_changed(tmp_path):
    before = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic,
              torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32, torch.get_num_threads())
    out = run_alone(settings(*BASE, "steps=2", "deterministic=true"), tmp_path)
    assert out["status"] == "completed"
    after = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic,
             torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32, torch.get_num_threads())
    assert after == before and before[0] is False  # the trial ran deterministic; the process is not left so


def test_iterate_averaging_saves_and_shows_the_average_of_the_iterates(tmp_path):
    import numpy as np
    from PIL import Image

    base = (*BASE, "optimizer=adam", "optimizer.lr=0.05", "steps=6")
    plain = run_alone(settings(*base), tmp_path / "plain", frame_every=1)
    averaged = run_alone(settings(*base, "average_decay=0.5"), tmp_path / "avg", frame_every=1)
    assert plain["status"] == averaged["status"] == "completed"
    read = lambda p: np.asarray(Image.open(p), dtype=np.float64)  # noqa: E731 -- a one-line helper, named where it is used
    # Adam's iterates: the evaluated points x_0 .. x_5 (the plain run's frames) and the last step's x_6
    iterates = [read(p) for p in sorted((tmp_path / "plain" / "frames").glob("*.png"))] + [read(tmp_path / "plain" / "final.png")]
    assert len(iterates) == 7
    d = 0.5
    expected = sum((1 - d) * d ** (6 - k) * x for k, x in enumerate(iterates)) / (1 - d**7)
    got = read(tmp_path / "avg" / "final.png")
    assert np.abs(got - expected).max() <= 1.0  # 8-bit rounding of the frames and of the result
    assert np.abs(got - iterates[-1]).max() > 3  # and it is not the last iterate
    # the frames show the average: the last one is the saved image; the final terms are the average's
    assert np.array_equal(read(sorted((tmp_path / "avg" / "frames").glob("*.png"))[-1]), got)
    assert averaged["final"]["total"] != plain["final"]["total"]


def test_carried_adam_state_changes_the_finer_level_and_lbfgs_says_it_restarts(tmp_path):
    base = ("device=cpu", "size=48", "steps=4", "pyramid.levels=2", "pyramid.steps=[4]")
    adam = ("optimizer=adam", "optimizer.lr=0.05")
    ss = [settings(*base, *adam), settings(*base, *adam, "pyramid.carry_optimizer=true"),
          settings(*base), settings(*base, "pyramid.carry_optimizer=true")]
    out = engine.run_trials([trial(s, tmp_path / str(i)) for i, s in enumerate(ss)], max_batch=2)
    assert all(o["status"] == "completed" for o in out), [o.get("error") for o in out]
    assert [o["batch"]["size"] for o in out] == [2] * 4  # carrying and not carrying trials share a batch
    rows = [read_jsonl(tmp_path / str(i) / "metrics.jsonl") for i in range(4)]
    # Adam: the coarse level is the same; the fine level's first step (its second evaluation) is not
    assert [r["total"] for r in rows[0][:5]] == [r["total"] for r in rows[1][:5]]
    assert rows[0][5]["total"] != rows[1][5]["total"]
    assert "optimizer_state" not in out[0]["levels"][1]
    assert [lvl["optimizer_state"] for lvl in out[1]["levels"]] == ["fresh", "carried"]
    # L-BFGS restarts either way, and says so
    assert [r["total"] for r in rows[2]] == [r["total"] for r in rows[3]]
    assert [lvl["optimizer_state"] for lvl in out[3]["levels"]] == ["fresh: L-BFGS restarts at every level"] * 2


def test_trials_sharing_targets_get_their_terms_in_one_pass_per_tick(tmp_path, monkeypatch):
    """The host's work per tick grows with the groups of trials that share targets, not with the trials:
    five trials in three groups (two of each of two styles, one with a TV term) cost three objective
    passes per tick, each over its group's rows, and each trial still gets its own terms."""
    from nst.loss import Loss

    calls = []
    real = Loss.terms

    def counted(self, feats, image):
        calls.append(image.shape[0])
        return real(self, feats, image)

    ss = [settings(*BASE, "optimizer=adam", "steps=3", *o) for o in
          [("style_weight=1e3",), ("style=the_scream",), ("style_weight=1e6", "seed=2", "init=noise"),
           ("style=the_scream", "style_weight=1e4"), ("tv_weight=1",)]]
    monkeypatch.setattr(Loss, "terms", counted)
    out = engine.run_trials([trial(s, tmp_path / str(i)) for i, s in enumerate(ss)], max_batch=5)
    monkeypatch.undo()
    assert all(o["status"] == "completed" and o["batch"]["size"] == 5 for o in out)
    # per tick: rows 0 and 2 (starry_night), 1 and 3 (the_scream), 4 (a TV term); the final terms come after
    assert calls[:9] == [2, 2, 1] * 3, calls
    rows = [read_jsonl(tmp_path / str(i) / "metrics.jsonl") for i in range(5)]
    assert [len(r) for r in rows] == [3] * 5
    assert rows[0][0]["tv"] == 0 and rows[4][0]["tv"] > 0  # as each gives alone
    assert rows[0][0]["total"] != rows[2][0]["total"] and rows[1][0]["total"] != rows[3][0]["total"]
    assert rows[0][0]["style"] != rows[1][0]["style"]
    alone = run_alone(ss[3], tmp_path / "alone")
    assert _close(alone["final"]["total"], out[3]["final"]["total"], 1e-4)
