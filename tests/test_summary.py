"""summary.json as a typed, versioned Summary: old summaries still read, nothing read is lost on
rewriting, the objective is computed in one place, and the readers (report, outcome) read through it."""

import json
import shutil
from pathlib import Path

import pytest

from nst import search, trial_records
from nst import summary as trial_summary
from nst.report import tables
from nst.summary import SCHEMA_VERSION, Batch, Level, Score, Summary

# summary.json as nst wrote it before summaries had a version: a 32 px trial of a 2-trial
# `objective=style_swd_at_psnr` sweep (batched), kept as it was written
BEFORE_VERSIONS = Path(__file__).parent / "fixtures" / "summary_before_versions.json"


def test_a_summary_written_before_versions_reads_typed_and_writes_back_unchanged(tmp_path):
    raw = json.loads(BEFORE_VERSIONS.read_text())
    assert "schema_version" not in raw
    s, problem = trial_summary.load(BEFORE_VERSIONS)
    assert problem is None and s is not None
    assert s.schema_version == 0 and s.completed and s.extra == {}
    assert s.batch == Batch(raw["batch"]["id"], 2, 0)
    assert s.levels == [Level([32, 24], 6, "max_eval")] and s.image_size == [32, 24]
    assert s.objective == Score("style_swd_at_psnr", raw["objective"]["value"])
    assert s.final["total"] == raw["final"]["total"] and s.metrics["style_swd_2x"] is None
    assert s.config["style_weight"] == 1000.0 and s.settings["content"] == "tubingen"
    # the same keys in the same order, and its version said as what it is
    trial_summary.write(tmp_path / "summary.json", s)
    again = json.loads((tmp_path / "summary.json").read_text())
    assert again == {"schema_version": 0, **raw} and list(again)[1:] == list(raw)


def test_a_new_summary_says_its_version_and_leaves_out_what_is_unset(tmp_path):
    s = Summary(status="failed", label="style_weight=1e3", error="worker process died")
    trial_summary.write(tmp_path / "summary.json", s)
    assert json.loads((tmp_path / "summary.json").read_text()) == {
        "schema_version": SCHEMA_VERSION, "status": "failed", "label": "style_weight=1e3", "error": "worker process died"}
    assert trial_summary.read(tmp_path / "summary.json") == s


def test_values_of_the_wrong_type_read_as_absent_and_are_kept_as_they_were(tmp_path):
    raw = json.loads(BEFORE_VERSIONS.read_text())
    raw.update(evaluations="six", metrics=["not", "a", "mapping"], batch={"id": 3}, objective={"name": "x"},
               levels=[{"size": [32, 24]}], notes="a person's", schema_version=7)
    (tmp_path / "summary.json").write_text(json.dumps(raw))
    s = trial_summary.read(tmp_path / "summary.json")
    assert s.evaluations is None and s.metrics == {} and s.batch is None and s.objective is None and s.levels == []
    assert s.schema_version == 7 and s.wall_time == raw["wall_time"]  # a newer nst's summary reads what it knows
    assert s.extra == {k: raw[k] for k in ("evaluations", "metrics", "batch", "objective", "levels", "notes")}
    # marked as a search marks a trial it stopped: the rest of the file is left as it was
    s.status = trial_summary.SUPERSEDED
    trial_summary.write(tmp_path / "summary.json", s)
    assert json.loads((tmp_path / "summary.json").read_text()) == {**raw, "status": "superseded"}
    # a value nst sets again replaces the one of the wrong type
    s.evaluations = 6
    assert s.to_dict()["evaluations"] == 6


@pytest.mark.parametrize("text, why", [("", "unreadable ("), ("[1]", "unreadable (a JSON list, not an object)"),
                                       ('{"status": "comp', "unreadable (")])
def test_a_summary_that_cannot_be_read_says_why(tmp_path, text, why):
    (tmp_path / "summary.json").write_text(text)
    s, problem = trial_summary.load(tmp_path / "summary.json")
    assert s is None and problem.startswith(why)
    assert trial_summary.load(tmp_path / "none.json") == (None, None)


def test_the_objective_is_computed_from_the_summary_in_one_place():
    s = trial_summary.read(BEFORE_VERSIONS)
    # style_swd_at_psnr: the style distance while PSNR meets the target, a penalty in dB short of it
    psnr, swd = s.metrics["psnr"], s.metrics["style_swd"]
    assert trial_summary.score(s) == Score("style_swd_at_psnr", swd)
    s.config = {**s.config, "target_psnr": psnr + 2.0}
    assert trial_summary.score(s).value == pytest.approx(search.MISSED_TARGET * 3.0)
    s.config = {**s.config, "objective": "final_loss"}
    assert trial_summary.score(s) == Score("final_loss", s.final["total"])
    # a grid (no objective) and a failed trial have none
    assert trial_summary.score(Summary(status="completed", final={"total": 1.0})) is None
    s.status = "failed"
    assert trial_summary.score(s) is None


def test_the_report_and_the_outcome_read_a_sweep_of_old_summaries(tmp_path):
    sweep = tmp_path / "sweep"
    for n, weight in enumerate(("1e3", "1e4")):
        d = sweep / f"{n}_style_weight={weight}"
        d.mkdir(parents=True)
        shutil.copy(BEFORE_VERSIONS, d / "summary.json")
    trials = trial_records.load_trials(sweep)
    assert [t.status for t in trials] == ["completed", "completed"]
    table = tables.results_table(trials, trial_records.swept_axes(trials))
    raw = json.loads(BEFORE_VERSIONS.read_text())
    assert list(table["objective"]) == [raw["objective"]["value"]] * 2
    assert list(table["evaluations"]) == [6, 6] and list(table["style_swd"]) == [raw["metrics"]["style_swd"]] * 2
    out = trial_summary.outcome([sweep], since=raw["finished_unix"] + 1)
    assert out.completed == 2 and out.skipped == 2 and out.failed == []
