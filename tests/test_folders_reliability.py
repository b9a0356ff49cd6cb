"""What nst promises about folders, searches and journals, each shown by real commands in subprocesses
(32 px, 2 evaluations, the CPU): a folder nst did not make is never written into; every trial has a
folder of its own; a search has the owner and identity of a grid; a cut journal is repaired and a bad
one refused in one line; equal values are one trial; a trial's odd files are named, not deleted."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from conftest import nst_env

TINY = ("size=32", "steps=2", "device=cpu", "logger=none")
SEARCH = ("+search=adam_lr", "hydra.sweeper.n_trials=2", "hydra.sweeper.n_jobs=2", *TINY)


def checksums(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(folder.rglob("*"))}


def one_line(r: subprocess.CompletedProcess, starts: str) -> str:
    assert r.returncode == 2, r.stderr[-2000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"nst: error: {starts}"), lines
    return lines[0]


def trial_folders(sweep: Path) -> list[str]:
    return sorted(d.name for d in sweep.iterdir() if d.is_dir() and not d.name.startswith("."))


def load_study(journal: Path, name: str = "adam_lr") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(journal))))


# ------------------------------------------------------------------ a folder nst did not make


def test_a_folder_nst_did_not_make_is_refused_and_left_as_it_was(run_nst, tmp_path):
    user = tmp_path / "photos"
    (user / "frames").mkdir(parents=True)
    (user / "frames" / "mine.png").write_bytes(b"the user's own")
    for name in ("results.csv", "report.html", "summary.json", "metrics.jsonl"):
        (user / name).write_text(f"the user's {name}")
    etc = tmp_path / "etc"  # what hydra.sweep.dir=/etc is: a full folder of someone else's files
    etc.mkdir()
    (etc / "passwd").write_text("root:x:0:0")
    before = {f: checksums(f) for f in (user, etc)}
    for args, key, folder in [([*TINY, f"hydra.run.dir={user}"], "hydra.run.dir", user),
                              (["-m", "style_weight=1e3,1e4", *TINY, f"hydra.sweep.dir={user}"], "hydra.sweep.dir", user),
                              (["-m", *SEARCH, f"hydra.sweep.dir={user}"], "hydra.sweep.dir", user),
                              (["hydra.mode=MULTIRUN", "style_weight=1e3,1e4", *TINY, f"hydra.sweep.dir={etc}"],
                               "hydra.sweep.dir", etc)]:
        line = one_line(run_nst(*args), f"{key}: {folder} is not empty and was not made by nst")
        assert "give another" in line
    assert {f: checksums(f) for f in (user, etc)} == before  # nothing written, nothing deleted

    # an empty folder is taken, and a run folder nst made can be run into again
    run = tmp_path / "run"
    run.mkdir()
    assert run_nst(*TINY, f"hydra.run.dir={run}").returncode == 0
    assert json.loads((run / ".nst" / "run.json").read_text())["kind"] == "run"
    (run / "final.png").unlink()
    r = run_nst(*TINY, "style_weight=2e4", f"hydra.run.dir={run}")
    assert r.returncode == 0, r.stderr[-2000:]
    assert (run / "final.png").is_file() and len(json.loads((run / ".nst" / "run.json").read_text())["history"]) == 2


def test_a_single_run_into_a_sweep_or_a_trial_folder_is_refused(run_nst, tmp_path):
    sweep = tmp_path / "sw"
    assert run_nst("-m", "style_weight=1e3,1e4", *TINY, f"hydra.sweep.dir={sweep}").returncode == 0
    before = checksums(sweep)
    one_line(run_nst(*TINY, f"hydra.run.dir={sweep}"), f"hydra.run.dir: {sweep} is a sweep's folder")
    trial = sweep / trial_folders(sweep)[0]
    one_line(run_nst(*TINY, f"hydra.run.dir='{trial}'"), f"hydra.run.dir: {trial} is not empty and was not made by nst")
    # and a sweep into a single run's folder
    run = tmp_path / "run"
    assert run_nst(*TINY, f"hydra.run.dir={run}").returncode == 0
    one_line(run_nst("-m", "style_weight=1e3,1e4", *TINY, f"hydra.sweep.dir={run}"), f"hydra.sweep.dir: {run} holds a single run")
    assert checksums(sweep) == before
    r = run_nst("-m", "style_weight=1e3,1e4", *TINY, f"hydra.sweep.dir={sweep}")
    assert r.returncode == 0 and "resumed: 2 trial(s)" in r.stdout  # the sweep itself is as it was


def test_a_trial_subdir_that_is_not_each_trials_own_folder_is_refused(run_nst, tmp_path):
    sweep = tmp_path / "sw"
    for subdir, expected in [("same", "gives two trials one folder"), (".", "not in a folder of its own"),
                             (str(tmp_path / "elsewhere"), "not in a folder of its own")]:
        for grid in (["style_weight=1e3,1e4", *TINY], list(SEARCH)):
            line = one_line(run_nst("-m", *grid, f"hydra.sweep.dir={sweep}", f"hydra.sweep.subdir={subdir}"),
                            f"hydra.sweep.subdir: '{subdir}'")
            assert expected in line or "search one folder" in line
    assert not sweep.exists() and not (tmp_path / "elsewhere").exists()
    r = run_nst("-m", "style_weight=1e3,1e4", *TINY, f"hydra.sweep.dir={sweep}", "hydra.sweep.subdir=t${hydra.job.num}")
    assert r.returncode == 0 and trial_folders(sweep) == ["t0", "t1"]


# ------------------------------------------------------------------------ searches are sweeps


def test_a_search_has_a_grids_owner_and_identity(run_nst, tmp_path):
    grid = tmp_path / "grid"
    slow = subprocess.Popen([sys.executable, "-m", "nst.run", "-m", "style_weight=1e3,1e4", "size=32", "steps=60",
                             "device=cpu", "logger=none", f"hydra.sweep.dir={grid}"],
                            cwd=tmp_path, env=nst_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lock = grid / ".nst" / "lock"
        deadline = time.time() + 120
        while not (lock.exists() and lock.read_text().strip()) and time.time() < deadline:
            time.sleep(0.2)
        # a search into the running grid's folder: its lock, then (by -m or hydra.mode) its identity
        one_line(run_nst("-m", *SEARCH, f"hydra.sweep.dir={grid}"), "hydra.sweep.dir:")
        one_line(run_nst("hydra.mode=MULTIRUN", *SEARCH, f"hydra.sweep.dir={grid}"), "hydra.sweep.dir:")
    finally:
        out, err = slow.communicate(timeout=600)
    assert slow.returncode == 0, err[-2000:]  # the grid never saw the search

    search = tmp_path / "search"
    assert run_nst("-m", *SEARCH, f"hydra.sweep.dir={search}").returncode == 0
    journal = (search / "optuna.journal").read_bytes()
    refused = [
        ["-m", "style_weight=1e3,1e4", *TINY],  # a grid into a search's folder
        ["-m", "+search=style_weight_for_psnr", *SEARCH[1:]],  # another objective
        ["-m", *SEARCH[:-4], "size=40", "steps=2", "device=cpu", "logger=none"],  # the same search at another size
        ["-m", *SEARCH[:-3], "steps=3", "device=cpu", "logger=none"],  # ... with another budget
        ["-m", *SEARCH, "optimizer.lr=choice(0.1,0.2)"],  # another search space
        ["hydra.mode=MULTIRUN", *SEARCH, "optimizer.lr=tag(log,interval(1e-4,1.0))"],
    ]
    for args in refused:
        line = one_line(run_nst(*args, f"hydra.sweep.dir={search}"), f"hydra.sweep.dir: {search} holds a search")
        assert "objective final_loss, it samples optimizer.lr=tag(log, interval(1e-3, 1.0))" in line
    assert (search / "optuna.journal").read_bytes() == journal  # as it was
    # the same search continues, whatever selects multirun mode
    r = run_nst("hydra.mode=MULTIRUN", *SEARCH, "hydra.sweeper.n_trials=3", f"hydra.sweep.dir={search}")
    assert r.returncode == 0, r.stderr[-2000:]
    assert [t.state.name for t in load_study(search / "optuna.journal").trials] == ["COMPLETE"] * 3


def test_a_search_space_the_study_cannot_take_leaves_no_ownerless_running_trial(run_nst, tmp_path):
    # a study begun elsewhere (no identity to compare with): the sweeper finds out when it asks
    search = tmp_path / "search"
    search.mkdir()
    study = optuna.create_study(study_name="adam_lr", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(search / "optuna.journal"))))
    study.enqueue_trial({"optimizer.lr": 0.1})
    t = study.ask({"optimizer.lr": optuna.distributions.CategoricalDistribution([0.1, 0.2])})
    study.tell(t, 1.0)
    r = run_nst("-m", *SEARCH, f"hydra.sweep.dir={search}")
    assert r.returncode == 1
    assert "hydra.sweeper.params: the study 'adam_lr'" in r.stderr and "cannot sample this search space" in r.stderr
    assert "Traceback" not in r.stderr
    trials = load_study(search / "optuna.journal").trials
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL"]
    assert trials[1].user_attrs == {"never_started": True}  # failed at once, and not one of n_trials
    from hydra_plugins.nst_sweeper.optuna_sweeper import counted

    assert counted(load_study(search / "optuna.journal")) == 1


# ------------------------------------------------------------------ a journal nothing can corrupt


def test_a_cut_journal_line_is_repaired_once_and_a_bad_journal_is_one_line(run_nst, tmp_path):
    search = tmp_path / "search"
    assert run_nst("-m", *SEARCH, f"hydra.sweep.dir={search}").returncode == 0
    journal = search / "optuna.journal"
    whole = journal.read_bytes()
    journal.write_bytes(whole[:-40])  # a kill or a full disk in the middle of the last record
    cut = len(whole[:-40]) - whole[:-40].rfind(b"\n") - 1
    r = run_nst("-m", *SEARCH[:1], "hydra.sweeper.n_trials=3", *SEARCH[2:], f"hydra.sweep.dir={search}")
    assert r.returncode == 0, r.stderr[-2000:]
    said = [line for line in (r.stdout + r.stderr).splitlines() if "its last line was cut short" in line]
    assert said == [f"nst: {journal}: its last line was cut short (a full disk or a stopped command); removed it "
                    f"({cut} bytes), the records before it kept"]
    s = load_study(journal)
    assert s.trials[-1].state.name == "COMPLETE" and len(s.trials) >= 3  # the study goes on, readable
    r = run_nst("-m", *SEARCH[:1], "hydra.sweeper.n_trials=3", *SEARCH[2:], f"hydra.sweep.dir={search}")
    assert r.returncode == 0 and "cut short" not in r.stdout + r.stderr

    for bad in (whole + b"not a record\n" + whole.splitlines(keepends=True)[-1], b"\x00\x7fELF\x02\x01\n" + bytes(range(256))):
        journal.write_bytes(bad)
        one_line(run_nst("-m", *SEARCH, f"hydra.sweep.dir={search}"),
                 f"hydra.sweeper.storage: {journal} is not an Optuna journal that can be read (line ")
        assert journal.read_bytes() == bad


# --------------------------------------------------------------------------- resumes and values


def test_equal_values_are_one_trial_and_resumed_counts_the_commands_own(run_nst, tmp_path):
    sweep = tmp_path / "sw"
    r = run_nst("-m", "style_weight=1,1.0,2", *TINY, f"hydra.sweep.dir={sweep}")
    assert r.returncode == 0, r.stderr[-2000:]
    assert trial_folders(sweep) == ["0_style_weight=1", "1_style_weight=2"]
    assert len((sweep / "results.csv").read_text().strip().splitlines()) == 3
    r = run_nst("-m", "style_weight=1.0,2e0", *TINY, f"hydra.sweep.dir={sweep}")
    assert r.returncode == 0 and "resumed: 2 trial(s)" in r.stdout
    assert trial_folders(sweep) == ["0_style_weight=1", "1_style_weight=2"]
    r = run_nst("-m", "style_weight=2,3", *TINY, f"hydra.sweep.dir={sweep}")
    assert r.returncode == 0 and "resumed: 1 trial(s)" in r.stdout  # 2, not 1, which it did not name


def test_a_relative_image_path_with_chdir_is_refused_up_front(run_nst, tmp_path):
    from nst.images import bundled_images

    photo = bundled_images()["tubingen"]
    (tmp_path / "photo.jpg").write_bytes(photo.read_bytes())
    for args in (["-m", "style_weight=1e3,1e4"], []):
        line = one_line(run_nst(*args, *TINY, "content=photo.jpg", "hydra.job.chdir=true"),
                        "content: 'photo.jpg' is a relative path")
        assert str(tmp_path / "photo.jpg") in line
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == ["photo.jpg"]
    r = run_nst("-m", "style_weight=1e3", *TINY, f"content={tmp_path / 'photo.jpg'}", "hydra.job.chdir=true",
                f"hydra.sweep.dir={tmp_path / 'sw'}")
    assert r.returncode == 0, r.stderr[-2000:]
    # nothing swept: the folder is named by the trial's overrides, values as people write them
    assert trial_folders(tmp_path / "sw") == ["0_content=photo.jpg,device=cpu,logger=none,size=32,steps=2,style_weight=1e3"]


def test_a_trial_missing_its_image_reruns_and_an_odd_path_is_named_not_deleted(run_nst, tmp_path):
    sweep = tmp_path / "sw"
    args = ("-m", "style_weight=1e3,1e4", *TINY, f"hydra.sweep.dir={sweep}")
    assert run_nst(*args).returncode == 0
    first, second = (sweep / name for name in trial_folders(sweep))
    (first / "final.png").unlink()
    (first / "frames").mkdir(exist_ok=True)
    (first / "frames" / "mine.txt").write_text("put there by the user")
    (second / "summary.json").unlink()
    (second / "summary.json").mkdir()
    (second / "summary.json" / "keep.txt").write_text("the user's")
    r = run_nst(*args)
    assert r.returncode == 1
    assert (first / "final.png").is_file() and json.loads((first / "summary.json").read_text())["status"] == "completed"
    assert (first / "frames" / "mine.txt").read_text() == "put there by the user"  # the rerun's frames beside it
    assert f"{second / 'summary.json'} is a folder or link, where nst keeps its own; move it away" in r.stdout + r.stderr
    assert f"{second / 'summary.json'} is a folder, where nst keeps a file: move it away" in r.stderr.strip().splitlines()[-1]
    assert (second / "summary.json" / "keep.txt").read_text() == "the user's"
    assert not any(p.name == ".staging" for p in sweep.rglob("*"))
    (second / "summary.json" / "keep.txt").unlink()
    (second / "summary.json").rmdir()
    r = run_nst(*args)
    assert r.returncode == 0 and "resumed: 1 trial(s)" in r.stdout


def test_a_sweep_whose_folders_were_named_the_older_way_still_resumes(run_nst, tmp_path):
    sweep = tmp_path / "sw"
    args = ("-m", "style_weight=1e3,1e4", *TINY, f"hydra.sweep.dir={sweep}")
    assert run_nst(*args).returncode == 0
    for d in trial_folders(sweep):  # as they were named: all the overrides, as Hydra spelled them
        n, value = d.split("_style_weight=")
        (sweep / d).rename(sweep / f"{n}_device=cpu,logger=none,size=32,steps=2,style_weight={float(value):.1f}")
    names = trial_folders(sweep)
    r = run_nst(*args)
    assert r.returncode == 0 and "resumed: 2 trial(s)" in r.stdout
    assert trial_folders(sweep) == names


@pytest.mark.parametrize("number, overrides, swept, name", [
    (0, ["content=/home/me/photos/bridge.jpg", "device=cpu", "style_weight=1000.0"], ["style_weight"], "0_style_weight=1e3"),
    (3, ["optimizer.lr=0.012345678901", "size=64"], ["optimizer.lr"], "3_optimizer.lr=0.01235"),
    (1, ["content=/a/b/bridge.jpg", "style_weight=1e5"], ["content", "style_weight"], "1_content=bridge.jpg,style_weight=1e5"),
])
def test_trial_folders_are_named_by_the_swept_values(number, overrides, swept, name):
    from nst.sweep_folder import folder_name, swept_name

    assert folder_name(number, swept_name(overrides, swept)) == name
