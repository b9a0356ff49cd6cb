"""Real W&B offline runs, read back with W&B's own reader (`wandb leet inspect`). No network."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import read_jsonl, summary
from nst.summary import SCHEMA_VERSION

WANDB = str(Path(sys.executable).parent / "wandb")


def inspect(run_file: Path, *, records: bool = False):
    what = ["--json"] if records else ["--summary", "--json"]
    out = subprocess.run([WANDB, "leet", "inspect", *what, str(run_file)], capture_output=True, text=True, timeout=120,
                         check=True).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()] if records else json.loads(out)


def run_record(records: list) -> dict:
    return next(r["run"] for r in records if r["type"] == "run")


def test_a_multirun_logs_trials_and_an_aggregate_in_one_group(style_weight_sweep):
    sweep, r, ps = style_weight_sweep  # -m style_weight=1e2,1e4,1e6 steps=6 frame_every=3
    assert r.returncode == 0, r.stderr
    files = sorted(sweep.rglob("*.wandb"))
    assert len(files) == 4
    # each run file read once as records and once as its summary (each read is a `wandb` process)
    records = {f: inspect(f, records=True) for f in files}
    summaries = {f: inspect(f) for f in files}
    runs = {f: run_record(records[f]) for f in files}
    # the three trials shared one batch (one process, three live W&B runs) and still have a run each
    batches = [summary(d)["batch"] for d in sorted(p for p in sweep.iterdir() if (p / "summary.json").exists())]
    assert [b["size"] for b in batches] == [3, 3, 3] and len({b["id"] for b in batches}) == 1
    assert {r["run_group"] for r in runs.values()} == {sweep.name}
    assert sorted(r["job_type"] for r in runs.values()) == ["aggregate", "trial", "trial", "trial"]
    for f, rec in runs.items():
        if rec["job_type"] != "trial":
            continue
        trial_dir = f.parents[2]
        assert f.is_relative_to(trial_dir / "wandb")  # W&B files live in the trial's folder
        s = summary(trial_dir)
        assert s["schema_version"] == SCHEMA_VERSION  # as nst.summary writes it
        assert rec["display_name"] == s["label"]
        # the W&B config is the composed config (plus the effective loss weights)
        config = summaries[f]["config"]
        for key, value in s["config"].items():
            assert config[key] == value, key
        assert config["effective"]["style_weight"] == s["settings"]["style_weight"]
        # history: every loss term, per layer, at the logged evaluation counts
        history = [r["history"]["item"] for r in records[f] if r["type"] == "history"]
        losses = {h["evaluation"]: h for h in history if "loss/total" in h}
        local = read_jsonl(trial_dir / "metrics.jsonl")
        assert sorted(losses) == [row["evaluation"] for row in local] == list(range(1, 7))
        for row in local:
            assert losses[row["evaluation"]]["loss/style/conv3_1"] == pytest.approx(row["style/conv3_1"])
            assert losses[row["evaluation"]]["loss/content/conv4_2"] == pytest.approx(row["content/conv4_2"])
        frames = [h["evaluation"] for h in history if h.get("frame._type") == "image-file"]
        assert frames == [1, 3, 6]
        final = summaries[f]
        assert final["exit_code"] == 0 and final["summary"]["status"] == "completed"
        assert final["summary"]["final"]["_type"] == "image-file"
        assert final["summary"]["metrics/psnr"] == pytest.approx(s["metrics"]["psnr"])
        # the trial's objective (what a search minimises), as its summary.json has it
        assert final["summary"]["objective"] == pytest.approx(s["objective"]["value"])
        assert final["summary"]["objective_name"] == s["objective"]["name"] == "final_loss"
    agg = next(f for f, rec in runs.items() if rec["job_type"] == "aggregate")
    agg_summary = summaries[agg]["summary"]
    assert agg_summary["grid"]["_type"] == "image-file" and agg_summary["results"]["nrows"] == 3
    # the results table, as W&B keeps it offline: a run_table artifact whose files are staged in the
    # sweep folder (named by absolute path, for `wandb sync`): an image column, one final image per trial
    (artifact,) = [r["artifact"] for r in records[agg] if r["type"] == "artifact" and r["artifact"]["name"].endswith("-results")]
    staged = {c["path"]: Path(c["local_path"]) for c in artifact["manifest"]["contents"]}
    # the test's WANDB_DATA_DIR (conftest.nst_env) beside outputs/; by default the sweep's wandb/.data
    assert all(p.is_relative_to(sweep.parents[2] / ".wandb-data") and p.exists() for p in staged.values())
    table = json.loads(staged["results.table.json"].read_text())
    columns = table["columns"]
    assert columns[:2] == ["trial", "image"] and {"style_weight", "objective", "psnr"} <= set(columns)
    assert len(table["data"]) == 3
    for row in table["data"]:
        image = row[columns.index("image")]
        assert image["_type"] == "image-file"
        assert staged[image["path"]].read_bytes() == (sweep / row[columns.index("trial")] / "final.png").read_bytes()
    assert "wandb-core" not in ps  # the sweep's process left no W&B service running


def test_failed_trial_run_ends_with_non_zero_exit_code(failing_trial_sweep):
    sweep, r = failing_trial_sweep  # -m style_weight=1e39,1e5
    assert r.returncode == 1
    by_trial = {f.parents[2].name.split("_")[0]: inspect(f) for f in sweep.glob("*/wandb/*/*.wandb")}
    assert by_trial["0"]["exit_code"] != 0 and by_trial["0"]["summary"]["status"] == "failed"
    assert by_trial["1"]["exit_code"] == 0


def test_disabled_writes_no_wandb_files(run_nst, tmp_path):
    # one sweep: a trial with logger=none, one with W&B disabled, and the sweep's aggregate (disabled)
    r = run_nst("-m", "logger=none,wandb", "wandb.mode=disabled", "size=32", "steps=2", "device=cpu", "hydra.sweep.dir=out")
    assert r.returncode == 0, r.stderr
    assert [summary(d)["config"]["logger"]["name"] for d in sorted((tmp_path / "out").glob("[01]_*"))] == ["none", "wandb"]
    assert (tmp_path / "out" / "report.html").exists()
    assert list(tmp_path.rglob("*.wandb")) == [] and not list(tmp_path.rglob("wandb"))


def test_unreachable_online_endpoint_falls_back_without_failing(tmp_path):
    # a closed port on this machine: W&B's requests are refused at once, nothing leaves the machine
    import conftest

    env = conftest.nst_env(tmp_path)
    env.update(WANDB_API_KEY="x" * 40, WANDB_BASE_URL="http://127.0.0.1:9")
    # W&B retries until init_timeout, then the run goes on offline
    r = subprocess.run([sys.executable, "-m", "nst.run", "wandb.mode=online", "wandb.init_timeout=2", "size=32", "steps=3",
                        "device=cpu"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    out = r.stdout + r.stderr
    assert "could not start online" in out and "logging offline instead" in out
    (run_dir,) = list((tmp_path / "outputs" / "runs").iterdir())
    assert summary(run_dir)["status"] == "completed"
    (offline,) = list(run_dir.glob("wandb/offline-run-*/*.wandb"))
    assert inspect(offline)["summary"]["status"] == "completed"


def test_mode_resolution(monkeypatch, tmp_path):
    from nst import wandb_sink

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    assert wandb_sink.resolve_mode("auto") == "offline"
    (tmp_path / "netrc").write_text("machine api.wandb.ai\n  login user\n  password " + "k" * 40 + "\n")
    (tmp_path / "netrc").chmod(0o600)
    assert wandb_sink.resolve_mode("auto") == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert wandb_sink.resolve_mode("auto") == "disabled"
    assert wandb_sink.resolve_mode("offline") == "offline"  # the config beats the environment
