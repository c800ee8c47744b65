"""`python -m tools.typecheck`: mypy, strict, over the service as it is installed.

The checkout's api/, workflows/ and activities/ are imported as polar_credits.api, .workflows
and .activities (pyproject.toml, package-dir): mypy cannot follow that mapping, so it checks a
tree of links laid out as the installed package, and its messages name the checkout's files."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MAPPED = {"api": "api", "workflows": "workflows", "activities": "activities"}


def link_tree(root: Path) -> Path:
    """`root/polar_credits`, laid out as installed: every entry a link into the checkout."""
    package = root / "polar_credits"
    package.mkdir()
    for entry in (REPO / "polar_credits").iterdir():
        if entry.name != "__pycache__":
            (package / entry.name).symlink_to(entry)
    for name, folder in MAPPED.items():
        (package / name).symlink_to(REPO / folder)
    return package


def main(argv: list[str]) -> int:
    # One place for the tree, laid anew each run: mypy's cache keeps the paths it checked.
    cache = REPO / ".mypy_cache"
    root = cache / "layout"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    package = link_tree(root)
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(REPO / "pyproject.toml"),
         "--cache-dir", str(cache), *argv, str(package)],
        cwd=REPO, capture_output=True, text=True,
    )
    # Name the checkout's files, not the links: polar_credits/api/x.py is api/x.py.
    output = done.stdout + done.stderr
    prefix = f"{package.relative_to(REPO)}/"
    for name, folder in MAPPED.items():
        output = output.replace(f"{prefix}{name}/", f"{folder}/")
    sys.stdout.write(output.replace(prefix, "polar_credits/"))
    return done.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
