"""pgtools: scrubbing secrets, explaining libpq failures, picking the right client binary."""

from __future__ import annotations

from pathlib import Path

import pytest

from chalicelib.adapters.pgtools import Toolbox, effective_compression, explain, minimal_env, scrub
from chalicelib.errors import PgToolError

CONTEXT = {"user": "backup_ro", "host": "db.internal", "port": 6432, "sslmode": "verify-full", "database": "shop"}


# --- scrub ---------------------------------------------------------------------------------------------------------


def test_scrub_removes_known_secrets_everywhere() -> None:
    assert scrub("token hunter2 then hunter2 again", ["hunter2"]) == "token *** then *** again"


def test_scrub_ignores_empty_secrets() -> None:
    assert scrub("nothing to hide", ["", ""]) == "nothing to hide"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("host=db user=u password=hunter2 dbname=x", "host=db user=u password=*** dbname=x"),
        ("host=db password='two words' dbname=x", "host=db password=*** dbname=x"),
        ("host=db password = 'spaced' dbname=x", "host=db password = *** dbname=x"),
        ("PASSWORD=Hunter2", "PASSWORD=***"),
        ("PGPASSWORD=hunter2 pg_dump", "PGPASSWORD=*** pg_dump"),
    ],
)
def test_scrub_conninfo_passwords(text: str, expected: str) -> None:
    assert scrub(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("postgresql://alice:s3cret@db.example.com:5432/shop", "postgresql://alice:***@db.example.com:5432/shop"),
        ("connect to postgres://bob:p:w/d@host/db now", "connect to postgres://bob:***@host/db now"),
        ("postgresql://carol@host/db", "postgresql://carol@host/db"),
    ],
)
def test_scrub_uri_passwords(text: str, expected: str) -> None:
    assert scrub(text) == expected


def test_scrub_leaves_ordinary_text_alone() -> None:
    text = 'pg_dump: error: query failed: ERROR:  permission denied for table "orders"'
    assert scrub(text, ["hunter2"]) == text


def test_scrub_quoted_password_with_escaped_quote() -> None:
    scrubbed = scrub(r"host=db password='it\'s a secret' dbname=x")
    assert "secret" not in scrubbed
    assert scrubbed == "host=db password=*** dbname=x"


# --- explain ---------------------------------------------------------------------------------------------------------


def test_explain_bad_password_names_the_user_and_the_secret() -> None:
    advice, connection = explain('FATAL:  password authentication failed for user "backup_ro"', CONTEXT)
    assert connection is True
    assert "backup_ro" in advice
    assert "secret" in advice
    assert advice.startswith("the server refused the credentials for user backup_ro")


def test_explain_unknown_host() -> None:
    advice, connection = explain(
        'could not translate host name "db.internal" to address: Name or service not known', CONTEXT
    )
    assert (advice, connection) == ("unknown host db.internal: check connection.host", True)


def test_explain_connection_refused_names_host_and_port() -> None:
    message = (
        'connection to server at "db.internal" (10.0.0.7), port 6432 failed: Connection refused\n'
        "\tIs the server running on that host and accepting TCP/IP connections?"
    )
    advice, connection = explain(message, CONTEXT)
    assert connection is True
    assert "db.internal:6432" in advice


@pytest.mark.parametrize(
    ("message", "fragment", "connection"),
    [
        ("timeout expired", "connecting to db.internal:6432 timed out", True),
        ('no pg_hba.conf entry for host "10.0.0.9", user "backup_ro"', "user backup_ro, sslmode verify-full", True),
        ("SSL error: certificate verify failed", "TLS verification of db.internal failed", True),
        ("server does not support SSL, but SSL was required", "sslmode is verify-full", True),
        ('FATAL:  database "shop" does not exist', "database shop does not exist on db.internal", True),
        ('FATAL:  role "backup_ro" does not exist', "role backup_ro does not exist", True),
        ('pg_dump: error: could not obtain lock on relation "orders"', "lock_wait_timeout_seconds", False),
        ("ERROR:  canceling statement due to statement timeout", "lock_wait_timeout_seconds", False),
        ("pg_dump: error: aborting because of server version mismatch", "pg_dump is older than the server", False),
        ("server closed the connection unexpectedly", "closed the connection during the run", False),
    ],
)
def test_explain_other_failures(message: str, fragment: str, connection: bool) -> None:
    advice, is_connection = explain(message, CONTEXT)
    assert fragment in advice
    assert is_connection is connection


def test_explain_unknown_message() -> None:
    assert explain("pg_dump: error: something new", CONTEXT) == ("", False)


def test_explain_missing_context_uses_placeholders() -> None:
    advice, _ = explain("Connection refused", {})
    assert "?:?" in advice


# --- Toolbox ---------------------------------------------------------------------------------------------------------


def fake_tool(root: Path, major: int | str, tool: str = "pg_dump", executable: bool = True) -> Path:
    path = root / str(major) / "bin" / tool
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(0o755 if executable else 0o644)
    return path


@pytest.fixture
def roots(tmp_path: Path) -> Path:
    root = tmp_path / "pg"
    for major in (13, 15, 17):
        fake_tool(root, major)
        fake_tool(root, major, "pg_restore")
    fake_tool(root, "latest")  # not a major: ignored
    fake_tool(root, 16, executable=False)  # not executable: ignored
    (root / "14").mkdir()  # no bin/: ignored
    return root


def test_majors(roots: Path) -> None:
    assert list(Toolbox([roots]).majors("pg_dump")) == [13, 15, 17]


def test_pick_prefers_the_exact_major(roots: Path) -> None:
    tool = Toolbox([roots]).pick("pg_dump", 15)
    assert (tool.name, tool.major, tool.path) == ("pg_dump", 15, roots / "15" / "bin" / "pg_dump")


@pytest.mark.parametrize(("server", "chosen"), [(14, 15), (16, 17), (12, 13), (10, 13)])
def test_pick_else_the_oldest_newer(roots: Path, server: int, chosen: int) -> None:
    assert Toolbox([roots]).pick("pg_dump", server).major == chosen


def test_pick_never_older(roots: Path) -> None:
    with pytest.raises(PgToolError) as info:
        Toolbox([roots]).pick("pg_dump", 18, purpose="a PostgreSQL 18.1 server")
    message = str(info.value)
    assert message.startswith("a PostgreSQL 18.1 server needs pg_dump 18 or newer but the newest bundled is 17")
    assert "(majors available: 13, 15, 17)" in message


def test_pick_default_purpose(roots: Path) -> None:
    with pytest.raises(PgToolError, match=r"^this server needs pg_restore 18 or newer"):
        Toolbox([roots]).pick("pg_restore", 18)


def test_pick_with_nothing_installed(tmp_path: Path) -> None:
    with pytest.raises(PgToolError, match=r"no pg_dumpall found under .*: attach the pg-clients layer"):
        Toolbox([tmp_path / "missing", tmp_path]).pick("pg_dumpall", 16)


def test_first_root_wins_for_the_same_major(tmp_path: Path) -> None:
    layer, debian = tmp_path / "opt", tmp_path / "usr"
    fake_tool(layer, 16)
    fake_tool(debian, 16)
    fake_tool(debian, 15)
    box = Toolbox([layer, debian])
    assert box.pick("pg_dump", 16).path == layer / "16" / "bin" / "pg_dump"
    assert box.pick("pg_dump", 15).path == debian / "15" / "bin" / "pg_dump"


# --- effective_compression and the child's environment ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("configured", "major", "expected"),
    [
        ("zstd:3", 15, "gzip:6"),
        ("lz4", 15, "gzip:6"),
        ("lz4", 14, "gzip:6"),
        ("zstd:long", 15, "gzip:6"),
        ("zstd:3", 16, "zstd:3"),
        ("lz4", 16, "lz4"),
        ("lz4:5", 17, "lz4:5"),
        ("gzip:9", 15, "gzip:9"),
        ("none", 13, "none"),
        ("gzip", 17, "gzip"),
    ],
)
def test_effective_compression(configured: str, major: int, expected: str) -> None:
    assert effective_compression(configured, major) == expected


def test_minimal_env_keeps_aws_credentials_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "do-not-leak")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "do-not-leak")
    monkeypatch.setenv("PATH", "/usr/bin")
    env = minimal_env({"PGPASSWORD": "pw", "PGHOST": "db"})
    assert "do-not-leak" not in env.values()
    assert env["PATH"] == "/usr/bin"
    assert (env["PGPASSWORD"], env["PGHOST"]) == ("pw", "db")
    assert set(env) <= {"PATH", "TZ", "LANG", "LC_ALL", "HOME", "TMPDIR", "PGPASSWORD", "PGHOST"}
