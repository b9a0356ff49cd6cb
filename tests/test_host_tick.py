"""The host's side of a CPU batch: malloc keeps freed memory for the next tick (nst.device.keep_freed_memory),
and trials that finish in the same tick end their optimisation time at that tick, not after the others'
saving. benchmarks/throughput.py --loop measures what both are for (docs/speed.md)."""

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from helpers import read_jsonl, settings, trial
from nst import engine

# Allocate and touch 64 MB (above glibc's largest automatic mmap threshold, 32 MB) and free it, as a tick
# does with its feature maps, 24 times: prints the page faults of the last four rounds. (glibc's heap
# grows over the first rounds before it reuses what was freed: 4 to 8 x 64 MB here, as the aligned
# blocks torch asks for do not fit the holes at first.)
_FAULTS = """
import resource, sys, torch
from nst import device
print("kept", device.keep_freed_memory())
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for i in range(24):
    if i == 20:
        before = faults()
    x = torch.ones(16 * 2**20)
    y = torch.ones(1000)  # a small tensor that outlives it
    del x
print("faults", faults() - before)
"""


def _last_round(env: dict) -> tuple[bool, int]:
    out = subprocess.run([sys.executable, "-c", _FAULTS], env={**os.environ, **env}, capture_output=True, text=True,
                         check=True).stdout.split()
    return out[1] == "True", int(out[3])


@pytest.mark.skipif(not sys.platform.startswith("linux") or "glibc" not in (os.confstr("CS_GNU_LIBC_VERSION") or ""),
                    reason="glibc's malloc")
def test_freed_memory_is_reused_without_page_faults_unless_switched_off():
    kept, faults = _last_round({"NST_KEEP_FREED_MEMORY": "auto"})
    assert kept and faults < 4000, faults  # 64 MB in 4 KiB pages is 16,384 faults a round
    kept, faults = _last_round({"NST_KEEP_FREED_MEMORY": "0"})
    assert not kept and faults > 4 * 16_000, faults


def test_trials_that_finish_together_end_their_optimisation_time_together(tmp_path, monkeypatch):
    saved = engine.standard_metrics

    def slow_metrics(*a, **kw):
        time.sleep(1.0)  # a trial's saving that takes a second
        return saved(*a, **kw)

    monkeypatch.setattr(engine, "standard_metrics", slow_metrics)
    s = settings("device=cpu", "size=32", "steps=3", "logger=none")
    summaries = engine.run_together([trial(s, tmp_path / "a"), trial(s, tmp_path / "b")])
    assert [x["status"] for x in summaries] == ["completed", "completed"]
    times = [x["optimisation_time"] for x in summaries]
    assert abs(times[0] - times[1]) < 0.5, times  # the second does not count the first's saving
    assert all(x["wall_time"] >= 1.0 for x in summaries)  # the saving did happen


def test_frames_and_rows_are_written_in_the_background_and_all_there_at_the_end(tmp_path, monkeypatch):
    from nst import sinks

    writers, saved = set(), sinks.save_atomic

    def slow_save(img, path):
        writers.add(threading.current_thread().name)
        time.sleep(0.3)  # a slow disk
        saved(img, path)

    monkeypatch.setattr(sinks, "save_atomic", slow_save)
    s = settings("device=cpu", "size=32", "steps=6", "logger=none")
    summary = engine.run_together([trial(s, tmp_path, frame_every=1)])[0]
    assert summary["status"] == "completed"
    assert writers == {"nst-files_0"}  # not the loop's thread
    assert summary["optimisation_time"] < 1.5 < summary["wall_time"]  # six frames at 0.3 s: the loop did not wait
    assert sorted(p.name for p in (tmp_path / "frames").glob("*.png")) == [f"{n}.png" for n in range(1, 7)]
    assert (tmp_path / "animation.gif").is_file()
    assert [r["evaluation"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == list(range(1, 7))


def test_the_sink_benchmark_prints_both_ways_and_their_ratio():
    bench = Path(__file__).resolve().parents[1] / "benchmarks" / "sinks.py"
    out = subprocess.run([sys.executable, str(bench), "--size", "32", "--steps", "12", "--frame-every", "4", "--rounds", "1"],
                         capture_output=True, text=True, check=True, timeout=120).stdout
    rows = {line[:22].strip(): line[22:].split() for line in out.splitlines() if line.startswith("in the")}
    assert set(rows) == {"in the loop", "in the background"}, out
    assert all(float(ms) > 0 and written.endswith("s") for ms, written in rows.values()), out
    ratio = float(out.split("waits ")[1].split("x")[0])
    assert ratio == pytest.approx(float(rows["in the background"][0]) / float(rows["in the loop"][0]), rel=0.01, abs=0.002)
