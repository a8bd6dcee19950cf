"""dump_directory uploads a file only once pg_dump closed it, whatever the path of the temporary directory."""

from __future__ import annotations

import hashlib
import os
import stat
import sys
import tempfile
from pathlib import Path
from typing import IO

import pytest

from chalicelib.adapters import pgtools
from chalicelib.adapters.pgtools import PgTool
from chalicelib.adapters.postgres import Login
from chalicelib.adapters.s3 import PutResult
from chalicelib.logical import dump_tools
from chalicelib.logical.dump_tools import dump_directory

# A pg_dump -j stand-in: each table file is written in chunks, held open for about a second, then toc.dat.
FAKE_PG_DUMP = """#!{python}
import sys, time, pathlib
out = pathlib.Path([a for a in sys.argv if a.startswith("--file=")][0][7:])
out.mkdir()
for n in ("3001.dat.gz", "3002.dat.gz"):
    with open(out / n, "wb") as f:
        for _ in range(5):
            f.write(b"x" * 1000)
            f.flush()
            time.sleep(0.2)
(out / "toc.dat").write_bytes(b"toc")
"""
FULL = {"3001.dat.gz": 5000, "3002.dat.gz": 5000, "toc.dat": 3}


class MemoryStore:
    bucket = "mem"

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}

    def put_stream(self, key: str, stream: IO[bytes], **_: object) -> PutResult:
        body = stream.read()
        self.objects[key] = body
        return PutResult(key, len(body), hashlib.sha256(body).hexdigest(), 1)


def _tool(tmp_path: Path) -> PgTool:
    script = tmp_path / "pg_dump"
    script.write_text(FAKE_PG_DUMP.format(python=sys.executable))
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return PgTool("pg_dump", 17, script)


def _dump(tmp_path: Path) -> dict[str, int]:
    store = MemoryStore()
    login = Login(host="h", port=5432, database="d", user="u", sslmode="disable")
    objects = dump_directory(store, _tool(tmp_path), [], login, "p/", {}, None, None, [])  # type: ignore[arg-type]
    assert {k[2:]: len(v) for k, v in store.objects.items()} == {o.key[2:]: o.size for o in objects}
    return {o.key[2:]: o.size for o in objects}


@pytest.fixture
def symlinked_tmpdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    monkeypatch.setenv("TMPDIR", str(tmp_path / "link"))
    monkeypatch.setattr(tempfile, "tempdir", None)


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc")
def test_symlinked_tmpdir_waits_for_each_file_to_close(tmp_path: Path, symlinked_tmpdir: None) -> None:
    assert _dump(tmp_path) == FULL  # not a file uploaded (and unlinked) while pg_dump still wrote it


def test_without_proc_files_are_uploaded_after_pg_dump_exits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, symlinked_tmpdir: None
) -> None:
    def no_proc(pid: int) -> dict[int, str]:
        raise FileNotFoundError("/proc")

    monkeypatch.setattr(pgtools, "child_processes", no_proc)
    assert pgtools.open_files(1) is None
    assert _dump(tmp_path) == FULL


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc")
def test_open_files_names_files_by_identity(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    path = tmp_path / "link" / "f"
    with path.open("wb"):
        held = pgtools.open_files(os.getpid())
        st = path.stat()
        assert held is not None and (st.st_dev, st.st_ino) in held
    assert dump_tools.open_files is pgtools.open_files
