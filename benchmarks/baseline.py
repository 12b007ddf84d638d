"""Another git revision's code beside the working tree, for benchmarks that measure before and after a change
in one run (`--baseline REV`): the same virtualenv and machine, only the project's own code differs."""

from __future__ import annotations

import compileall
import subprocess
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def checkout(rev: str) -> Path:
    """REV's tracked files in a new temporary directory (run them with this virtualenv), compiled to bytecode as
    the image and scripts/setup compile the working tree's: before and after then differ by the code alone."""
    into = Path(tempfile.mkdtemp(prefix=f"baseline-{rev[:12]}-"))
    archive = subprocess.run(["git", "archive", rev], cwd=ROOT, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    compileall.compile_dir(into, quiet=1, workers=0)
    return into
