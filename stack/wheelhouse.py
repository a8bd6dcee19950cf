#!/usr/bin/env python3
"""Fill a wheelhouse so that `make package WHEELHOUSE=DIR` (and tests/stack) package without an index.

    .venv/bin/python -m stack.wheelhouse .cache/wheelhouse

Chalice resolves requirements.txt with `pip download` twice: once for the packaging machine, then, for
packages without a wheel for the Lambda platform, `--platform manylinux..._<machine> --only-binary`.
The wheelhouse therefore holds the wheels for this machine and for both Lambda architectures.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MACHINES = ("x86_64", "aarch64")
GLIBC_TAGS = ("manylinux2014", "manylinux_2_28", "manylinux_2_34")  # Lambda's python3.12: glibc 2.34


def fill(directory: Path, requirements: Path = REPO / "requirements.txt") -> None:
    directory.mkdir(parents=True, exist_ok=True)
    pip = [sys.executable, "-m", "pip", "download", "--quiet", "-r", str(requirements), "-d", str(directory)]
    subprocess.run(pip, check=True)
    for machine in MACHINES:
        platforms = [arg for tag in GLIBC_TAGS for arg in ("--platform", f"{tag}_{machine}")]
        subprocess.run(
            [*pip, "--only-binary=:all:", *platforms, "--implementation", "cp", "--python-version", "3.12"], check=True
        )


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    fill(Path(sys.argv[1]))
    print(f"wheelhouse ready: {sys.argv[1]}")
