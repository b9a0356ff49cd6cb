"""benchmarks/quality.py --set: the evaluation set file, the per-pair normalisation, hypervolume,
the paired statistics, and a run of two pairs end to end."""

import csv
import random
import subprocess
import sys

import pytest

from conftest import ROOT, nst_env

sys.path.insert(0, str(ROOT / "benchmarks"))
import eval_set
import quality_stats as qs


def test_the_set_file_lists_at_least_thirty_credited_pairs():
    pairs = eval_set.load(eval_set.DEFAULT)
    assert len(pairs) >= 30 and len({p.label for p in pairs}) == len(pairs)
    entries = {e.name: e for p in pairs for e in (p.photo, p.painting)}
    credits = (ROOT / "nst" / "data" / "images" / "CREDITS.md").read_text()
    for e in entries.values():
        assert e.licence.strip() and e.author.strip() and e.work.strip()
        if not e.source.startswith("skimage:"):
            assert f"| {e.source}.jpg |" in credits, f"{e.source} has no row in CREDITS.md"
    # the kinds of painting the set is meant to span, beyond the classic five
    assert {"great_wave", "inokashira_snow", "durer_lion", "the_harvesters", "seated-nude"} <= set(entries)
    # --only picks pairs by photograph:painting patterns
    assert [p.label for p in eval_set.load(eval_set.DEFAULT, "tubingen:great_wave,astronaut:*")][:2] == [
        "tubingen:great_wave", "astronaut:starry_night"]


def test_every_entry_resolves_offline_to_an_image():
    pytest.importorskip("skimage", reason="scikit-image (the quality and test extras) ships the set's photographs")
    seen = {}
    for p in eval_set.load(eval_set.DEFAULT):
        for e in (p.photo, p.painting):
            if e.name not in seen:
                img = eval_set.open_image(e.source)
                assert img.mode == "RGB" and min(img.size) >= 256, (e.name, img.size)
                seen[e.name] = img.size
    assert seen["astronaut"] == (512, 512) and seen["chelsea"] == (451, 300)


@pytest.mark.parametrize("text, says", [
    ("[photographs.a]\nsource = 'tubingen'\nwork = 'w'\nauthor = 'x'\nlicence = 'l'\n", "[paintings.NAME] tables"),
    ("[photographs.a]\nsource = 'tubingen'\nwork = 'w'\nauthor = 'x'\nlicence = 'l'\n"
     "[paintings.b]\nsource = 'no_such_painting'\nwork = 'w'\nauthor = 'x'\nlicence = 'l'\n",
     "paintings.b: source 'no_such_painting'"),
    ("[photographs.a]\nsource = 'skimage:moon_landing'\nwork = 'w'\nauthor = 'x'\nlicence = 'l'\n", "photographs.a: source"),
    ("[photographs.a]\nsource = 'tubingen'\nwork = 'w'\nauthor = 'x'\n", "photographs.a: licence missing"),
    ("[photographs.a]\nsource = 'tubingen'\nwork = 'w'\nauthor = 'x'\nlicence = 'l'\ncolour = 1\n", "unknown key 'colour'"),
    ("[photographs\n", "not TOML"),
])
def test_a_bad_set_file_is_refused_in_one_line_naming_the_file_and_key(tmp_path, text, says):
    bad = tmp_path / "set.toml"
    bad.write_text(text)
    with pytest.raises(eval_set.SetError) as e:
        eval_set.load(bad)
    assert str(bad) in str(e.value) and says in str(e.value) and "\n" not in str(e.value)


def test_hypervolume_of_a_hand_computed_front():
    # two points: [0.2,1]x[0.6,1] (0.32) and [0.5,1]x[0.3,1] (0.35) overlap in [0.5,1]x[0.6,1] (0.2)
    assert qs.hypervolume([(0.2, 0.6), (0.5, 0.3)]) == pytest.approx(0.47)
    # a dominated point adds nothing; the order of the points does not matter
    assert qs.hypervolume([(0.5, 0.3), (0.7, 0.8), (0.2, 0.6)]) == pytest.approx(0.47)
    # the two inputs, the photograph (1, 0) and the painting (0, 1), enclose nothing
    assert qs.hypervolume([(1.0, 0.0), (0.0, 1.0)]) == 0.0
    # clipped to the unit box: worse than an input on an axis adds nothing; better than the painting counts as it
    assert qs.hypervolume([(1.3, 0.2), (0.4, 1.5)]) == 0.0
    assert qs.hypervolume([(-0.5, 0.5)]) == pytest.approx(0.5)
    assert qs.hypervolume([]) == 0.0


def test_a_front_covers_another_where_it_is_as_good_at_each_of_its_points():
    b = [(0.20, 0.25), (0.30, 0.15)]
    assert qs.covers([(0.19, 0.24), (0.29, 0.15)], b, 0.0)  # one point of a for each of b's
    assert qs.covers([(0.18, 0.10)], b, 0.0)  # one point better than both
    assert not qs.covers([(0.19, 0.24)], b, 0.0)  # b's second point (less content lost) is not reached
    assert not qs.covers([(0.19, 0.24)], b, 0.01)
    assert qs.covers([(0.19, 0.24), (0.3015, 0.1510)], b, 0.01)  # worse by 0.5 % and 0.7 %: within a 1 % floor
    assert not qs.covers([(0.19, 0.24), (0.3015, 0.1510)], b, 0.001)
    assert qs.covers([(0.5, 0.5)], [], 0.0) and not qs.covers([], b, 0.0)
    # a higher-is-better content metric enters negated
    assert qs.covers([(0.2, -0.9)], [(0.25, -0.8)], 0.0) and not qs.covers([(0.2, -0.7)], [(0.25, -0.8)], 0.0)


def test_each_axis_is_normalised_between_the_pair_s_two_inputs():
    gmsd = {"style_photo": 0.8, "style_painting": 0.0, "content_photo": 0.0, "content_painting": 0.25}
    assert qs.normalise(0.8, 0.0, gmsd) == (1.0, 0.0)  # the photograph
    assert qs.normalise(0.0, 0.25, gmsd) == (0.0, 1.0)  # the painting
    assert qs.normalise(0.2, 0.05, gmsd) == pytest.approx((0.25, 0.2))
    # ssim, higher is better: the photograph's own 1 is the axis' 0
    ssim = {"style_photo": 0.8, "style_painting": 0.0, "content_photo": 1.0, "content_painting": 0.2}
    assert qs.normalise(0.4, 0.6, ssim) == pytest.approx((0.5, 0.5))
    with pytest.raises(ValueError, match="equal"):
        qs.position(0.3, 0.5, 0.5)


def test_wins_ties_losses_beyond_the_floor():
    a = [0.50, 0.30, 0.200, 0.10]
    b = [0.40, 0.35, 0.201, 0.10]
    assert qs.compare(a, b, 0.01) == (1, 2, 1)  # 0.200 vs 0.201 is within 1 %, 0.10 vs 0.10 equal
    assert qs.compare(a, b, 0.0) == (1, 1, 2)


def test_wilcoxon_on_hand_computed_cases():
    # all three differences positive: W+ = 1+2+3 = 6, the most extreme of 2^3 sign patterns on one side
    assert qs.wilcoxon([1.0, 2.0, 3.0]) == (6.0, 0.25, 3)
    # ranks 1..5, the rank-2 difference negative: W- = 2; sign patterns with W- <= 2: {}, {1}, {2}: 3 of 32,
    # doubled for two sides: 6/32
    assert qs.wilcoxon([1.0, -2.0, 3.0, 4.0, 5.0]) == (13.0, 0.1875, 5)
    # zeros are dropped (Wilcoxon's convention)
    assert qs.wilcoxon([0.0, 1.0, 2.0, 3.0]) == (6.0, 0.25, 3)
    # tied magnitudes share their mid-rank 2: W+ = 4 from two positives, every pattern is as extreme: p = 1
    assert qs.wilcoxon([1.0, 1.0, -1.0]) == (4.0, 1.0, 3)
    assert qs.wilcoxon([]) == (0.0, 1.0, 0)


def test_wilcoxon_agrees_with_scipy_s_exact_test():
    stats = pytest.importorskip("scipy.stats", reason="scipy comes with the quality extra")
    rng = random.Random(7)
    for n in (6, 11, 17):
        d = [rng.gauss(0.3, 1.0) for _ in range(n)]
        mine = qs.wilcoxon(d)
        theirs = stats.wilcoxon(d, method="exact")
        assert mine[1] == pytest.approx(theirs.pvalue, rel=1e-9)
        assert min(mine[0], n * (n + 1) / 2 - mine[0]) == pytest.approx(theirs.statistic)


def _quality(tmp_path, *args, timeout=600):
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / "quality.py"), *args], cwd=ROOT,
                          env=nst_env(tmp_path), capture_output=True, text=True, timeout=timeout)


def test_two_pairs_two_recipes_end_to_end(tmp_path):
    pytest.importorskip("skimage", reason="scikit-image (the quality and test extras) ships the set's photographs")
    out = tmp_path / "q"
    command = ["--set", "--only", "tubingen:great_wave,chelsea:the_scream", "--recipes", "nst,pastiche",
               "--size", "32", "--budget", "2", "--multipliers", "1,4", "--floor", "0.01", "--out", str(out)]
    r = _quality(tmp_path, *command)
    assert r.returncode == 0, r.stderr[-3000:]
    with open(out / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {x["resumed"] for x in rows} == {"False"}
    # pair by pair, every recipe on each: a run stopped part-way keeps whole pairs
    assert [(x["pair"], x["recipe"]) for x in rows] == [
        ("tubingen:great_wave", "nst")] * 2 + [("tubingen:great_wave", "pastiche")] * 2 + [
        ("chelsea:the_scream", "nst")] * 2 + [("chelsea:the_scream", "pastiche")] * 2
    assert (out / "inputs" / "chelsea.png").is_file()  # the photograph from scikit-image, inside the run's folder
    for x in rows:
        # the anchors: the photograph is its own best content, the painting its own style
        assert float(x["photo_gmsd"]) == 0 and float(x["photo_ssim"]) == pytest.approx(1)
        assert float(x["painting_style_swd"]) == pytest.approx(0, abs=1e-6)
        assert float(x["photo_style_swd"]) > 0.1 and float(x["painting_gmsd"]) > 0.05
        assert float(x["wall_s"]) > 0 and 0 < float(x["cpu_s_batch"])  # the process's CPU time beside the wall time
    # each pair's hypervolume, recomputed here from the CSV, is the one the summary prints
    summary = (out / "summary.md").read_text()
    for pair in ("tubingen:great_wave", "chelsea:the_scream"):
        line = next(ln for ln in summary.splitlines() if ln.startswith(f"| {pair} |"))
        printed = [float(c.strip(" *")) for c in line.split("|")[2:4]]
        for recipe, value in zip(("nst", "pastiche"), printed, strict=True):
            mine = [x for x in rows if x["pair"] == pair and x["recipe"] == recipe]
            pts = [qs.normalise(float(x["style_swd"]), float(x["gmsd"]), {
                "style_photo": float(x["photo_style_swd"]), "style_painting": float(x["painting_style_swd"]),
                "content_photo": float(x["photo_gmsd"]), "content_painting": float(x["painting_gmsd"])}) for x in mine]
            assert value == pytest.approx(qs.hypervolume(pts), abs=6e-5)
    assert "| nst | pastiche |" in summary and "Wilcoxon" in summary and "(2) |" in summary
    # on how many pairs each reaches the other's front, recomputed from the CSV
    line = next(ln for ln in summary.splitlines() if ln.startswith("| nst | pastiche |"))
    pts = {(p, n): [(float(x["style_swd"]), float(x["gmsd"])) for x in rows if x["pair"] == p and x["recipe"] == n]
           for p in ("tubingen:great_wave", "chelsea:the_scream") for n in ("nst", "pastiche")}
    reach = [sum(qs.covers(pts[p, a], pts[p, b], 0.01) for p in ("tubingen:great_wave", "chelsea:the_scream"))
             for a, b in (("nst", "pastiche"), ("pastiche", "nst"))]
    assert [int(c) for c in line.strip(" |").split("|")[-2:]] == reach
    assert "32 px, 2 full-size evaluations per trial, style weights x1,4" in summary
    assert (out / "hypervolume.png").stat().st_size > 0 and (out / "pareto.png").stat().st_size > 0

    # the same command again resumes: every trial read back, the same numbers, the batches' times from then
    again = _quality(tmp_path, *command)
    assert again.returncode == 0, again.stderr[-3000:]
    with open(out / "results.csv", newline="") as f:
        resumed = list(csv.DictReader(f))
    assert {x["resumed"] for x in resumed} == {"True"}
    for before, after in zip(rows, resumed, strict=True):
        assert [before[k] for k in ("pair", "recipe", "style_swd", "gmsd", "wall_s", "cpu_s_batch", "photo_style_swd")] == [
            after[k] for k in ("pair", "recipe", "style_swd", "gmsd", "wall_s", "cpu_s_batch", "photo_style_swd")]
    resumed_summary = (out / "summary.md").read_text()
    assert resumed_summary.split("## Per pair")[1] == summary.split("## Per pair")[1]

    # the same summary again from the CSV alone (nothing re-run), whatever the defaults say
    (out / "summary.md").unlink()
    again = _quality(tmp_path, "--from-csv", str(out / "results.csv"), "--floor", "0.01", timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    remade = (out / "summary.md").read_text()
    assert remade.split("Command:")[1].split("\n", 3)[3] == resumed_summary.split("Command:")[1].split("\n", 3)[3]
    assert "32 px, 2 full-size evaluations" in remade


def test_a_bad_set_fails_in_one_line_before_anything_is_written(tmp_path):
    bad = tmp_path / "set.toml"
    bad.write_text("[photographs.a]\nsource = 'tubingen'\nwork = 'w'\nauthor = 'x'\nlicence = 'l'\n")
    r = _quality(tmp_path, "--set", str(bad), "--size", "32", "--budget", "2", "--out", str(tmp_path / "q"), timeout=300)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].startswith("quality.py: --set: ") and str(bad) in r.stderr
    assert not (tmp_path / "q").exists()
    r = _quality(tmp_path, "--set", "--content-metric", "psnr", timeout=300)
    assert r.returncode == 2 and "--content-metric one of gmsd, ssim" in r.stderr
