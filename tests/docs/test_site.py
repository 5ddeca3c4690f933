"""The documentation site builds with ``mkdocs build --strict`` (a broken link, anchor, page or
API reference fails it), and no link a reader follows leaves the repository."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TOOLS = ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python")
LINK = re.compile(r"\]\(([^)\s]+)[^)]*\)")


def _pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


@pytest.mark.e2e
def test_site_builds_strictly(tmp_path):
    missing = [name for name in TOOLS if importlib.util.find_spec(name.split(".")[0]) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed: bash scripts/setup.sh --dev installs the site's tools")
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"), "-d", str(site)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, f"mkdocs build --strict failed:\n{done.stdout[-3000:]}{done.stderr[-5000:]}"
    for page in ("reference/cli", "reference/config", "reference/api", "changelog"):
        assert (site / page / "index.html").is_file(), page
    api = (site / "reference" / "api" / "index.html").read_text(encoding="utf-8")
    assert 'id="dsmd.load_student"' in api and 'id="dsmd.config.RunConfig"' in api
    assert "Changelog" in (site / "changelog" / "index.html").read_text(encoding="utf-8")


@pytest.mark.parametrize("page", _pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_link_leaves_the_repository(page):
    text = page.read_text(encoding="utf-8")
    assert "../shared" not in text, f"{page.name} points to ../shared, outside the repository"
    inside = page.parent == ROOT  # the README may link into docs/; a page only within docs/
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        resolved = (page.parent / target.split("#")[0]).resolve()
        root = ROOT if inside else ROOT / "docs"
        assert resolved.is_relative_to(root), f"{page.relative_to(ROOT)}: the link {target} leaves {root.name}/"
