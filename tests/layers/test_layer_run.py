"""Run the layers' programs from an unpacked copy, with an empty environment (no LD_LIBRARY_PATH):
natively for the host's architecture, under qemu-user for the other one (skipped without it)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from layer_support import LOADER, MAJORS, QEMU, Layer, host_arch, pinned_versions, qemu_for
from pglayer.fetch import sysroot

GLIBC = {
    "linux-vdso.so.1",
    "libc.so.6",
    "libm.so.6",
    "libpthread.so.0",
    "libdl.so.2",
    "librt.so.1",
    "libresolv.so.2",
    "ld-linux-x86-64.so.2",
    "ld-linux-aarch64.so.1",
}
PROGRAMS = ("pg_dump", "pg_restore", "pg_dumpall", "psql", "pg_receivewal", "pg_basebackup", "pg_verifybackup")


def programs(major: int) -> tuple[str, ...]:
    """PROGRAMS and, from 17 on, pg_combinebackup (recover from incremental bases)."""
    return PROGRAMS + (("pg_combinebackup",) if major >= 17 else ())


def short_version(major: int) -> str:
    """14.22.0 -> 14.22: what --version prints."""
    return ".".join(pinned_versions()[major].split(".")[:2])


@pytest.mark.parametrize("major", MAJORS)
def test_version_with_empty_environment(layer: Layer, major: int) -> None:
    for program in programs(major):
        proc = layer.run([layer.bin(major, program), "--version"], env={})
        assert proc.returncode == 0, (program, proc.stderr)
        assert proc.stdout.strip() == f"{program} (PostgreSQL) {short_version(major)}"


def parse_ld_list(output: str) -> dict[str, str]:
    """`ld.so --list` lines: 'libfoo.so.1 => /path/libfoo.so.1 (0x...)', '/lib64/ld-linux... (0x...)',
    'linux-vdso.so.1 (0x...)' or, under qemu, a bare '(0x...)' for the vDSO."""
    found = {}
    for raw in output.splitlines():
        line = re.sub(r"\s*\(0x[0-9a-f]+\)$", "", raw.strip())
        if " => " in line:
            name, _, path = line.partition(" => ")
            found[Path(name).name] = path
        elif line:
            found[Path(line).name] = line
    return found


@pytest.mark.parametrize("major", MAJORS)
def test_libraries_come_from_the_layer(layer: Layer, major: int) -> None:
    """ld.so itself lists where every library is loaded from: on a full Debian system, only glibc may
    come from outside the layer (libpq's own RUNPATH decides where libssl comes from, not pg_dump's)."""
    for program in programs(major):
        proc = layer.run([layer.loader, "--list", layer.bin(major, program)], env={})
        assert proc.returncode == 0, proc.stderr
        libs = parse_ld_list(proc.stdout)
        assert "libcrypto.so.3" in libs, proc.stdout
        assert "not found" not in proc.stdout, proc.stdout
        for name, path in libs.items():
            if name in GLIBC:
                continue
            real = Path(os.path.normpath(path))
            assert real.is_relative_to(layer.opt / "pg"), f"{program}: {name} from {path}"
        if program in ("pg_verifybackup", "pg_combinebackup"):  # read backups on disk: no connection, no libpq
            assert "libpq.so.5" not in libs, proc.stdout
            continue
        own = os.path.normpath(libs["libpq.so.5"])
        assert own == str(layer.opt / "pg" / str(major) / "lib" / "libpq.so.5")


def _can_isolate() -> str | None:
    if os.geteuid() != 0:
        return "needs root for chroot"
    if not shutil.which("unshare") or not shutil.which("chroot"):
        return "needs unshare and chroot (util-linux, coreutils)"
    probe = subprocess.run(["unshare", "--mount", "--pid", "--fork", "true"], capture_output=True, check=False)
    if probe.returncode != 0:
        return f"unshare refused: {probe.stderr.decode().strip()}"
    return None


@pytest.fixture(scope="module")
def isolated_roots(layers: dict[str, Layer], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Per architecture: a root holding only Debian's glibc (libc6) and the layer at /opt."""
    reason = _can_isolate()
    if reason:
        pytest.skip(reason)
    roots = {}
    for arch, layer in layers.items():
        root = tmp_path_factory.mktemp(f"chroot-{arch}")
        shutil.copytree(sysroot(arch), root, symlinks=True, dirs_exist_ok=True)
        shutil.copytree(layer.opt, root / "opt", symlinks=True, dirs_exist_ok=True)
        (root / "proc").mkdir(exist_ok=True)
        if arch != host_arch():
            qemu = qemu_for(arch)
            if qemu:
                shutil.copy(qemu, root / "qemu")
        roots[arch] = root
    return roots


def run_isolated(root: Path, arch: str, args: list[str]) -> subprocess.CompletedProcess[str]:
    if arch != host_arch() and not (root / "qemu").exists():
        pytest.skip(f"{arch} programs need {QEMU[arch]} on this {host_arch()} host")
    emulator = ["/qemu"] if arch != host_arch() else []
    # /proc must be there: ld.so reads /proc/self/exe to expand $ORIGIN in the program's RUNPATH.
    command = [
        str(shutil.which("unshare")),
        "--mount",
        "--pid",
        "--fork",
        f"--mount-proc={root / 'proc'}",
        str(shutil.which("chroot")),
        str(root),
        *emulator,
        *args,
    ]
    return subprocess.run(command, env={}, capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.parametrize("arch", ["x86_64", "arm64"])
def test_runs_where_nothing_but_glibc_is_installed(isolated_roots: dict[str, Path], arch: str) -> None:
    """Like Lambda's /opt on Amazon Linux 2023: no libpq, OpenSSL, krb5, readline ... besides ours."""
    root = isolated_roots[arch]
    assert not list(root.glob("lib*/**/libssl.so*")) and not list(root.glob("usr/lib/**/libssl.so*"))
    for major in MAJORS:
        for program in programs(major):
            proc = run_isolated(root, arch, [f"/opt/pg/{major}/bin/{program}", "--version"])
            assert proc.returncode == 0, (major, program, proc.stderr)
            assert re.fullmatch(rf"{program} \(PostgreSQL\) {re.escape(short_version(major))}\n", proc.stdout)
    listing = run_isolated(root, arch, [LOADER[arch], "--list", "/opt/pg/17/bin/psql"])
    assert listing.returncode == 0, listing.stderr
    libs = parse_ld_list(listing.stdout)
    assert libs["libreadline.so.8"] == "/opt/pg/17/bin/../../lib/libreadline.so.8"
    assert libs["libtinfo.so.6"].startswith("/opt/pg/")
