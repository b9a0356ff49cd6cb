"""One stage from config to trial: each trial composed and validated once, each input decoded once."""

import json
import os
import subprocess
import sys
import time
from collections import Counter

from PIL import Image

from conftest import nst_env

# Put first on the path of the command under test, this wraps the three functions that do the work
# (Hydra's composition, nst's validation and decoding) and writes each call, with the module of nst or
# Hydra that asked for it, to $NST_COUNT_FILE when the process exits.
COUNTING_HOOK = '''
import atexit, json, os, traceback

ASKERS = ("nst/report/page.py", "nst/preflight.py", "nst/stage.py", "nst_launcher/_core.py", "basic_sweeper.py",
          "hydra/_internal/hydra.py")


def asker():
    files = [f.filename.replace(os.sep, "/") for f in traceback.extract_stack()]
    return next((m for m in ASKERS if any(f.endswith(m) for f in files)), "other")


events = []
from hydra._internal.config_loader_impl import ConfigLoaderImpl
import nst.images, nst.settings

load_configuration = ConfigLoaderImpl.load_configuration
validate, decode = nst.settings.validate, nst.images.decode


def counted_load(self, config_name, overrides, *args, **kwargs):
    events.append(["compose", [o for o in overrides if o.startswith("style_weight=")], asker()])
    return load_configuration(self, config_name, overrides, *args, **kwargs)


def counted_validate(d):
    events.append(["validate", d["style_weight"], asker()])
    return validate(d)


def counted_decode(key, path):
    events.append(["decode", os.path.basename(str(path)), asker()])
    return decode(key, path)


ConfigLoaderImpl.load_configuration = counted_load
nst.settings.validate, nst.images.decode = counted_validate, counted_decode
atexit.register(lambda: open(os.environ["NST_COUNT_FILE"], "a").write(json.dumps(events) + "\\n"))
'''


def test_a_sweep_composes_and_validates_each_trial_once_and_decodes_each_image_once(tmp_path):
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(COUNTING_HOOK)
    env = nst_env(tmp_path)
    env.update(NST_COUNT_FILE=str(tmp_path / "counts.jsonl"),
               PYTHONPATH=os.pathsep.join([str(hook), *filter(None, [env.get("PYTHONPATH")])]))
    r = subprocess.run([sys.executable, "-m", "nst.run", "-m", "style_weight=1e3,1e4", "size=32", "steps=2",
                        "device=cpu", "logger=none"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    (line,) = (tmp_path / "counts.jsonl").read_text().splitlines()  # one process: the nst launcher runs here
    events = json.loads(line)
    validated = Counter(value for kind, value, _ in events if kind == "validate")
    assert validated == {1e3: 1, 1e4: 1}
    # the trials' images: decoded by the up-front check, then found on the stage by the trials. The
    # sweep report reads its thumbnails from the files itself (it also runs on its own: nst.report).
    decoded = Counter(name for kind, name, by in events if kind == "decode" and by != "nst/report/page.py")
    assert decoded == {"tubingen.jpg": 1, "starry_night.jpg": 1}
    # nst composes each trial once (the up-front check); Hydra's basic sweeper composes each once to
    # check the batch, and the launcher once to build the job's own `hydra` node and folder.
    per_trial = Counter((tuple(o), by) for kind, o, by in events if kind == "compose" and o != ["style_weight=1e3,1e4"])
    for value in ("1000.0", "10000.0"):
        key = (f"style_weight={value}",)
        assert per_trial[key, "nst/preflight.py"] == 1, per_trial
        assert per_trial[key, "basic_sweeper.py"] == 1 and per_trial[key, "nst_launcher/_core.py"] == 1, per_trial
    assert sum(per_trial.values()) == 6, per_trial


def test_the_stage_validates_a_resolved_config_once(monkeypatch):
    from omegaconf import OmegaConf

    from nst import compose
    from nst import settings as settings_module
    from nst.stage import Stage

    calls = []
    validate = settings_module.validate
    monkeypatch.setattr(settings_module, "validate", lambda d: calls.append(1) or validate(d))
    stage = Stage()
    resolved = OmegaConf.to_container(compose.config(["size=40", "style_weight=123.0"]), resolve=True)
    first = stage.settings(resolved)
    again = stage.settings(OmegaConf.to_container(compose.config(["size=40", "style_weight=123.0"]), resolve=True))
    assert first is again and len(calls) == 1
    other = stage.settings({**resolved, "size": 41})
    assert other.size == 41 and len(calls) == 2
    assert Stage().settings(resolved) == first and len(calls) == 3  # another command's stage: its own


def test_the_stage_decodes_each_file_once_and_again_when_it_changes(tmp_path, monkeypatch):
    from nst import images
    from nst.stage import Stage

    calls = []
    decode = images.decode
    monkeypatch.setattr(images, "decode", lambda key, path: calls.append(path) or decode(key, path))
    f = tmp_path / "photo.png"
    Image.new("RGB", (40, 30), (10, 20, 30)).save(f)
    stage = Stage()
    a = stage.image("content", str(f))
    b = stage.image("style", str(f))  # the up-front check, then the trial: one decoding
    assert a is b and len(calls) == 1
    Image.new("RGB", (40, 30), (200, 20, 30)).save(f)
    os.utime(f, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))  # a new modification time
    c = stage.image("content", str(f))
    assert len(calls) == 2 and c.getpixel((0, 0)) == (200, 20, 30)
    images.load_image("content", str(f))  # outside a stage, every call decodes
    assert len(calls) == 3
