"""ELF files, read with pyelftools: the dynamic section (DT_NEEDED, DT_SONAME, DT_RUNPATH, DT_RPATH), the
GNU symbol versions (.gnu.version_r: needed, .gnu.version_d: defined), the glibc limit, and the check of a
whole staged tree."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from elftools.common.exceptions import ELFError
from elftools.elf.dynamic import DynamicSegment
from elftools.elf.elffile import ELFFile
from elftools.elf.gnuversions import GNUVerDefSection, GNUVerNeedSection

from .common import ELF_MACHINE, MAX_GLIBC, BuildError, glibc_family

# Dynamic tags whose value is a string; pyelftools exposes each as an attribute (DT_NEEDED -> .needed).
STRING_TAGS = frozenset({"DT_NEEDED", "DT_SONAME", "DT_RUNPATH", "DT_RPATH"})


@dataclass
class Elf:
    machine: str  # e_machine, e.g. "EM_X86_64"
    needed: list[str] = field(default_factory=list)
    soname: str | None = None
    runpath: str | None = None
    rpath: str | None = None
    verneed: dict[str, list[str]] = field(default_factory=dict)  # file -> version names needed
    verdef: list[str] = field(default_factory=list)


def is_elf(data: bytes) -> bool:
    return data[:4] == b"\x7fELF"


def read_elf(path: Path) -> Elf | None:
    """The dynamic-linking facts of an ELF file, or None if path is not one."""
    with open(path, "rb") as f:
        if not is_elf(f.read(4)):
            return None
        f.seek(0)
        try:
            return _read(ELFFile(f))
        except ELFError as exc:
            raise BuildError(f"{path}: unreadable ELF file: {exc}") from exc


def _read(elffile: ELFFile) -> Elf:
    elf = Elf(machine=str(elffile["e_machine"]))
    for segment in elffile.iter_segments():
        if not isinstance(segment, DynamicSegment):
            continue
        for tag in segment.iter_tags():
            d_tag = str(tag.entry.d_tag)
            if d_tag not in STRING_TAGS:
                continue
            value = str(getattr(tag, d_tag[3:].lower()))
            if d_tag == "DT_NEEDED":
                elf.needed.append(value)
            elif d_tag == "DT_SONAME":
                elf.soname = value
            elif d_tag == "DT_RUNPATH":
                elf.runpath = value
            else:
                elf.rpath = value
    for section in elffile.iter_sections():
        if isinstance(section, GNUVerNeedSection):
            for verneed, auxes in section.iter_versions():
                elf.verneed.setdefault(str(verneed.name), []).extend(aux.name for aux in auxes)
        elif isinstance(section, GNUVerDefSection):
            for _verdef, auxes in section.iter_versions():
                first = next(auxes, None)  # the version's own name; the others name its parents
                if first is not None:
                    elf.verdef.append(first.name)
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


def runpath_dirs(elf_path: Path, runpath: str | None) -> list[Path]:
    if not runpath:
        return []
    origin = str(elf_path.parent)
    return [
        Path(os.path.normpath(p.replace("$ORIGIN", origin).replace("${ORIGIN}", origin)))
        for p in runpath.split(":")
        if p
    ]


def check_tree(root: Path, arch: str) -> None:
    """Every ELF under root: right machine, NEEDED libraries found through its own RUNPATH inside root
    (DT_RUNPATH does not apply to indirect dependencies) or in the runtime's glibc, glibc <= 2.34, and
    every versioned dependency defined by the library that satisfies it."""
    errors: list[str] = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        elf = read_elf(path)
        if elf is not None:
            errors.extend(_problems(root, arch, path, elf))
    if errors:
        raise BuildError("layer check failed:\n  " + "\n  ".join(errors))


def _problems(root: Path, arch: str, path: Path, elf: Elf) -> list[str]:
    rel = path.relative_to(root).as_posix()
    errors: list[str] = []
    if elf.machine != ELF_MACHINE[arch]:
        errors.append(f"{rel}: ELF machine {elf.machine}, expected {ELF_MACHINE[arch]}")
    if elf.rpath:
        errors.append(f"{rel}: has DT_RPATH {elf.rpath}")
    dirs = runpath_dirs(path, elf.runpath)
    errors.extend(f"{rel}: RUNPATH entry {d} is outside the layer" for d in dirs if not d.is_relative_to(root))
    resolved: dict[str, Path] = {}
    for needed in elf.needed:
        if needed in glibc_family(arch):
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
            errors.extend(
                f"{rel}: needs {file} version {name}, which it does not define"
                for name in names
                if name not in provider.verdef
            )
    errors.extend(f"{rel}: needs {p}" for p in glibc_problems(elf))
    return errors
