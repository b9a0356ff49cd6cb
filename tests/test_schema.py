"""The schema (nst/schema.py) is the one source of keys, types, defaults and choices: the README's
key tables document exactly its keys with their defaults, the choices agree with the code that
implements them, and a wrong type or an unknown choice is one line naming the key and what it takes."""

import re
import typing
from enum import Enum
from pathlib import Path

import pytest
import yaml
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from nst import compose, features, preflight, schema, search
from nst.errors import InputError
from nst.settings import settings_from_dict

README = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"  # the key tables moved there from the README
CONF = compose.CONF_DIR


def _compose(overrides=(), hydra_config=False):
    GlobalHydra.instance().clear()
    compose.register_resolvers()
    with initialize_config_dir(config_dir=str(CONF), version_base=compose.VERSION_BASE, job_name="nst"):
        return hydra_compose(config_name="config", overrides=list(overrides), return_hydra_config=hydra_config)


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def _readme_rows() -> list[tuple[str, list[str]]]:
    """(key, the code spans of its default cell) for every row of the `| key | default | meaning |`
    tables of the README's Configuration section."""
    text = README.read_text(encoding="utf-8")
    section = text.split("\n## The keys explained\n", 1)[1].split("\n## ", 1)[0]
    rows, in_table = [], False
    for line in section.splitlines():
        if line.startswith("| key | default | meaning |"):
            in_table = True
            continue
        if not line.startswith("|"):
            in_table = False
            continue
        if in_table and not line.startswith("| ---"):
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
            (key,) = re.findall(r"`([^`]+)`", cells[0])  # one key a row
            rows.append((key, re.findall(r"`([^`]+)`", cells[1])))
    return rows


def _groups() -> dict[str, str]:
    """Config group -> its default option, from config.yaml's defaults list."""
    defaults = yaml.safe_load((CONF / "config.yaml").read_text())["defaults"]
    return {k: v for d in defaults if isinstance(d, dict) for k, v in d.items() if not k.startswith("override ")}


def _schema_keys() -> set[str]:
    keys: set[str] = set()

    def walk(cls, prefix: str) -> None:
        hints = typing.get_type_hints(cls)
        for f in schema.fields(cls):
            t, _ = schema.unwrap_optional(hints[f.name])
            if t is schema.OptimizerConf:  # each option has a schema of its own
                for sub in schema.OPTIMIZER_SCHEMAS.values():
                    walk(sub, f"{prefix}{f.name}.")
            elif schema.is_dataclass(t):
                walk(t, f"{prefix}{f.name}.")
            else:
                keys.add(prefix + f.name)

    walk(schema.Config, "")
    return keys


def test_readme_tables_name_exactly_the_schema_keys_with_their_defaults():
    rows = _readme_rows()
    keys = [k for k, _ in rows]
    assert len(keys) == len(set(keys)), f"keys listed twice: {sorted({k for k in keys if keys.count(k) > 1})}"
    groups = _groups()
    schema_keys = _schema_keys()

    default = _flat(OmegaConf.to_container(_compose(), resolve=True))
    hydra_cfg = _compose(hydra_config=True)
    # What each group option makes of the keys under its node (optimizer.lr: 1.0 for lbfgs, 0.02 for adam)
    per_option: dict[str, list] = {}
    for group in groups:
        for option in sorted(p.stem for p in (CONF / group).glob("*.yaml")):
            cfg = _flat(OmegaConf.to_container(_compose([f"{group}={option}"]), resolve=True))
            for k, v in cfg.items():
                if k.startswith(group + ".") and v not in per_option.setdefault(k, []):
                    per_option[k].append(v)

    documented = set()
    for key, spans in rows:
        values = [yaml.safe_load(s) for s in spans]
        if key.lstrip("+") in groups or key.startswith("+"):
            group = key.lstrip("+")
            assert (CONF / group).is_dir(), f"README row {key}: no such config group"
            if key.startswith("+"):
                assert group not in groups and spans == [], f"README row {key}: an optional group has no default"
            else:
                assert spans[:1] == [groups[group]], f"README row {key}: the default option is {groups[group]!r}"
            continue
        if key.startswith("hydra."):
            assert OmegaConf.select(hydra_cfg, key) is not None, f"README row {key}: not a key of Hydra's config"
            continue
        assert key in schema_keys, f"README documents {key!r}, which the schema lacks"
        documented.add(key)
        if key in default:
            assert values and values[0] == default[key], \
                f"README row {key}: default {spans[:1]}, the schema's is {default[key]!r}"
        for v in per_option.get(key, []):
            assert v in values, f"README row {key}: one of the group's options gives {v!r}, not in {spans}"
    assert schema_keys - documented == set(), f"schema keys missing from the README: {sorted(schema_keys - documented)}"


def _choice_keys() -> list[tuple[str, type]]:
    """(dotted key, its Choice enum) for every choice the schema has."""
    out = []

    def walk(cls, prefix: str) -> None:
        for name, t in typing.get_type_hints(cls).items():
            t, _ = schema.unwrap_optional(t)
            if isinstance(t, type) and issubclass(t, schema.Choice):
                out.append((prefix + name, t))
            elif t is schema.OptimizerConf:
                walk(schema.LbfgsConf, f"{prefix}{name}.")
            elif schema.is_dataclass(t):
                walk(t, f"{prefix}{name}.")

    walk(schema.Config, "")
    return out


@pytest.mark.parametrize("key, choice", _choice_keys(), ids=[k for k, _ in _choice_keys()])
def test_a_choice_rejects_an_unknown_value_in_one_line_listing_the_allowed(key, choice):
    GlobalHydra.instance().clear()
    with pytest.raises(InputError) as e:
        preflight.check([f"{key}=bogus", "logger=none"])
    optional = "null, " if key == "objective" else ""
    noun = "objective" if key == "objective" else "value"
    assert str(e.value) == f"{key}: unknown {noun} 'bogus'; allowed: {optional}{', '.join(choice.values())}"


@pytest.mark.parametrize("override, message", [
    ("size=abc", "size: must be a whole number, got 'abc'"),
    ("steps=2.5", "steps: must be a whole number, got 2.5"),
    ("scale=big", "scale: must be a number, got 'big'"),
    ("deterministic=maybe", "deterministic: must be true or false, got 'maybe'"),
    ("pooling=null", "pooling: must not be null; allowed: max, avg"),
    ("size=null", "size: must be a whole number, got null"),
    ("style_blend=[1,a]", "style_blend[1]: must be a number, got 'a'"),
    ("pyramid.steps=abc", "pyramid.steps: must be null or a list of whole numbers, got 'abc'"),
    ("content=[a,b]", "content: must be a string, got ['a', 'b']"),
    ("optimizer.lr=fast", "optimizer.lr: must be a number, got 'fast'"),
])
def test_a_wrong_type_is_one_line_naming_the_key_and_what_it_takes(override, message):
    GlobalHydra.instance().clear()
    with pytest.raises(InputError) as e:
        preflight.check([override, "logger=none"])
    assert str(e.value) == message


def test_a_plain_dict_is_checked_against_the_schema_too():
    d = OmegaConf.to_container(_compose(["logger=none"]), resolve=True)
    d["precision"] = "fp16"
    with pytest.raises(InputError, match=r"^precision: unknown value 'fp16'; allowed: auto, fp32, tf32, bf16$"):
        settings_from_dict(d)
    d["precision"], d["size"] = "auto", "big"
    with pytest.raises(InputError, match=r"^size: must be a whole number, got 'big'$"):
        settings_from_dict(d)


def test_settings_read_the_schemas_choices_and_record_plain_strings():
    s = settings_from_dict(OmegaConf.to_container(_compose(["logger=none"]), resolve=True))
    assert isinstance(s.config, schema.Config)
    for name, choice in (("arch", schema.Arch), ("weights", schema.Weights), ("pooling", schema.Pooling),
                         ("style_size", schema.StyleSize), ("crop", schema.Crop), ("color", schema.Color),
                         ("init", schema.InitKind), ("noise", schema.Noise), ("precision", schema.Precision),
                         ("compile", schema.Compile)):
        assert type(getattr(s, name)) is choice, name
        assert type(s.to_dict()[name]) is str, name  # summary.json's record: plain values
    assert type(s.optimizer.name) is str and type(s.objective.style_form) is str


@pytest.mark.parametrize("choice, implemented", [
    (schema.Arch, list(features.ARCHS)),
    (schema.Weights, list(features.WEIGHTS)),
    (schema.Pooling, list(features.POOLING)),
    (schema.OptimizerName, [n.value for n in schema.OPTIMIZER_SCHEMAS]),
    (schema.Objective, list(search.OBJECTIVES)),
    (schema.InitKind, sorted(p.stem for p in (CONF / "init").glob("*.yaml"))),
    (schema.LoggerName, sorted(p.stem for p in (CONF / "logger").glob("*.yaml"))),
])
def test_choices_are_what_the_code_implements(choice, implemented):
    assert sorted(choice.values()) == sorted(implemented)


def test_every_choice_is_read_by_its_name():
    # OmegaConf reads an enum value by member name: a member whose name differs would be unreachable
    for cls in schema.Choice.__subclasses__():
        assert all(m.name == m.value for m in cls), cls
        assert all(isinstance(m, str) and str(m) == m.value and f"{m}" == m.value for m in cls), cls


def test_group_files_are_checked_against_the_schema(tmp_path):
    # A group option's file with a wrong type or a key the schema lacks fails to compose.
    conf = tmp_path / "conf"
    for p in CONF.rglob("*.yaml"):
        (conf / p.relative_to(CONF)).parent.mkdir(parents=True, exist_ok=True)
        (conf / p.relative_to(CONF)).write_text(p.read_text())
    (conf / "init" / "bad.yaml").write_text("kind: zeros\n")
    (conf / "model" / "bad.yaml").write_text("arch: vgg19\ndepth: 19\n")
    for group in ("init", "model"):
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(conf), version_base=compose.VERSION_BASE, job_name="nst"):
            with pytest.raises(Exception, match="zeros|depth"):
                hydra_compose(config_name="config", overrides=[f"{group}=bad"])
    GlobalHydra.instance().clear()


def test_enum_members_in_a_resolved_config_compare_and_serialise_as_strings():
    # The runner resolves its config without enum_to_str: what it compares and writes must not change.
    import json

    d = OmegaConf.to_container(_compose(), resolve=True)
    assert isinstance(d["logger"]["name"], Enum) and d["logger"]["name"] == "wandb"
    assert json.loads(json.dumps(d))["optimizer"]["name"] == "lbfgs"


def test_a_key_the_chosen_option_lacks_names_that_options_keys():
    GlobalHydra.instance().clear()
    with pytest.raises(InputError) as e:
        preflight.check(["optimizer=adam", "optimizer.history_size=3", "logger=none"])
    assert str(e.value) == ("optimizer.history_size: is not a config key; keys of optimizer: betas, lr, name "
                            "(manual: docs/configuration.md)")
