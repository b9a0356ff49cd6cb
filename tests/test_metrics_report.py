"""The sweep report and grid with the fair metrics: ties within the float-noise floor, old folders."""

import json

import pandas as pd

import test_sweep_files as sweep_files  # its fake sweep folder (a module import: its tests are not collected twice)
from nst import report, trial_records
from nst.metrics import NOISE_FLOOR
from nst.report import tables


def _set_metrics(sweep, values: list[dict]) -> None:
    for d, metrics in zip(sorted(p for p in sweep.iterdir() if p.is_dir()), values, strict=True):
        summary = json.loads((d / "summary.json").read_text())
        summary["metrics"] = metrics
        (d / "summary.json").write_text(json.dumps(summary))


def test_values_within_the_noise_floor_of_the_best_are_marked_as_tied(tmp_path):
    sweep = sweep_files._fake_sweep(tmp_path)
    floor = NOISE_FLOOR["style_swd"]
    swd = [0.3, 0.3 * (1 + floor / 2), 0.3 * (1 + 3 * floor)]  # the best, one within its floor, one beyond
    _set_metrics(sweep, [{"style_swd": v, "style_swd_1x": v, "style_swd_2x": None, "style_swd_4x": None, "gmsd": g,
                          "psnr": 20.0 + i, "ssim": 0.5, "gram_distance": 1e3, "content_distance": 1e4}
                         for i, (v, g) in enumerate(zip(swd, (0.1, 0.2, 0.3), strict=True))])
    assert report.main([str(sweep)]) == 0
    trials = trial_records.load_trials(sweep)
    names = [t.path.name for t in trials]
    assert tables.tied_with_best(trials, "style_swd") == set(names[:2])
    assert tables.tied_with_best(trials, "gmsd") == set()  # a clear best is not a tie
    assert tables.tied_with_best(trials, "ssim") == set(names)  # all equal
    page = (sweep / "report.html").read_text()
    # style_swd and style_swd_1x (the same values here): the best and the one within the floor are
    # marked; the one beyond the floor is not
    marked = {tables.human(v) for v in swd[:2]}
    assert sum(page.count(f">{h} \u2248</td>") for h in marked) == 2 * 2
    assert page.count(f">{tables.human(swd[2])}</td>") == 2
    # ties: 2 + 2 above, and ssim, gram_distance, content_distance equal in all three; psnr and gmsd have a clear best
    assert page.count("class='tie'") == 4 + 3 * 3
    # style_swd_2x and 4x, skipped in every trial, are columns empty throughout: left out of the page
    assert "style_swd_2x" not in page.split("<table", 1)[1] and "skipped" not in page
    table = pd.read_csv(sweep / "results.csv")
    assert list(table.columns[table.columns.get_loc("style_swd"):][:5]) == ["style_swd", "gmsd", "self_sim_dist", "psnr", "ssim"]
    assert "style_distance" not in table.columns


def test_an_old_folder_with_style_distance_keeps_its_column_as_it_is(tmp_path):
    sweep = sweep_files._fake_sweep(tmp_path)  # summaries with content_distance and style_distance only
    assert report.main([str(sweep), "--annotate", "psnr,style_distance", "--sort", "style_distance"]) == 0
    table = pd.read_csv(sweep / "results.csv")
    assert list(table["style_distance"]) == [3.0, 2.0, 1.0] and table["style_swd"].isna().all()
    assert "style_distance" in (sweep / "report.html").read_text()
