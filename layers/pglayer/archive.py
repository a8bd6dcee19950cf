"""The zip: written deterministically (sorted entries, fixed dates and modes, no directories or symlinks),
reused while the fingerprint of its inputs is unchanged; build() ties staging and zipping together."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import tempfile
import zipfile
import zlib
from importlib.metadata import version
from pathlib import Path

from .common import CACHE, DEBS_LOCK, DIST, LAYERS, RDS_CA_LOCK, REPO, VERSIONS_FILE, BuildError, log
from .elf import is_elf
from .stage import patchelf_tool, stage_layer

ZIP_DATE = (1980, 1, 1, 0, 0, 0)


def write_zip(stage: Path, zip_path: Path) -> tuple[int, int]:
    """Deterministic zip of stage/ (arcnames relative to stage). Returns (zipped, unzipped) bytes."""
    files = {p.relative_to(stage).as_posix(): p for p in stage.rglob("*") if not p.is_dir()}
    unzipped = 0
    tmp = zip_path.with_name(zip_path.name + ".tmp")
    with zipfile.ZipFile(tmp, "w") as zf:
        for arcname in sorted(files):
            path = files[arcname]
            if path.is_symlink() or not path.is_file():
                raise BuildError(f"{arcname}: only regular files may go into the layer")
            data = path.read_bytes()
            unzipped += len(data)
            info = zipfile.ZipInfo(arcname, date_time=ZIP_DATE)
            info.create_system = 3  # Unix: external_attr carries the mode
            info.external_attr = (stat.S_IFREG | (0o755 if is_elf(data) else 0o644)) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, data, compresslevel=9)
    os.replace(tmp, zip_path)
    return zip_path.stat().st_size, unzipped


def fingerprint(arch: str, majors: list[int], layout: str, ca_override: Path | None) -> str:
    """Everything a zip depends on: the build code, the pins, the options and the tools' versions."""
    h = hashlib.sha256()
    code = [LAYERS / "build.py", *sorted((LAYERS / "pglayer").glob("*.py"))]
    for path in (*code, VERSIONS_FILE, DEBS_LOCK, RDS_CA_LOCK, REPO / "devstack" / "pgbin.py"):
        h.update(path.read_bytes())
    if ca_override is not None:
        h.update(ca_override.read_bytes())
    tools = [patchelf_tool()[1], zlib.ZLIB_RUNTIME_VERSION, version("pyelftools")]
    h.update(json.dumps([arch, majors, layout, *tools]).encode())
    return h.hexdigest()


def build(
    arch: str,
    majors: list[int],
    out_dir: Path = DIST,
    layout: str = "shared",
    ca_override: Path | None = None,
    force: bool = False,
    update_lock: bool = False,
) -> Path:
    """Build out_dir/pg-clients-<arch>.zip unless it is up to date (see fingerprint); return its path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    zip_path = out_dir / f"pg-clients-{arch}.zip"
    stamp = out_dir / f"pg-clients-{arch}.inputs"
    if not update_lock:
        digest = fingerprint(arch, majors, layout, ca_override)
        if not force and zip_path.exists() and stamp.exists() and stamp.read_text().strip() == digest:
            log(f"{zip_path.relative_to(REPO) if zip_path.is_relative_to(REPO) else zip_path} is up to date")
            return zip_path
    stamp.unlink(missing_ok=True)
    (CACHE / "layers").mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"build-{arch}-", dir=CACHE / "layers") as tmp:
        stage = Path(tmp) / "stage"
        stage.mkdir()
        stage_layer(stage, arch, majors, layout, ca_override, update_lock)
        zipped, unzipped = write_zip(stage, zip_path)
    stamp.write_text(fingerprint(arch, majors, layout, ca_override) + "\n")
    log(
        f"{zip_path.name}: {zipped / 1e6:.1f} MB zipped, {unzipped / 1e6:.1f} MB unzipped "
        f"(majors {','.join(map(str, majors))}, layout {layout})"
    )
    return zip_path
