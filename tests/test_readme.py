"""The README and the manual's pages (docs/*.md), as files in the repository: every file they show or
link to is there, every picture under docs/ (the gallery, docs/ablations, included) is shown on some
page, and every ready sweep has its command on the landing page and in the gallery."""

import re
from pathlib import Path

from conftest import ROOT

DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]
# [text](target) and ![alt](target), without a scheme (http:, mailto:) or an in-page anchor
LOCAL_LINK = re.compile(r"\]\((?![a-z][a-z0-9+.-]*:|#)([^)\s]+)\)")
PICTURE = (".jpg", ".jpeg", ".png", ".gif", ".svg")


def text(page: Path) -> str:
    return page.read_text(encoding="utf-8")


def local_targets() -> dict[str, set[str]]:
    """page -> the repository paths (relative to the root) it links to or shows."""
    out = {}
    for page in PAGES:
        targets = {m.group(1).split("#")[0] for m in LOCAL_LINK.finditer(text(page))}
        root = ROOT.resolve()
        out[page.relative_to(ROOT).as_posix()] = {
            (page.parent / t).resolve().relative_to(root).as_posix() if (page.parent / t).resolve().is_relative_to(root)
            else t for t in targets if t}
    return out


def test_every_local_link_and_picture_exists():
    targets = local_targets()
    assert any(t.startswith("docs/ablations/") for t in targets["README.md"])  # the pattern sees the picture
    assert any(t.startswith("docs/ablations/") for t in targets["docs/ablations.md"])
    missing = sorted(f"{page}: {t}" for page, ts in targets.items() for t in ts if not (ROOT / t).exists())
    assert missing == [], f"links to files that are not in the repository: {missing}"


def test_every_picture_is_shown():
    shown = set().union(*local_targets().values())
    pictures = sorted(p.relative_to(ROOT).as_posix() for p in DOCS.rglob("*") if p.suffix.lower() in PICTURE)
    assert any(p.startswith("docs/ablations/") for p in pictures), "docs/ablations is empty"
    unshown = [p for p in pictures if p not in shown]
    assert unshown == [], f"pictures under docs/ that no page shows: {unshown}"


def test_every_ready_sweep_has_its_command():
    sweeps = sorted(p.stem for p in (ROOT / "nst" / "conf" / "sweep").glob("*.yaml"))
    assert "style_weight" in sweeps
    for page in (ROOT / "README.md", DOCS / "ablations.md"):
        body = text(page)
        missing = [s for s in sweeps if f"+sweep={s} " not in body and f"+sweep={s}`" not in body]
        assert missing == [], f"ready sweeps without a command in {page.relative_to(ROOT)}: {missing}"


def test_the_readme_is_a_landing_page():
    readme = ROOT / "README.md"
    assert readme.stat().st_size <= 15_000, f"README.md is {readme.stat().st_size} bytes; the rest belongs in docs/"
    body = text(readme)
    for command in ("make demo", "make test", "python -m nst.run -m style_weight=", "+sweep=style_weight",
                    "from nst import stylize", "logger=none", "make docs"):
        assert command in body, f"the README lacks {command!r}"
    linked = local_targets()["README.md"]
    unlinked = [p.relative_to(ROOT).as_posix() for p in DOCS.glob("*.md") if p.relative_to(ROOT).as_posix() not in linked]
    assert unlinked == [], f"manual pages the README does not link to: {unlinked}"
