"""The host's side of a CPU batch: malloc keeps freed memory for the next tick (nst.device.keep_freed_memory),
and trials that finish in the same tick end their optimisation time at that tick, not after the others'
saving. benchmarks/throughput.py --loop measures what both are for (docs/speed.md)."""

import json
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
    left, faults_left = _last_round({"NST_KEEP_FREED_MEMORY": "0"})
    assert kept and not left
    # 64 MB in 4 KiB pages is 16,384 faults a round (far fewer with transparent huge pages always on)
    assert faults < 4000 and faults < faults_left, (faults, faults_left)


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
    from nst.engine import Trial
    from nst.stage import load_inputs

    class Watch:  # another sink of the trial: when the loop has reached evaluation 3
        def __init__(self):
            self.third = threading.Event()

        def on_step(self, rec):
            if rec.evaluation == 3:
                self.third.set()

        def close(self, summary):
            pass

    watch, writers, saved = Watch(), [], sinks.save_atomic

    def first_frame_waits_for_the_loop(img, path):
        # written inline, frame 1 would hold the loop at evaluation 1 and evaluation 3 would never come
        writers.append((threading.current_thread().name, path.name, path.name != "1.png" or watch.third.wait(60)))
        saved(img, path)

    monkeypatch.setattr(sinks, "save_atomic", first_frame_waits_for_the_loop)
    s = settings("device=cpu", "size=32", "steps=6", "logger=none")
    file_sink = lambda pos: [sinks.FileSink(tmp_path, log_every=1, frame_every=1, steps=6), watch]  # noqa: E731
    summary = engine.run_together([Trial(s, load_inputs(s), tmp_path, file_sink)])[0]
    assert summary["status"] == "completed"
    assert writers == [("nst-files_0", f"{n}.png", True) for n in range(1, 7)]  # in order, on the writer thread
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
    # The rows are printed to 0.001 ms and the ratio to 0.001, so the ratio must lie between the
    # ratios of the rows' rounding bounds (at 32 px a row can be 0.03 ms, where rounding alone moves it 2 %).
    background, loop = (float(rows[name][0]) for name in ("in the background", "in the loop"))
    low, high = (background - 0.0005) / (loop + 0.0005), (background + 0.0005) / (loop - 0.0005)
    assert low - 0.0005 <= ratio <= high + 0.0005, out


_CTRL_C_WHILE_FLUSHING = """
import os, signal, sys, threading, time
from pathlib import Path
sys.path.insert(0, sys.argv[2])
from helpers import settings, trial
from nst import engine, records, sinks
folder = Path(sys.argv[1])
first = trial(settings("device=cpu", "size=32", "steps=4", "logger=none"), folder, frame_every=1)
print(engine.run_together([first])[0]["status"])
saved = sinks.save_atomic
def slow_save(img, path):
    if path.name == "4.png":  # the rerun's last frame: Ctrl-C while the trial waits for it
        threading.Timer(1.5, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
        time.sleep(3.0)
    saved(img, path)
sinks.save_atomic = slow_save
try:
    engine.run_together([trial(settings("device=cpu", "size=32", "steps=4", "logger=none", "seed=1"), folder, frame_every=1)])
except KeyboardInterrupt:
    print("interrupted")
time.sleep(3)
print("staging", (folder / records.STAGING).exists())
"""


def test_ctrl_c_while_the_frames_are_written_leaves_the_earlier_files_and_writes_nothing_after(tmp_path):
    # a rerun stopped while its last frame is being written: its attempt is discarded, and the writer
    # thread writes nothing into it afterwards (the earlier, completed attempt's files stay as they were)
    tests = Path(__file__).resolve().parent
    r = subprocess.run([sys.executable, "-c", _CTRL_C_WHILE_FLUSHING, str(tmp_path / "t"), str(tests)],
                       capture_output=True, text=True, timeout=300, env={**os.environ, "NST_PROGRESS": "0"})
    assert r.stdout.split() == ["completed", "interrupted", "staging", "False"], r.stdout + r.stderr[-2000:]
    assert json.loads((tmp_path / "t" / "summary.json").read_text())["status"] == "completed"
    assert sorted(p.name for p in (tmp_path / "t" / "frames").iterdir()) == ["1.png", "2.png", "3.png", "4.png"]
