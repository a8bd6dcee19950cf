"""Bytecode in the deployment package: every Lambda cold start otherwise compiles all of its Python from source.

Chalice's deployment.zip holds sources only (it unpacks the dependency wheels and copies chalicelib), and
Lambda's /var/task is read-only, so nothing compiled is ever kept: each new container compiles chalicelib,
pydantic, chalice, Powertools and boto3 again. Measured on a 2-core VM (BENCHMARKS.md, cold start): `import app`
from the unpacked package took 0.76 s of CPU from sources, 0.30 s with bytecode.

The files are unchecked-hash .pyc (PEP 552): a zip's timestamps (2-second resolution, no time zone) cannot
validate timestamp-based ones, and a deployed package never changes. They are this interpreter's bytecode:
Chalice chose the functions' runtime from this interpreter (python3.12 here), so it is the runtime's.
"""

from __future__ import annotations

import importlib.util
import marshal
import sys
import zipfile
from pathlib import Path

UNCHECKED_HASH = (1).to_bytes(4, "little")  # PEP 552 flags: hash-based, source not checked


def cached_name(source: str) -> str:
    """Where the interpreter looks for a source's bytecode: pkg/mod.py -> pkg/__pycache__/mod.cpython-312.pyc."""
    folder, _, name = source.rpartition("/")
    cached = f"__pycache__/{name.removesuffix('.py')}.{sys.implementation.cache_tag}.pyc"
    return f"{folder}/{cached}" if folder else cached


def pyc(source: bytes, filename: str) -> bytes | None:
    """The .pyc of one source file; None for a file this Python cannot compile (another version's, a template)."""
    try:
        code = compile(source, filename, "exec", dont_inherit=True, optimize=0)
    except (SyntaxError, ValueError):
        return None
    return importlib.util.MAGIC_NUMBER + UNCHECKED_HASH + importlib.util.source_hash(source) + marshal.dumps(code)


def add_bytecode(package: Path) -> int:
    """Rewrite a deployment zip with a .pyc beside each .py that has none; every entry is kept as it was
    (compression, permissions). Returns how many were added."""
    staged = package.with_name(package.name + ".partial")
    added = 0
    with zipfile.ZipFile(package) as source, zipfile.ZipFile(staged, "w") as target:
        present = set(source.namelist())
        for info in source.infolist():
            data = source.read(info)
            target.writestr(info, data)
            if not info.filename.endswith(".py") or cached_name(info.filename) in present:
                continue
            compiled = pyc(data, info.filename)
            if compiled is None:
                continue
            entry = zipfile.ZipInfo(cached_name(info.filename), date_time=info.date_time)
            entry.compress_type = zipfile.ZIP_DEFLATED
            entry.external_attr = 0o644 << 16
            target.writestr(entry, compiled)
            added += 1
    staged.replace(package)
    return added
