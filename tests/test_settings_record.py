"""Settings read from the schema give the same record as the field-by-field Settings did.

tests/fixtures/settings_to_dict.json holds `Settings.to_dict()` for the defaults, every recipe and
every ready sweep's first trial, as written by the Settings that restated the config's keys one by
one (captured from that code before it was replaced, and not regenerated since: a change to a
trial's record must change the fixture by hand, on purpose).
"""

import json
import pickle
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from nst import compose, schema
from nst.settings import validate

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "settings_to_dict.json").read_text())


def _cases() -> list[str]:
    """The cases the fixture must cover: a recipe or a ready sweep added since must be added to it."""
    conf = Path(compose.CONF_DIR)
    return ["defaults", *(f"recipe={p.stem}" for p in sorted((conf / "recipe").glob("*.yaml"))),
            *(f"+sweep={p.stem}" for p in sorted((conf / "sweep").glob("*.yaml")))]


def test_the_fixture_covers_every_recipe_and_ready_sweep():
    assert sorted(FIXTURE) == sorted(_cases())


@pytest.mark.parametrize("name", sorted(FIXTURE))
def test_the_record_is_the_one_the_restated_settings_gave(name):
    case = FIXTURE[name]
    if name.startswith("+sweep="):  # the sweep's first trial, as the fixture took it
        assert compose.expand_trials([name], multirun=True)[0] == case["overrides"]
    s = validate(OmegaConf.to_container(compose.config(case["overrides"]), resolve=True))
    record = s.to_dict()
    assert json.loads(json.dumps(record)) == case["settings"]
    assert all(type(v) in (str, int, float, bool, tuple, dict, type(None)) for v in record.values()), record


def test_settings_hash_pickle_and_compare_by_value():
    overrides = FIXTURE["recipe=crowsonkb"]["overrides"]
    a = validate(OmegaConf.to_container(compose.config(overrides), resolve=True))
    b = validate(OmegaConf.to_container(compose.config(overrides), resolve=True))
    assert a == b and hash(a) == hash(b) and a is not b
    back = pickle.loads(pickle.dumps(a))  # as a worker process or a SLURM task gets them
    assert back == a and hash(back) == hash(a) and back.compile is schema.Compile("auto")
    other = validate(OmegaConf.to_container(compose.config([*overrides, "size=300"]), resolve=True))
    assert other != a and other.size == 300
