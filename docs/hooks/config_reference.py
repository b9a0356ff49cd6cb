"""The manual's configuration reference, generated at build time from nst/schema.py and nst/conf/, so it
cannot drift from the code: every key with its type, default, allowed values and meaning, and every
config group with its options.

The meaning of a key is its trailing comment in nst/schema.py (`size: int = 512  # long side ...`), of
a choice its member's comment. A key without one fails the build, naming it: a new key arrives with
its sentence. A dataclass-valued key may instead take its class's header comment.

configuration.md holds two blocks, each replaced here with what it stands for: from <!-- config-reference -->
to <!-- /config-reference --> and from <!-- config-groups --> to <!-- /config-groups --> (between the
two, a line for whoever reads the page as source, on GitHub say).
"""

from __future__ import annotations

import ast
import io
import re
import sys
import tokenize
import types
import typing
from dataclasses import MISSING, fields, is_dataclass
from enum import Enum
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
SCHEMA_PY = ROOT / "nst" / "schema.py"
CONF = ROOT / "nst" / "conf"
REFERENCE_MARKER = "<!-- config-reference -->"
GROUPS_MARKER = "<!-- config-groups -->"
# The groups in the order a reader meets them; any other group folder is listed after these.
GROUP_ORDER = ["model", "layers", "optimizer", "init", "logger", "recipe", "sweep", "search"]
GROUP_MEANING = {
    "model": "the network and its weights",
    "layers": "presets that set both `content_layers` and `style_layers`",
    "optimizer": "the optimiser and its keys (`optimizer.*`)",
    "init": "the image the optimisation starts from (`init.*`)",
    "logger": "where runs are logged besides their folders",
    "recipe": "a peer implementation's settings as one preset; keys set beside it win",
    "sweep": "the ready sweeps (also reachable as `sweeps/` in a clone); select with `+sweep=NAME` and `-m`",
    "search": "the ready Optuna searches (the `search` extra); select with `+search=NAME` and `-m`",
}


class MissingComment(Exception):
    pass


# --- what the source says ---------------------------------------------------------------------

def source_comments(source: str) -> tuple[dict[int, str], dict[int, str]]:
    """(trailing comments by line, own-line comments by line) of a Python source."""
    trailing, own = {}, {}
    code_lines: set[int] = set()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            text = tok.string.lstrip("#").strip()
            (trailing if tok.start[0] in code_lines else own)[tok.start[0]] = text
        elif tok.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENCODING):
            code_lines.update(range(tok.start[0], tok.end[0] + 1))
    return trailing, own


class SchemaText:
    """The comments of nst/schema.py attached to what they describe."""

    def __init__(self, source: str):
        trailing, own = source_comments(source)
        self.field: dict[tuple[str, str], str] = {}  # (class, field) -> trailing comment
        self.member: dict[tuple[str, str], str] = {}  # (enum class, member) -> trailing comment
        self.cls: dict[str, str] = {}  # class -> the comment on its `class` line
        self.section: dict[tuple[str, str], str] = {}  # (class, first field of a section) -> its heading comment
        for node in ast.parse(source).body:
            if not isinstance(node, ast.ClassDef):
                continue
            if node.lineno in trailing:
                self.cls[node.name] = trailing[node.lineno]
            for item in node.body:
                line_comment = trailing.get(item.end_lineno or item.lineno)
                if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                    name = item.target.id
                    if line_comment:
                        self.field[node.name, name] = line_comment
                    block, line = [], item.lineno - 1
                    while line in own:  # the own-line comments just above a field open a section
                        block.insert(0, own[line])
                        line -= 1
                    if block:
                        self.section[node.name, name] = " ".join(block)
                elif (isinstance(item, ast.Assign) and len(item.targets) == 1 and isinstance(item.targets[0], ast.Name)
                      and line_comment):
                    self.member[node.name, item.targets[0].id] = line_comment


# --- rendering --------------------------------------------------------------------------------

def _unwrap(t):
    args = typing.get_args(t)
    if typing.get_origin(t) in (typing.Union, types.UnionType) and type(None) in args:  # Optional[X] or X | None
        rest = [a for a in args if a is not type(None)]
        return (rest[0] if len(rest) == 1 else typing.Any), True
    return t, False


def type_name(t) -> str:
    t, optional = _unwrap(t)
    if isinstance(t, type) and issubclass(t, Enum):
        text = "choice"
    elif t in (bool, int, float, str):
        text = t.__name__
    elif typing.get_origin(t) in (list, list):
        (item,) = typing.get_args(t) or (typing.Any,)
        text = "list" if item is typing.Any else f"list of {type_name(item)}"
    elif t is typing.Any:
        text = "any"
    else:
        text = getattr(t, "__name__", str(t))
    return f"{text} or null" if optional else text


def show(value) -> str:
    if value is None:
        return "`null`"
    if isinstance(value, Enum):
        value = value.value
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, list):
        return "`[" + ", ".join(str(v) for v in value) + "]`"
    return f"`{value}`"


def cell(text: str) -> str:
    """A comment as table-cell Markdown: its `code` spans kept, a `*` or `<` shown as written."""
    parts = re.split(r"(`[^`]*`)", text)
    return "".join(p if p.startswith("`") else p.replace("*", "\\*").replace("<", "&lt;") for p in parts).replace("|", "\\|")


def field_default(f):
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return MISSING


def reference_markdown(schema_module, text: SchemaText, composed: dict) -> str:
    """The key tables, one per section of the schema's Config."""
    missing: list[str] = []
    sections: list[tuple[str, str, list[str]]] = []  # (title, note, rows)

    def meaning(cls, name: str, t) -> str:
        comment = text.field.get((cls.__name__, name))
        inner, _ = _unwrap(t)
        if comment is None and is_dataclass(inner):
            comment = text.cls.get(inner.__name__)
        return comment or ""

    def allowed(t) -> str:
        inner, _ = _unwrap(t)
        if not (isinstance(inner, type) and issubclass(inner, Enum)):
            return ""
        parts = []
        for m in inner:
            note = text.member.get((inner.__name__, m.name))
            parts.append(f"`{m.value}`" + (f": {cell(note)}" if note else ""))
        return "<br>".join(parts)

    def lookup(dotted: str):
        node = composed
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                return MISSING
            node = node[part]
        return node

    def emit(cls, f, t, key: str, rows: list[str]) -> None:
        inner, _ = _unwrap(t)
        if inner is schema_module.OptimizerConf:  # each optimizer option has keys of its own
            optimizer_rows(key, rows)
            return
        m = meaning(cls, f.name, t)
        if not m:
            missing.append(key)
        if is_dataclass(inner):
            inner_hints = typing.get_type_hints(inner)
            for g in fields(inner):
                emit(inner, g, inner_hints[g.name], f"{key}.{g.name}", rows)
            return
        value = lookup(key)
        default = field_default(f) if value is MISSING else value
        rows.append(f"| `{key}` | {type_name(t)} | {show(default)} | {allowed(t)} | {cell(m)} |")

    def optimizer_rows(prefix: str, rows: list[str]) -> None:
        seen: dict[str, list] = {}
        for name, sub in schema_module.OPTIMIZER_SCHEMAS.items():
            hints = typing.get_type_hints(sub)
            for f in fields(sub):
                seen.setdefault(f.name, []).append((str(name), sub, f, hints[f.name]))
        for fname, uses in seen.items():
            key = f"{prefix}.{fname}"
            notes = [(opt, text.field.get((sub.__name__, fname))) for opt, sub, _, _ in uses]
            notes = [(opt, note) for opt, note in notes if note]
            m = notes[0][1] if len(notes) == 1 else "; ".join(f"{note} ({opt})" for opt, note in notes)
            if not m:
                missing.append(key)
            defaults = " · ".join(f"{show(field_default(f))} ({opt})" for opt, _, f, _ in uses)
            if len(uses) < len(schema_module.OPTIMIZER_SCHEMAS):
                defaults += " only"
            rows.append(f"| `{key}` | {type_name(uses[0][3])} | {defaults} | {allowed(uses[0][3])} | {cell(m)} |")

    top = schema_module.Config
    hints = typing.get_type_hints(top)
    current: list[str] | None = None
    for f in fields(top):
        heading = text.section.get((top.__name__, f.name))
        if heading is not None or current is None:
            title, _, note = (heading or "Keys").partition(":")
            current = []
            sections.append((title.strip(), note.strip(), current))
        emit(top, f, hints[f.name], f.name, current)

    if missing:
        raise MissingComment(
            f"{SCHEMA_PY.relative_to(ROOT)}: no comment for {', '.join(missing)}: give each key a trailing "
            f"comment saying what it means (the manual's configuration reference is built from them)")

    out = []
    for title, note, rows in sections:
        slug = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")
        out.append(f"### {title} {{#keys-{slug}}}\n")
        if note:
            out.append(cell(note[0].upper() + note[1:]) + "\n")
        out.append("| key | type | default | allowed | meaning |\n| --- | --- | --- | --- | --- |")
        out.extend(rows)
        out.append("")
    return "\n".join(out)


# --- the config groups ------------------------------------------------------------------------

def header_comment(path: Path) -> str:
    """The first paragraph of a config file's leading comment (without Hydra's `@package` line)."""
    lines = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        text = line.lstrip("#").strip()
        if text.startswith("@package"):
            continue
        if not text:
            if lines:
                break
            continue
        lines.append(text)
    return " ".join(lines)


def sets(path: Path) -> str:
    """What an option without a header comment sets, as `key: value`."""
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    return ", ".join(f"`{k}: {v}`" for k, v in data.items() if k not in ("defaults", "hydra"))


def swept(path: Path) -> str:
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    params = ((data.get("hydra") or {}).get("sweeper") or {}).get("params") or {}
    return "; ".join(f"`{k}={v}`" for k, v in params.items())


def groups_markdown() -> str:
    defaults = yaml.safe_load((CONF / "config.yaml").read_text(encoding="utf-8"))["defaults"]
    chosen = {k: v for d in defaults if isinstance(d, dict) for k, v in d.items() if not k.startswith("override ")}
    folders = sorted((p for p in CONF.iterdir() if p.is_dir()), key=lambda p: (
        GROUP_ORDER.index(p.name) if p.name in GROUP_ORDER else len(GROUP_ORDER), p.name))
    out = []
    for folder in folders:
        group = folder.name
        default = chosen.get(group)
        how = f"`{group}=OPTION`, default `{default}`" if default else f"`+{group}=OPTION` (with `-m`), none by default"
        out.append(f"### `{group}` {{#group-{group}}}\n\n{GROUP_MEANING.get(group, '').capitalize() or 'Options'}: {how}.\n")
        out.append("| option | what it is |" + (" sweeps |" if group in ("sweep", "search") else "")
                   + "\n| --- | --- |" + (" --- |" if group in ("sweep", "search") else ""))
        for path in sorted(folder.glob("*.yaml")):
            what = header_comment(path) or sets(path)
            row = f"| `{path.stem}`{' (default)' if path.stem == default else ''} | {cell(what)} |"
            if group in ("sweep", "search"):
                row += f" {cell(swept(path))} |"
            out.append(row)
        out.append("")
    return "\n".join(out)


# --- the MkDocs hook --------------------------------------------------------------------------

def composed_defaults() -> dict:
    """The default config as a command composes it (config.yaml's groups over the schema), unresolved."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3", job_name="docs"):
            cfg = compose(config_name="config")
        return OmegaConf.to_container(cfg, resolve=False, enum_to_str=True)
    finally:
        GlobalHydra.instance().clear()


def build(source: str | None = None) -> tuple[str, str]:
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))  # this checkout's nst, not another installed copy
    from nst import schema

    text = SchemaText(SCHEMA_PY.read_text(encoding="utf-8") if source is None else source)
    return reference_markdown(schema, text, composed_defaults()), groups_markdown()


_cache: dict[str, tuple[str, str]] = {}


def on_page_markdown(markdown: str, page, config, files) -> str:
    if REFERENCE_MARKER not in markdown and GROUPS_MARKER not in markdown:
        return markdown
    from mkdocs.exceptions import PluginError

    if "built" not in _cache:
        try:
            _cache["built"] = build()
        except MissingComment as e:
            raise PluginError(str(e)) from None
    reference, groups = _cache["built"]
    for marker, text in ((REFERENCE_MARKER, reference), (GROUPS_MARKER, groups)):
        end = marker.replace("<!-- ", "<!-- /")
        closed = end in markdown
        block = re.compile(re.escape(marker) + r".*?" + re.escape(end), re.S) if closed else re.compile(re.escape(marker))
        markdown = block.sub(lambda _, text=text: text, markdown)
    return markdown


def on_pre_build(config) -> None:
    _cache.clear()  # each build (and each rebuild of `mkdocs serve`) reads the schema as it is now
