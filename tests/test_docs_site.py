"""The documentation site builds strictly (`make docs`): a broken link or anchor, a page missing
from mkdocs.yml's nav, or a missing page fails the build; and the README's links into it hold."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# A relative Markdown link: [text](target), target without a scheme.
LINK = re.compile(r"\[[^\]]*\]\((?![a-z]+:)([^)\s]+)\)")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site, built as `make docs` builds it, into a directory of its own."""
    site_dir = tmp_path_factory.mktemp("site")
    build = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site_dir)],
        cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    if build.returncode != 0:
        pytest.fail(f"mkdocs build --strict failed:\n{build.stdout}{build.stderr}", False)
    return site_dir


def test_the_site_builds_strictly(site: Path) -> None:
    assert (site / "index.html").is_file()
    assert (site / "operator" / "bad-input.html").is_file()


def test_the_readme_links_into_the_site_hold(site: Path) -> None:
    """Every relative link of README.md names a file of the checkout, and an anchor into a docs
    page is one the built page has."""
    broken = []
    for target in LINK.findall((ROOT / "README.md").read_text()):
        path, _, anchor = target.partition("#")
        if not (ROOT / path).exists():
            broken.append(target)
        elif anchor and path.startswith("docs/") and path.endswith(".md"):
            page = site / Path(path).relative_to("docs").with_suffix(".html")
            if f'id="{anchor}"' not in page.read_text():
                broken.append(target)
    assert broken == [], f"README.md links to what does not exist: {broken}"
