"""LIFEBOAT_PG_ROOTS falls back to the pg_dump/pg_restore on PATH when no root holds a major that fits the server,
and `lifeboat check` reports the one it found. Real binaries only: Debian's PostgreSQL 15 and the 17 the suite
unpacks (tests/conftest.py), linked into directories laid out as a PATH would be."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from chalicelib.adapters.pgtools import Toolbox, tool_major
from chalicelib.cli import main
from chalicelib.errors import PgToolError
from devstack import pgbin
from devstack.local import LocalStack, target, write_config
from devstack.postgres import PostgresServer
from tests.conftest import DUMP_MAJOR

TOOLS = ("pg_dump", "pg_dumpall", "pg_restore")


def bin_dir(tmp_path: Path, name: str, source: Path) -> Path:
    """A directory holding the tools of `source` (a PostgreSQL bin/), as on a PATH."""
    d = tmp_path / name
    d.mkdir()
    for tool in TOOLS:
        (d / tool).symlink_to(source / tool)
    return d


@pytest.fixture
def path_17(tmp_path: Path) -> Path:
    return bin_dir(tmp_path, "path17", pgbin.unpacked(DUMP_MAJOR) / "bin")


def test_the_tool_on_path_when_no_root_fits(tmp_path: Path, path_17: Path) -> None:
    box = Toolbox([tmp_path / "no-roots"], search_path=str(path_17))

    for server in (DUMP_MAJOR, DUMP_MAJOR - 2):  # its own major, and an older server (pg_dump reads older ones)
        found = box.pick("pg_dump", server)
        assert (found.major, found.path) == (DUMP_MAJOR, path_17 / "pg_dump")
    assert box.pick("pg_restore", DUMP_MAJOR).path == path_17 / "pg_restore"

    with pytest.raises(PgToolError) as info:  # never an older one
        box.pick("pg_dump", DUMP_MAJOR + 1)
    assert f"the pg_dump on PATH ({path_17 / 'pg_dump'}) is {DUMP_MAJOR}, older than the server" in str(info.value)
    assert str(info.value).startswith(f"no pg_dump found under {tmp_path / 'no-roots'}: attach the pg-clients layer")


def test_a_root_that_fits_wins_over_path(tmp_path: Path, path_17: Path) -> None:
    if 15 not in pgbin.debian_majors():
        pytest.skip("needs Debian's PostgreSQL 15 client")
    roots = tmp_path / "roots"
    roots.mkdir()
    (roots / "15").symlink_to("/usr/lib/postgresql/15")
    box = Toolbox([roots], search_path=str(path_17))

    assert box.pick("pg_dump", 15).path == roots / "15" / "bin" / "pg_dump"  # the exact major under the roots
    assert box.pick("pg_dump", 16).path == path_17 / "pg_dump"  # no root fits 16: PATH's 17 does


def test_path_is_the_processes_own_by_default(tmp_path: Path, path_17: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", f"{path_17}:/usr/bin:/bin")
    assert Toolbox([tmp_path / "no-roots"]).pick("pg_dump", DUMP_MAJOR).path == path_17 / "pg_dump"

    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(PgToolError, match=r"; no pg_dump on PATH$"):
        Toolbox([tmp_path / "no-roots"]).pick("pg_dump", DUMP_MAJOR)


def test_a_program_that_is_not_postgresql_is_ignored(tmp_path: Path) -> None:
    d = tmp_path / "impostor"
    d.mkdir()
    (d / "pg_dump").symlink_to("/bin/true")  # runs, exits 0, prints no PostgreSQL version

    assert tool_major(d / "pg_dump") is None
    assert Toolbox([tmp_path / "no-roots"], search_path=str(d)).on_path("pg_dump") is None


def test_check_reports_the_pg_dump_found_on_path(
    aws: LocalStack, pg: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server_bin = bin_dir(tmp_path, "server", pgbin.server_bin(pg.major))  # the server's own major, on PATH only
    monkeypatch.setenv("LIFEBOAT_PG_ROOTS", str(tmp_path / "no-roots"))
    monkeypatch.setenv("PATH", f"{server_bin}:/usr/bin:/bin")
    path = write_config(tmp_path / "lifeboat.json", aws.bucket, [target("shop", pg.port, aws.secret_arn)])
    monkeypatch.setenv("LIFEBOAT_CONFIG", str(path))
    out = io.StringIO()

    main(["check", "shop", "--json"], out=out)

    [line] = [c for c in json.loads(out.getvalue())["checks"] if c["name"] == "pg_dump"]
    assert line["status"] == "ok"
    assert line["detail"].startswith(f"pg_dump {pg.major} at {server_bin / 'pg_dump'}")
