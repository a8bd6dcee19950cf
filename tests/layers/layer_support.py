"""Helpers for the PostgreSQL client layer tests: running layers/build.py, unpacking a zip where a path
looks like /opt, and running the programs of either architecture (natively or under qemu-user)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from pglayer.fetch import sysroot

from devstack import pgbin

REPO = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO / "layers" / "build.py"
ARCHES = ("x86_64", "arm64")
QEMU = {"x86_64": "qemu-x86_64-static", "arm64": "qemu-aarch64-static"}
LOADER = {"x86_64": "/lib64/ld-linux-x86-64.so.2", "arm64": "/lib/ld-linux-aarch64.so.1"}


def pinned_versions() -> dict[int, str]:
    data = json.loads((REPO / "layers" / "pg-versions.json").read_text())
    return {int(m): pin["version"] for m, pin in data["majors"].items()}


MAJORS = sorted(pinned_versions())


def run_build(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, str(BUILD_SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        check=False,
    )
    if proc.returncode != 0:
        pytest.fail(f"layers/build.py {' '.join(args)} failed:\n{proc.stderr}")
    return proc


def unpack(zip_path: Path, dest: Path) -> Path:
    """Unpack like Lambda does (Unix modes kept) into dest/opt; return dest/opt."""
    opt = dest / "opt"
    with zipfile.ZipFile(zip_path) as zf:
        for info in zf.infolist():
            target = opt / info.filename
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(zf.read(info))
            os.chmod(target, (info.external_attr >> 16) & 0o777)
    return opt


def host_arch() -> str:
    return pgbin.host_arch()


def qemu_for(arch: str) -> str | None:
    return None if arch == host_arch() else shutil.which(QEMU[arch])


@dataclass
class Layer:
    arch: str
    zip_path: Path
    opt: Path  # plays /opt: holds pg/

    @property
    def native(self) -> bool:
        return self.arch == host_arch()

    def bin(self, major: int, program: str) -> Path:
        return self.opt / "pg" / str(major) / "bin" / program

    @property
    def loader(self) -> str:
        """The dynamic loader's path as the host sees it (qemu's -L maps only the guest's own file
        accesses, not the program it is asked to run)."""
        if self.native:
            return LOADER[self.arch]
        return str(sysroot(self.arch) / LOADER[self.arch].lstrip("/"))

    def prefix(self) -> list[str]:
        """Command prefix to execute this layer's programs on this host."""
        if self.native:
            return []
        qemu = qemu_for(self.arch)
        if qemu is None:
            pytest.skip(
                f"{self.arch} programs need {QEMU[self.arch]} on this {host_arch()} host "
                "(apt-get install qemu-user-static)"
            )
        return [qemu, "-L", str(sysroot(self.arch))]

    def run(
        self, args: list[str | Path], env: dict[str, str] | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.prefix(), *map(str, args)],
            env=env if env is not None else {},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
