"""Paths, pin files, architecture tables and small helpers shared by the other modules."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

LAYERS = Path(__file__).resolve().parent.parent
REPO = LAYERS.parent
CACHE = REPO / ".cache"
DIST = LAYERS / "dist"
VERSIONS_FILE = LAYERS / "pg-versions.json"
DEBS_LOCK = LAYERS / "debs.lock.json"
RDS_CA_LOCK = LAYERS / "rds-ca.lock.json"

ARCHES = ("x86_64", "arm64")
DEB_ARCH = {"x86_64": "amd64", "arm64": "arm64"}
TRIPLET = {"x86_64": "x86_64-linux-gnu", "arm64": "aarch64-linux-gnu"}
ELF_MACHINE = {"x86_64": "EM_X86_64", "arm64": "EM_AARCH64"}  # e_machine as pyelftools names it
# pg_receivewal and pg_basebackup: the WAL stream and base backups (chalicelib.pitr); pg_verifybackup: recover.
CLIENT_PROGRAMS = ("pg_dump", "pg_dumpall", "pg_restore", "psql", "pg_receivewal", "pg_basebackup", "pg_verifybackup")
# Programs a major has only from some release on: pg_combinebackup (recover from incremental bases) since 17.
PROGRAMS_SINCE = {"pg_combinebackup": 17}
LIBPQ = "libpq.so.5"
LAYOUTS = ("shared", "per-major")

# What the Lambda python3.12+ runtimes (Amazon Linux 2023, glibc 2.34) provide: never bundled.
GLIBC_FAMILY_COMMON = frozenset(
    {"libc.so.6", "libm.so.6", "libpthread.so.0", "libdl.so.2", "librt.so.1", "libresolv.so.2"}
)
DYNAMIC_LOADER = {"x86_64": "ld-linux-x86-64.so.2", "arm64": "ld-linux-aarch64.so.1"}
MAX_GLIBC = (2, 34)

BUNDLE_NAME = "rds-ca-bundle.pem"


class BuildError(Exception):
    pass


def log(msg: str) -> None:
    print(f"[layers] {msg}", file=sys.stderr, flush=True)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def glibc_family(arch: str) -> frozenset[str]:
    return GLIBC_FAMILY_COMMON | {DYNAMIC_LOADER[arch]}


def load_json(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def write_json(path: Path, data: object) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


def pinned_majors() -> list[int]:
    return sorted(int(m) for m in load_json(VERSIONS_FILE)["majors"])


def client_programs(major: int) -> tuple[str, ...]:
    """The programs the layer carries for one major: CLIENT_PROGRAMS and those of PROGRAMS_SINCE it has."""
    return CLIENT_PROGRAMS + tuple(p for p, since in PROGRAMS_SINCE.items() if major >= since)
