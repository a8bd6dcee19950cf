"""Static checks of every ELF file in the layers, read with pyelftools independently of the build's own
checks (layers/pglayer/elf.py): libraries resolve inside the layer the way glibc's loader looks them up,
and nothing needs more than the glibc 2.34 of Amazon Linux 2023."""

from __future__ import annotations

import glob
import os
import re
import shutil
from pathlib import Path

import pytest
from elftools.elf.dynamic import DynamicSegment
from elftools.elf.elffile import ELFFile
from elftools.elf.gnuversions import GNUVerDefSection, GNUVerNeedSection
from layer_support import Layer
from pglayer import elf as layer_elf
from pglayer.fetch import wheel_path
from pglayer.stage import extract_clients

from devstack import pgbin

RUNTIME_GLIBC = {
    "libc.so.6",
    "libm.so.6",
    "libpthread.so.0",
    "libdl.so.2",
    "librt.so.1",
    "libresolv.so.2",
}
LOADERS = {"x86_64": "ld-linux-x86-64.so.2", "arm64": "ld-linux-aarch64.so.1"}
MACHINES = {"x86_64": "EM_X86_64", "arm64": "EM_AARCH64"}


class Info:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.needed: list[str] = []
        self.runpath: str | None = None
        self.rpath: str | None = None
        self.verneed: dict[str, set[str]] = {}
        self.verdef: set[str] = set()
        with open(path, "rb") as f:
            elf = ELFFile(f)
            self.machine = elf["e_machine"]
            for segment in elf.iter_segments():
                if isinstance(segment, DynamicSegment):
                    for tag in segment.iter_tags():
                        if tag.entry.d_tag == "DT_NEEDED":
                            self.needed.append(tag.needed)
                        elif tag.entry.d_tag == "DT_RUNPATH":
                            self.runpath = tag.runpath
                        elif tag.entry.d_tag == "DT_RPATH":
                            self.rpath = tag.rpath
            for section in elf.iter_sections():
                if isinstance(section, GNUVerNeedSection):
                    for verneed, auxes in section.iter_versions():
                        self.verneed.setdefault(verneed.name, set()).update(a.name for a in auxes)
                elif isinstance(section, GNUVerDefSection):
                    for _verdef, auxes in section.iter_versions():
                        self.verdef.add(next(iter(auxes)).name)


def elf_files(root: Path) -> list[Path]:
    out = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        with open(path, "rb") as f:
            if f.read(4) == b"\x7fELF":
                out.append(path)
    return out


def glibc_too_new(info: Info, limit: tuple[int, int] = (2, 34)) -> list[str]:
    bad = []
    for file, names in info.verneed.items():
        for name in names:
            m = re.fullmatch(r"GLIBC_(\d+)\.(\d+)(\.\d+)?", name)
            if name == "GLIBC_PRIVATE" or (m and (int(m[1]), int(m[2])) > limit):
                bad.append(f"{file}:{name}")
    return bad


def resolution_problems(root: Path, arch: str) -> list[str]:
    """Resolve every DT_NEEDED the way ld.so does for a DT_RUNPATH object: through the object's own
    RUNPATH only (not its loader's), then the system. Inside a layer, anything but glibc must be found
    through RUNPATH, inside the layer."""
    problems = []
    provided = RUNTIME_GLIBC | {LOADERS[arch]}
    for path in elf_files(root):
        rel = path.relative_to(root)
        info = Info(path)
        if info.machine != MACHINES[arch]:
            problems.append(f"{rel}: machine {info.machine}")
        if info.rpath is not None:
            problems.append(f"{rel}: DT_RPATH {info.rpath}")
        dirs = [
            Path(os.path.normpath(d.replace("$ORIGIN", str(path.parent)))) for d in (info.runpath or "").split(":") if d
        ]
        resolved = {}
        for needed in info.needed:
            if needed in provided:
                continue
            hit = next((d / needed for d in dirs if d.is_relative_to(root) and (d / needed).is_file()), None)
            if hit is None:
                problems.append(f"{rel}: {needed} not found through RUNPATH {info.runpath!r}")
            else:
                resolved[needed] = hit
        for file, versions in info.verneed.items():
            if file in resolved:
                missing = versions - Info(resolved[file]).verdef
                if missing:
                    problems.append(f"{rel}: {file} does not define {sorted(missing)}")
        problems.extend(f"{rel}: needs {v}" for v in glibc_too_new(info))
    return problems


def test_every_needed_library_resolves_inside_the_layer(layer: Layer) -> None:
    files = elf_files(layer.opt / "pg")
    assert len(files) >= 5 * 5 + 13
    assert resolution_problems(layer.opt / "pg", layer.arch) == []


def test_runpaths_are_relative(layer: Layer) -> None:
    for path in elf_files(layer.opt / "pg"):
        info = Info(path)
        assert info.runpath, path
        assert all(d.startswith("$ORIGIN") for d in info.runpath.split(":")), (path, info.runpath)


def test_no_symbol_needs_glibc_newer_than_2_34(layer: Layer) -> None:
    seen = set()
    for path in elf_files(layer.opt / "pg"):
        info = Info(path)
        assert glibc_too_new(info) == [], path
        seen |= {v for file, names in info.verneed.items() if file == "libc.so.6" for v in names}
    assert "GLIBC_2.34" in seen  # the limit is reached: the check is looking at real data


def test_checker_flags_the_unpatched_wheel(tmp_path: Path) -> None:
    """The wheel's own libpq has RUNPATH /opt/postgresql/lib: its libssl would come from the system."""
    arch = pgbin.host_arch()
    whl, _version, _digest = wheel_path(17, arch)
    extract_clients(whl, tmp_path / "pg" / "17")
    for lib in (
        "libssl.so.3",
        "libcrypto.so.3",
        "libz.so.1",
        "libzstd.so.1",
        "liblz4.so.1",
        "libgssapi_krb5.so.2",
        "libreadline.so.8",
    ):
        shutil.copyfile(tmp_path / "pg" / "17" / "lib" / "libpq.so.5", tmp_path / "pg" / "17" / "lib" / lib)
    problems = resolution_problems(tmp_path / "pg", arch)
    assert any("lib/libpq.so.5: libssl.so.3 not found through RUNPATH '/opt/postgresql/lib'" in p for p in problems), (
        problems
    )


def test_checker_flags_a_newer_glibc() -> None:
    candidates = sorted(glob.glob("/lib/*-linux-gnu/libgcc_s.so.1") + glob.glob("/usr/lib/*-linux-gnu/libgcc_s.so.1"))
    newer = [c for c in candidates if glibc_too_new(Info(Path(c)))]
    if not newer:
        pytest.skip("no host library needing glibc > 2.34 to check the checker with")
    assert any("GLIBC_2.3" in v for v in glibc_too_new(Info(Path(newer[0]))))


def test_build_module_reader_agrees_with_pyelftools(layer: Layer) -> None:
    """layers/build.py checks the tree with its own reading (pglayer.elf, a typed layer over pyelftools):
    it must see what the reading above sees."""
    for path in elf_files(layer.opt / "pg"):
        ours, theirs = layer_elf.read_elf(path), Info(path)
        assert ours is not None, path
        assert ours.machine == theirs.machine, path
        assert ours.rpath == theirs.rpath, path
        assert ours.needed == theirs.needed, path
        assert ours.runpath == theirs.runpath, path
        assert {k: set(v) for k, v in ours.verneed.items()} == theirs.verneed, path
        assert set(ours.verdef) == theirs.verdef, path
