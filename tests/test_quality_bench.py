"""benchmarks/quality.py: recipes at equal cost on a Pareto front of the fair ruler (a CPU smoke run)."""

import csv
import json
import re
import subprocess
import sys

import pytest

from conftest import ROOT, nst_env

sys.path.insert(0, str(ROOT / "benchmarks"))
import quality


def _point(recipe, style, content):
    return {"recipe": recipe, "style_swd": style, "ssim": content}


def test_the_front_keeps_what_nothing_beats_beyond_the_floor():
    a = _point("a", 0.30, 0.60)  # most style
    b = _point("b", 0.40, 0.80)  # more content: a trade-off with a, both on the front
    c = _point("c", 0.45, 0.70)  # worse than b on both, by more than the floor: off
    d = _point("d", 0.401, 0.799)  # worse than b on both, but within a 1 % floor: tied, on
    on = quality.front([a, b, c, d], "style_swd", "ssim", True, 0.01)
    assert [p["recipe"] for p in on] == ["a", "b", "d"]
    # with no floor, d's tiny loss to b counts
    assert [p["recipe"] for p in quality.front([a, b, c, d], "style_swd", "ssim", True, 0.0)] == ["a", "b"]
    # a content metric where lower is better (gmsd) turns the comparison round
    on = quality.front([_point("x", 0.3, 0.2), _point("y", 0.4, 0.3)], "style_swd", "ssim", False, 0.0)
    assert [p["recipe"] for p in on] == ["x"]


def _run(tmp_path, *args):
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / "quality.py"), *args, "--out", str(tmp_path / "q")],
                          cwd=ROOT, env=nst_env(tmp_path), capture_output=True, text=True, timeout=600)


def test_quality_benchmark_smoke(tmp_path):
    r = _run(tmp_path, "--size", "48", "--budget", "3", "--pairs", "tubingen:the_scream",
             "--recipes", "nst,pastiche", "--variant", "aspect:style_size=keep_aspect", "--multipliers", "1,4",
             "--content-metric", "ssim")
    assert r.returncode == 0, r.stderr[-3000:]
    with open(tmp_path / "q" / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    # every entry (nst first, then the variant, then the other recipes) at every multiplier, in order
    assert [(x["recipe"], float(x["multiplier"])) for x in rows] == [
        ("nst", 1), ("nst", 4), ("aspect", 1), ("aspect", 4), ("pastiche", 1), ("pastiche", 4)]
    for x in rows:
        # equal cost: the budget in full-size evaluations, the losses' work (Gram matrices) included, as
        # near as whole steps get (one evaluation is 1.07 of work here)
        assert x["equal"] == "work" and float(x["recipe_budget"]) <= 3 and float(x["cost"]) <= 3
        assert float(x["cost"]) < float(x["work"]) < 3 + 1.07
        assert float(x["style_swd"]) > 0 and 0 < float(x["ssim"]) <= 1
    weights = {(x["recipe"], float(x["multiplier"])): float(x["style_weight"]) for x in rows}
    assert weights[("pastiche", 4)] == 4 * weights[("pastiche", 1)] == 4 * 50  # the recipe's own weight, times
    assert weights[("nst", 1)] == weights[("aspect", 1)] == 1e5
    front_text = (tmp_path / "q" / "front.txt").read_text()
    # the floor measured in the run: the first trial again, alone, at another thread count than its batch's
    threads = int(rows[0]["cpu_threads"])
    other = 1 if threads > 1 else 2
    (trial,) = [d for d in (tmp_path / "q" / "noise_floor" / f"threads{other}").iterdir() if d.name.startswith("0_")]
    with open(trial / "summary.json") as f:
        again_alone = json.load(f)
    assert again_alone["cpu_threads"] == other != threads
    measured = max(abs(again_alone["metrics"][k] - float(rows[0][k])) / abs(float(rows[0][k])) for k in ("style_swd", "ssim"))
    said = re.search(rf"noise floor \(the first trial alone on {other} thread\(s\) against its batch on {threads}\): "
                     r"([0-9.]+)%", front_text)
    assert said and abs(float(said.group(1)) - 100 * measured) < 0.006, front_text
    assert f"tubingen:the_scream: front (within a {measured:.1%} floor)" in front_text and "on the front:" in front_text
    assert (tmp_path / "q" / "pareto.png").stat().st_size > 0
    for x in rows:  # each trial's own folder, as a run writes it
        assert (tmp_path / "q" / "tubingen__the_scream" / x["recipe"]).is_dir()

    # the summary again from the CSV alone, nothing re-run
    again = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "quality.py"), "--from-csv",
                            str(tmp_path / "q" / "results.csv"), "--content-metric", "ssim", "--floor", "0.01"],
                           cwd=ROOT, env=nst_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert (tmp_path / "q" / "front.txt").read_text() == again.stdout
    # by default against GMSD, where lower is closer to the photograph
    default = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "quality.py"), "--from-csv",
                              str(tmp_path / "q" / "results.csv"), "--floor", "0.01"],
                             cwd=ROOT, env=nst_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert default.returncode == 0 and " gmsd " in default.stdout and " ssim " not in default.stdout

    # a run at another budget beside it: one front, each recipe named by its budget
    more = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "quality.py"), "--size", "48", "--budget", "6",
                           "--pairs", "tubingen:the_scream", "--recipes", "nst", "--multipliers", "1,4", "--floor", "0.01",
                           "--out", str(tmp_path / "q6")], cwd=ROOT, env=nst_env(tmp_path), capture_output=True, text=True,
                          timeout=600)
    assert more.returncode == 0, more.stderr[-2000:]
    both = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "quality.py"), "--from-csv",
                           f"{tmp_path / 'q' / 'results.csv'},{tmp_path / 'q6' / 'results.csv'}", "--floor", "0.01",
                           "--out", str(tmp_path / "both")], cwd=ROOT, env=nst_env(tmp_path), capture_output=True,
                          text=True, timeout=300)
    assert both.returncode == 0, both.stderr[-2000:]
    listed = set(re.findall(r"^  (\S+@\d+) +x", both.stdout, re.M))
    assert {"nst@3", "aspect@3", "pastiche@3", "nst@6"} >= listed and listed, both.stdout
    assert "never on it" in both.stdout and (tmp_path / "both" / "front.txt").read_text() == both.stdout
    assert not (tmp_path / "q" / "front.txt").read_text().count("@")  # the first run's own summary untouched
    missing = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "quality.py"), "--from-csv",
                              f"{tmp_path / 'q' / 'results.csv'},{tmp_path / 'nowhere.csv'}", "--floor", "0.01"],
                             cwd=ROOT, env=nst_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert missing.returncode == 2 and missing.stderr.strip().splitlines()[-1] == (
        f"quality.py: --from-csv: no such file: {tmp_path / 'nowhere.csv'}")


def test_a_bad_recipe_fails_before_any_trial(tmp_path):
    r = _run(tmp_path, "--size", "48", "--budget", "2", "--pairs", "tubingen:the_scream", "--recipes", "nst,picasso")
    assert r.returncode != 0
    assert "recipe" in r.stderr.strip().splitlines()[-1] and "picasso" in r.stderr
    assert not (tmp_path / "q" / "results.csv").exists()


def test_equal_work_gives_a_recipe_with_heavy_losses_fewer_steps(tmp_path):
    # crowsonkb's W2 terms (matrix square roots of 512 x 512 covariances) cost several networks at 48 px:
    # at equal work it gets a fraction of nst's network evaluations; --equal network gives both the same
    r = _run(tmp_path, "--size", "48", "--budget", "400", "--pairs", "tubingen:the_scream", "--recipes", "nst,crowsonkb",
             "--multipliers", "1", "--floor", "0.01")
    assert r.returncode == 0, r.stderr[-3000:]
    with open(tmp_path / "q" / "results.csv", newline="") as f:
        rows = {x["recipe"]: x for x in csv.DictReader(f)}
    nst, w2 = rows["nst"], rows["crowsonkb"]
    assert float(w2["cost"]) < float(nst["cost"]) / 2
    for x in (nst, w2):  # the work each did: the budget, within the rounding of crowsonkb's few steps
        assert abs(float(x["work"]) - 400) < 400 * 0.25, x
        assert float(x["wall_s"]) > 0
    assert "work" in (tmp_path / "q" / "front.txt").read_text()


def test_each_engine_gets_more_style_from_its_own_knob():
    # STROTSS and NNST have no style weight (their style terms are unweighted): more style is less content
    from nst import compose

    s = compose.settings_for(["recipe=strotss", "size=64"])
    assert quality.emphasis(s, 4) == {"content_weight": s.content_weight / 4}
    # NNST's content weight is a share in [0, 1]: its odds go over m, so it stays a share at any multiplier
    s = compose.settings_for(["recipe=nnst", "size=64"])
    shares = [quality.emphasis(s, m)["content_weight"] for m in (0.25, 1, 4, 64)]
    assert shares[1] == s.content_weight
    assert all(0 < a < 1 for a in shares) and shares == sorted(shares, reverse=True)
    for m, a in zip((0.25, 1, 4, 64), shares, strict=True):  # style's odds over content's are the base's times m
        assert (1 - a) / a == pytest.approx(m * (1 - s.content_weight) / s.content_weight, rel=1e-4)
    for m in (0.25, 4):  # every share it gives composes as a trial
        compose.settings_for(["recipe=nnst", "size=64", f"content_weight={quality.emphasis(s, m)['content_weight']}"])
    s = compose.settings_for(["recipe=pastiche", "size=64"])
    assert quality.emphasis(s, 4) == {"style_weight": s.style_weight * 4}
