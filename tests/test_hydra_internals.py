"""The private parts of Hydra the project relies on, all used from one module
(hydra_plugins/nst_launcher/_hydra_private.py): each still where it was, with the parameters it had
and the behaviour the launcher counts on, and none used anywhere else. A failure names the piece:
re-read it in the installed Hydra before changing the module's CHECKED versions."""

from __future__ import annotations

import ast
import hashlib
import importlib
import inspect
import logging
import os
import warnings
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from hydra_plugins.nst_launcher import _hydra_private as private

ROOT = Path(__file__).resolve().parent.parent
MODULE = ROOT / "hydra_plugins" / "nst_launcher" / "_hydra_private.py"


def resolve(dotted: str):
    """The object a dotted name points to: the longest importable module, then attributes."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:]:
            obj = getattr(obj, name)
        return obj
    raise ImportError(dotted)


@pytest.mark.parametrize("piece", sorted(private.PIECES))
def test_each_private_piece_is_where_it_was_with_its_parameters(piece):
    params = private.PIECES[piece]
    if params is None:  # an attribute: see the behaviour tests below
        owner, _, name = piece.rpartition(".")
        try:
            cls = resolve(owner)
        except (ImportError, AttributeError) as e:
            pytest.fail(f"Hydra's private {piece} moved: {owner} is gone ({e!r})")
        assert name in inspect.getsource(cls), f"Hydra's private {piece} changed: {owner} no longer mentions {name}"
        return
    try:
        obj = resolve(piece)
    except (ImportError, AttributeError) as e:
        pytest.fail(f"Hydra's private {piece} moved or is gone ({e!r})")
    found = tuple(inspect.signature(obj).parameters)
    assert found == params, f"Hydra's private {piece} changed signature: {found}, checked with {params}"


def test_run_job_whose_steps_the_launcher_repeats_is_unchanged():
    from hydra.core.utils import run_job

    digest = hashlib.sha256(inspect.getsource(run_job).encode()).hexdigest()
    assert digest == private.RUN_JOB_SHA256, (
        "hydra.core.utils.run_job changed: hydra_plugins/nst_launcher/_core.py (Job._start, Job._end, "
        "execute_batch) repeats its steps; re-read it, then update RUN_JOB_SHA256")


def test_hydra_config_can_be_saved_and_restored_none_included(tmp_path):
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig

    (tmp_path / "config.yaml").write_text("a: 1\n")
    with initialize_config_dir(config_dir=str(tmp_path), version_base="1.3"):
        config = compose("config", return_hydra_config=True)
    saved = private.saved_hydra_config()
    try:
        private.restore_hydra_config(None)
        assert not HydraConfig.initialized(), "HydraConfig.instance().cfg = None no longer means 'no job is current'"
        HydraConfig.instance().set_config(config)
        current = private.saved_hydra_config()
        assert current is not None and current.hydra is HydraConfig.get(), \
            "HydraConfig.instance().cfg no longer holds what set_config made current"
        private.restore_hydra_config(None)
        assert not HydraConfig.initialized()
        private.restore_hydra_config(current)
        assert HydraConfig.get().job.name == config.hydra.job.name
    finally:
        private.restore_hydra_config(saved)


def test_a_failed_jobs_value_is_read_without_raising():
    from hydra.core.utils import JobReturn, JobStatus

    ret = JobReturn(status=JobStatus.FAILED)
    error = ValueError("failed")
    ret.return_value = error  # the public setter
    assert private.job_value(ret) is error, "JobReturn._return_value no longer holds what return_value was set to"
    with pytest.raises(ValueError):
        ret.return_value  # noqa: B018 - the public getter raises it: why job_value exists


def test_save_config_flush_loggers_and_the_chdir_warning(tmp_path, monkeypatch):
    cfg = OmegaConf.create({"a": 1, "b": {"c": "x"}})
    private.save_config(cfg, "config.yaml", tmp_path / ".hydra")
    assert (tmp_path / ".hydra" / "config.yaml").read_text() == OmegaConf.to_yaml(cfg)

    handler = logging.StreamHandler(open(tmp_path / "log.txt", "w"))  # closed below
    logging.getLogger("test_hydra_internals").addHandler(handler)
    try:
        handler.stream.write("buffered")
        private.flush_loggers()
        assert (tmp_path / "log.txt").read_text() == "buffered", "_flush_loggers no longer flushes every handler"
    finally:
        logging.getLogger("test_hydra_internals").removeHandler(handler)
        handler.close()

    with pytest.warns(UserWarning, match="no longer change"):
        private.deprecation_warning(message="will no longer change", stacklevel=1)
    from hydra.errors import HydraDeprecationError

    monkeypatch.setenv("HYDRA_DEPRECATION_WARNINGS_AS_ERRORS", "1")
    with pytest.raises(HydraDeprecationError):
        private.deprecation_warning(message="as an error")


def test_split_arguments_expands_a_grid_as_the_basic_sweeper_does():
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(["a=1,2", "b=x", "a=3,4", "c=5,6"])
    (batch,) = private.split_arguments(parsed, None)
    # later keys win, in their first place; the product in command-line order
    assert batch == [["a=3", "b=x", "c=5"], ["a=3", "b=x", "c=6"], ["a=4", "b=x", "c=5"], ["a=4", "b=x", "c=6"]]


def private_uses(path: Path) -> list:
    """(line, what) for each use of Hydra's private API in a file: imports from hydra._internal or of
    a `_name` from a hydra module, JobReturn._return_value, HydraConfig.instance().cfg."""
    uses = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            uses += [(node.lineno, a.name) for a in node.names if a.name.startswith("hydra._internal")]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "hydra":
            if node.module.startswith("hydra._internal"):
                uses.append((node.lineno, node.module))
            uses += [(node.lineno, f"{node.module}.{a.name}") for a in node.names
                     if a.name.startswith("_") and not a.name.startswith("__")]
        elif isinstance(node, ast.Attribute) and node.attr == "_return_value":
            uses.append((node.lineno, "._return_value"))
        elif (isinstance(node, ast.Attribute) and node.attr == "cfg" and isinstance(node.value, ast.Call)
              and isinstance(node.value.func, ast.Attribute) and node.value.func.attr == "instance"
              and getattr(node.value.func.value, "id", None) == "HydraConfig"):
            uses.append((node.lineno, "HydraConfig.instance().cfg"))
    return uses


def test_no_module_but_hydra_private_uses_hydras_private_api():
    files = sorted([*(ROOT / "nst").rglob("*.py"), *(ROOT / "hydra_plugins").rglob("*.py")])
    found = [f"{p.relative_to(ROOT)}:{line}: {what}" for p in files if p != MODULE for line, what in private_uses(p)]
    assert found == [], "Hydra's private API outside _hydra_private.py:\n" + "\n".join(found)
    # and every private piece that module uses is one the tests above check
    aliases = {"._return_value": "hydra.core.utils.JobReturn._return_value",
               "HydraConfig.instance().cfg": "hydra.core.hydra_config.HydraConfig.cfg"}
    unlisted = sorted({what for _, what in private_uses(MODULE)
                       if not any(p == aliases.get(what, what) or p.startswith(what + ".") for p in private.PIECES)})
    assert unlisted == [], f"_hydra_private.py uses private pieces missing from its PIECES: {unlisted}"


def test_an_unchecked_hydra_version_warns_once_naming_the_module(monkeypatch):
    import hydra

    monkeypatch.delenv(private._WARNED, raising=False)
    monkeypatch.setattr(hydra, "__version__", "9.9.9")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            importlib.reload(private)  # (a new UncheckedHydraVersion class each time: compared by name)
        assert [w.category.__name__ for w in caught] == ["UncheckedHydraVersion"]
        assert "hydra-core 9.9.9 was not checked against hydra_plugins/nst_launcher/_hydra_private.py" in str(caught[0].message)
        assert os.environ[private._WARNED] == "9.9.9"  # what worker processes inherit: they stay quiet
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            importlib.reload(private)  # once
    finally:
        monkeypatch.undo()
        os.environ.pop(private._WARNED, None)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            importlib.reload(private)  # a checked version: silent
    assert hydra.__version__ in private.CHECKED
