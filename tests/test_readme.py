"""The README's gallery and links: every file it shows or links to is in the repository, every
picture under docs/ablations is shown, and every ready sweep has its command there."""

import re

from conftest import ROOT

README = (ROOT / "README.md").read_text(encoding="utf-8")
# [text](target) and ![alt](target), without a scheme (http:, mailto:) or an in-page anchor
LOCAL_LINK = re.compile(r"\]\((?![a-z][a-z0-9+.-]*:|#)([^)\s]+)\)")


def local_targets() -> set[str]:
    return {m.group(1).split("#")[0] for m in LOCAL_LINK.finditer(README)}


def test_every_local_link_and_picture_exists():
    targets = local_targets()
    assert any(t.startswith("docs/ablations/") for t in targets)  # the pattern sees the gallery
    missing = sorted(t for t in targets if not (ROOT / t).exists())
    assert missing == [], f"README links to files that are not in the repository: {missing}"


def test_every_gallery_picture_is_shown():
    shown = local_targets()
    pictures = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "docs" / "ablations").iterdir())
    assert pictures, "docs/ablations is empty"
    unshown = [p for p in pictures if p not in shown]
    assert unshown == [], f"pictures under docs/ablations that the README does not show: {unshown}"


def test_every_ready_sweep_has_its_command():
    sweeps = sorted(p.stem for p in (ROOT / "nst" / "conf" / "sweep").glob("*.yaml"))
    assert "style_weight" in sweeps
    missing = [s for s in sweeps if f"+sweep={s} " not in README and f"+sweep={s}`" not in README]
    assert missing == [], f"ready sweeps without a command in the README: {missing}"
