"""The manual (docs/, mkdocs.yml) and the README as a user meets them: the site builds in strict mode
(no broken link, anchor or image, no page left out of the nav), its configuration reference is
generated from the schema and names every key, every command the pages show composes (or fails with
the error the page shows), the README's Python runs at a tiny size, and the built site opens in a real
headless Chromium with every picture of the gallery loaded."""

from __future__ import annotations

import ast
import importlib.util
import re
import shlex
import shutil
import subprocess
import sys
import typing
from dataclasses import fields, is_dataclass
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, nst_env

DOCS = ROOT / "docs"
PAGES = ["index.md", "getting-started.md", "configuration.md", "sweeps-and-reports.md", "ablations.md", "quality.md",
         "scaling-out.md", "wandb.md", "api.md", "speed.md", "reliability.md", "judging.md", "development.md",
         "examples/stylize.ipynb"]
MKDOCS = [sys.executable, "-m", "mkdocs"]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
needs_browser = pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="chromium and chromedriver are not installed")


def texts() -> dict[str, str]:
    """README.md and every Markdown page of the manual, by path relative to the repository."""
    paths = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]
    return {p.relative_to(ROOT).as_posix(): p.read_text(encoding="utf-8") for p in paths}


def _hook():
    spec = importlib.util.spec_from_file_location("config_reference", DOCS / "hooks" / "config_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- the site ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The manual built once for this module, as `make docs` builds it (strict)."""
    out = tmp_path_factory.mktemp("site") / "site"
    env = {**nst_env(out.parent), "NO_MKDOCS_2_WARNING": "1", "PYTHONPATH": str(ROOT)}
    r = subprocess.run([*MKDOCS, "build", "--strict", "--site-dir", str(out)], cwd=ROOT, env=env,
                       check=False, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"mkdocs build --strict failed:\n{r.stdout[-3000:]}\n{r.stderr[-6000:]}"
    return out


def test_the_pages_are_the_manual_and_all_in_the_nav(site):
    nav = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))["nav"]
    in_nav = [next(iter(entry.values())) for entry in nav]
    assert sorted(in_nav) == sorted(PAGES)
    on_disk = sorted(p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*") if p.suffix in (".md", ".ipynb"))
    assert on_disk == sorted(PAGES), "a page on disk that the nav lacks, or the other way round"
    for page in PAGES:
        html = site / Path(page).with_suffix(".html")
        assert html.is_file(), f"{page} was not built"
    # offline: no page loads a script, style sheet, font or picture from elsewhere
    remote = re.compile(r"<(?:script|img|link|iframe)\b[^>]*\b(?:src|href)=\"(?:https?:)?//[^\"]*\"")
    fetched = sorted({m.group(0) for p in site.rglob("*.html") for m in remote.finditer(p.read_text(encoding="utf-8"))})
    assert fetched == [], fetched
    # mkdocstrings rendered the API from the docstrings
    api = (site / "api.html").read_text(encoding="utf-8")
    assert "stylize_batch" in api and "nst.api" in api


def test_strict_mode_catches_a_missing_picture(tmp_path):
    """The validation the site relies on is really on: the project's own settings, on a copy of the
    pages whose gallery pictures are gone, fail the build and name the picture."""
    copy = tmp_path / "repo"
    shutil.copytree(DOCS, copy / "docs", ignore=shutil.ignore_patterns("ablations", "hooks", "examples", "api.md"))
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))
    config["plugins"] = ["search"]  # the API page and the notebook need this checkout's code: left out
    config["nav"] = [e for e in config["nav"] if next(iter(e.values())) not in ("api.md", "examples/stylize.ipynb")]
    config.pop("hooks")
    (copy / "docs" / "configuration.md").write_text("# Configuration\n", encoding="utf-8")
    (copy / "mkdocs.yml").write_text(yaml.safe_dump(config), encoding="utf-8")
    env = {**nst_env(tmp_path), "NO_MKDOCS_2_WARNING": "1"}
    r = subprocess.run([*MKDOCS, "build", "--strict", "--site-dir", str(tmp_path / "out")], cwd=copy, env=env,
                       check=False, capture_output=True, text=True, timeout=600)
    assert r.returncode != 0
    assert "ablations/style_weight.jpg" in r.stdout + r.stderr


def _schema_keys() -> set[str]:
    from nst import schema

    keys: set[str] = set()

    def walk(cls, prefix: str) -> None:
        hints = typing.get_type_hints(cls)
        for f in fields(cls):
            t, _ = schema.unwrap_optional(hints[f.name])
            if t is schema.OptimizerConf:
                for sub in schema.OPTIMIZER_SCHEMAS.values():
                    walk(sub, f"{prefix}{f.name}.")
            elif is_dataclass(t):
                walk(t, f"{prefix}{f.name}.")
            else:
                keys.add(prefix + f.name)

    walk(schema.Config, "")
    return keys


def test_the_configuration_reference_lists_every_schema_key_and_group_option(site):
    html = (site / "configuration.html").read_text(encoding="utf-8")
    assert "<!-- config-reference -->" not in html and "config-reference" not in html.split("<article", 1)[-1][:200]
    rows = set(re.findall(r"<tr>\s*<td><code>([^<]+)</code></td>", html))
    missing = sorted(_schema_keys() - rows)
    assert missing == [], f"keys of nst/schema.py missing from the configuration reference: {missing}"
    conf = ROOT / "nst" / "conf"
    for group in ("model", "layers", "optimizer", "init", "logger", "recipe", "sweep", "search"):
        assert f'id="group-{group}"' in html
        for option in (p.stem for p in (conf / group).glob("*.yaml")):
            assert f"<code>{option}</code>" in html, f"config group {group}: option {option} not listed"


def test_a_schema_key_without_its_comment_fails_the_reference():
    hook = _hook()
    source = (ROOT / "nst" / "schema.py").read_text(encoding="utf-8")
    line = next(x for x in source.splitlines() if x.strip().startswith("tv_weight:"))
    bare = line.split("#")[0].rstrip()
    with pytest.raises(hook.MissingComment, match=r"nst/schema.py: no comment for tv_weight\b"):
        hook.build(source.replace(line, bare))
    reference, groups = hook.build(source)  # the schema as it is: every key has its sentence
    assert "| `tv_weight` | float |" in reference and "### `sweep`" in groups


# --- the commands the pages show --------------------------------------------------------------

FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)
SPAN = re.compile(r"`([^`\n]+)`")
NST = re.compile(r"^(?:python -m nst(?:\.run)?|nst)(?=\s|$)(?!\s+judge\b)")  # `nst judge`: tests/test_judge.py
PLACEHOLDER = re.compile(r"<[^>]*>|…|\.\.\.|\[--|\[size=")


def shell_lines(text: str):
    """(command, expected error or None) for every shell line the page shows: the lines of its
    non-Python code blocks (a `$ ` prompt followed by `nst: error: ...` is a refused command) and
    its inline code spans."""
    out = []
    for lang, body in FENCE.findall(text):
        if lang in ("python", "py", "yaml", "json"):
            continue
        lines = body.replace("\\\n", " ").splitlines()
        for i, line in enumerate(lines):
            expected = None
            if line.startswith("$ "):
                line = line[2:]
                after = lines[i + 1] if i + 1 < len(lines) else ""
                expected = after[len("nst: error: "):] if after.startswith("nst: error: ") else None
            out.append((line.strip(), expected))
    prose = FENCE.sub("", text)
    out += [(m.group(1).strip(), None) for m in SPAN.finditer(prose)]
    return out


def documented_commands():
    """(page, command, expected error) for every `python -m nst.run` / `nst` command shown."""
    found = []
    for page, text in texts().items():
        for line, expected in shell_lines(text):
            make = re.match(r"^make (demo|ablations) (DEMO|ABLATION)_ARGS=\"([^\"]+)\"", line)
            if make:  # the Makefile passes these to python -m nst.run
                line = f"python -m nst.run {'-m +sweep=style_weight ' if make.group(1) == 'ablations' else ''}{make.group(3)}"
            if NST.match(line) and not PLACEHOLDER.search(line):
                found.append((page, line, expected))
    return found


def _argv(line: str) -> list[str]:
    words = shlex.split(line, comments=True)
    words = [w.replace("$HOME", str(Path.home())) for w in words]
    return words[3:] if words[:3] == ["python", "-m", "nst.run"] or words[:3] == ["python", "-m", "nst"] else words[1:]


def _check(argv: list[str], validated: set[tuple[str, ...]]) -> int:
    """What the command's up-front check does before any trial runs, short of reading the image files
    (the pages use placeholders such as my_photo.jpg) and claiming a sweep folder: the command line
    parsed and expanded into its trials, and the trials composed, typed and validated. Of a sweep's
    trials, those that between them carry every value the command line gives (tests/test_config.py
    validates every trial of every ready sweep file); a trial validated for another command is not
    composed again."""
    from nst import compose
    from nst.errors import InputError

    multirun, overrides, leave = compose.split_argv(argv)
    if leave:
        return 0
    ready = [o for o in overrides if o.startswith("+sweep=")]
    if ready:
        # A ready sweep: its name and -m checked here; every trial of every sweep file composes and
        # validates in tests/test_config.py, so what the page adds is the rest of its command line.
        name = ready[0].split("=", 1)[1]
        if not (compose.CONF_DIR / "sweep" / f"{name}.yaml").is_file():
            raise InputError("+sweep", f"no ready sweep {name!r}")
        if not multirun:
            raise InputError("+sweep", "a ready sweep needs -m")
        overrides = [o for o in overrides if o not in ready]
        multirun = any("," in o.split("=", 1)[-1] for o in overrides)
    trials = compose.expand_trials(overrides, multirun)
    swept = {o.split("=", 1)[0] for o in overrides if "," in o.split("=", 1)[-1] and not o.startswith("'")}
    covered: set[str] = set()
    for i, trial in enumerate(trials):
        new = {o for o in trial if o.split("=", 1)[0] in swept} - covered
        if (i == 0 or new) and tuple(trial) not in validated:
            compose.settings_for(trial)
            validated.add(tuple(trial))
        covered |= new
    return len(trials)


def _gpu_only(error) -> bool:
    import torch

    return not torch.cuda.is_available() and error.key in ("device", "precision")


def test_every_command_the_pages_show_composes():
    from nst.errors import InputError

    commands = documented_commands()
    pages = {page for page, _, _ in commands}
    assert {"README.md", "docs/getting-started.md", "docs/ablations.md", "docs/scaling-out.md"} <= pages
    assert len(commands) >= 40, f"only {len(commands)} commands found: the pattern misses the pages' commands"
    failures, refused = [], 0
    seen: dict[str, str | None] = {}
    validated: set[tuple[str, ...]] = set()
    for page, line, expected in commands:
        if line in seen and seen[line] == expected:
            continue
        if expected is not None and expected.startswith("hydra.sweep.dir:"):
            continue  # refused for what the folder already holds, not for the command: tests/test_sweep_folder.py
        seen[line] = expected
        try:
            n = _check(_argv(line), validated)
        except InputError as e:
            if expected is not None and expected.startswith(f"{e.key}:"):
                refused += 1
                continue
            if expected is None and _gpu_only(e):
                continue
            failures.append(f"{page}: `{line}`: {e}")
            continue
        if expected is not None:
            failures.append(f"{page}: `{line}` is shown refused ({expected}) but composes")
        elif n == 0 and "--" not in line and " -sc" not in line and " -c " not in line:
            failures.append(f"{page}: `{line}`: no trial")
    assert failures == [], "\n".join(failures)
    assert refused >= 2  # the pages' examples of refused commands are checked too


def test_every_make_target_and_script_flag_the_pages_show_exists():
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    targets = set(re.findall(r"^([a-z][\w-]*):", makefile, re.MULTILINE))
    problems, checked = [], 0
    for page, text in texts().items():
        for line, _ in shell_lines(text):
            for target in re.findall(r"(?:^|&& )make ([a-z][\w-]*)", line):
                checked += 1
                if target not in targets:
                    problems.append(f"{page}: `make {target}`: no such target")
            script = re.match(r"^(?:[A-Z_]+=\S+ )*python (benchmarks/\w+\.py)|^python -m (nst\.report)", line)
            if script:
                path = ROOT / (script.group(1) or "nst/report/__init__.py")
                if not path.is_file():
                    problems.append(f"{page}: `{line}`: no {path.relative_to(ROOT)}")
                    continue
                source = path.read_text(encoding="utf-8")
                for flag in re.findall(r"(?<![\w-])(--[a-z][\w-]*)", line):
                    checked += 1
                    if f'"{flag}"' not in source and f"'{flag}'" not in source:
                        problems.append(f"{page}: `{line}`: {path.name} takes no {flag}")
    assert checked >= 20
    assert problems == [], "\n".join(problems)


def test_the_readme_python_runs_at_a_tiny_size(tmp_path):
    """The README's Python, as a user pastes it, at 32 px and 2 evaluations."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = [body for lang, body in FENCE.findall(readme) if lang == "python"]
    assert blocks, "the README shows no Python"
    for body in blocks:
        ast.parse(body)
        tiny = re.sub(r"\bsize=\d+", "size=32", re.sub(r"\bsteps=\d+", "steps=2", body))
        r = subprocess.run([sys.executable, "-c", tiny], cwd=tmp_path, check=False, capture_output=True, text=True, timeout=600,
                           env={**nst_env(tmp_path), "PYTHONPATH": str(ROOT)})
        assert r.returncode == 0, r.stderr[-3000:]
    for saved in re.findall(r"\.save\(\"([^\"]+)\"\)", "".join(blocks)):
        assert (tmp_path / saved).stat().st_size > 0


# --- the site in a real browser ---------------------------------------------------------------

@needs_browser
def test_the_site_opens_in_chromium_with_every_picture(site, tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                 "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)

    def pictures() -> list[tuple[str, bool]]:
        driver.execute_script("document.querySelectorAll('img').forEach(i => i.loading = 'eager')")
        return driver.execute_script(
            "return Promise.all(Array.from(document.querySelectorAll('article img')).map(i => i.decode()"
            ".then(() => [i.getAttribute('src'), i.naturalWidth > 0], () => [i.getAttribute('src'), false])))")

    try:
        driver.get((site / "ablations.html").as_uri())
        shown = pictures()
        gallery = sorted(p.name for p in (DOCS / "ablations").iterdir())
        assert sorted(Path(src).name for src, _ in shown) == gallery
        assert [src for src, ok in shown if not ok] == []

        for page in ("index.html", "quality.html", "sweeps-and-reports.html"):
            driver.get((site / page).as_uri())
            shown = pictures()
            assert shown and [src for src, ok in shown if not ok] == [], page

        driver.get((site / "configuration.html").as_uri())
        keys = [c.text for c in driver.find_elements(By.CSS_SELECTOR, "article table td:first-child code")]
        assert "style_weight" in keys and "optimizer.lr" in keys and "wandb.mode" in keys
        assert driver.find_element(By.ID, "group-sweep").is_displayed()
    finally:
        driver.quit()
