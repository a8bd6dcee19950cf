"""The fast path of `lifeboat wal-fetch` (chalicelib.pitr.fastfetch): a spool hit served before anything but the
standard library and the spool is imported; everything else (a miss, a damaged or refused spool, an unwritable
PATH, any other command line) left to the full command line with its exit codes. Pure tests first (no AWS), then
the console script's module run in fresh processes against moto."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tomllib
from dataclasses import replace
from pathlib import Path
from typing import Any

import boto3
import pytest

from chalicelib.adapters.s3 import S3Store
from chalicelib.cli import build_parser
from chalicelib.pitr import fastfetch, fetch
from chalicelib.pitr.fastfetch import Request, parse, serve
from chalicelib.pitr.spool import Spool
from chalicelib.pitr.walarchive import WalArchive
from chalicelib.pitr.walnames import Segment, WalLayout
from devstack.local import LocalStack, target, write_config
from devstack.postgres import free_port

REPO = Path(__file__).resolve().parents[2]
SIZE = 1024 * 1024
SEGMENTS = [Segment(1, 0x30 + i, SIZE) for i in range(3)]
HEAVY = ("boto3", "botocore", "pydantic", "pydantic_core", "psycopg", "aws_lambda_powertools", "zstandard")


def body(segment: Segment) -> bytes:
    return hashlib.sha256(segment.name.encode()).digest() * (SIZE // 32)


@pytest.fixture
def pg_wal(tmp_path: Path) -> Path:
    path = tmp_path / "pgdata" / "pg_wal"
    path.mkdir(parents=True)
    return path


def spooled(pg_wal: Path, *segments: Segment, target: str = "shop") -> Spool:
    spool = Spool(pg_wal / "lifeboat-prefetch", target)
    for segment in segments:
        spool.put(segment.name, body(segment), f"wal/{target}/00000001/{segment.name}")
    return spool


def request(pg_wal: Path, segment: Segment, **options: Any) -> Request:
    return replace(Request("shop", segment.name, pg_wal / "RECOVERYXLOG"), **options)


# --- pure: what the fast path accepts and serves ---------------------------------------------------------------


def test_parse_accepts_the_restore_command_recover_writes() -> None:
    argv = ["--config", "/etc/lb.json", "--region", "eu-west-1", "wal-fetch", "--target", "shop", "N", "pg_wal/X"]
    assert parse(argv) == Request("shop", "N", Path("pg_wal/X"))
    assert parse(
        ["wal-fetch", "N", "P", "--target=shop", "--prefetch=16", "--json", "--prefetch-dir", "/s"]
    ) == Request("shop", "N", Path("P"), 16, Path("/s"), as_json=True)
    assert parse(["wal-fetch", "--target", "shop", "--prefetch-dir=", "N", "P"]) == Request("shop", "N", Path("P"))


@pytest.mark.parametrize(
    "argv",
    [
        ["--config", "c.json", "--region", "r", "wal-fetch", "--target", "shop", "N", "P"],
        ["--json", "wal-fetch", "N", "--target=shop", "P", "--prefetch", "16", "--stack=s", "--profile", "p"],
        ["wal-fetch", "--prefetch-dir", "/d", "--target", "shop", "N", "P", "--config=c", "--prefetch=0"],
    ],
)
def test_what_parse_accepts_means_the_same_to_the_full_parser(argv: list[str]) -> None:
    fast, full = parse(argv), build_parser().parse_args(argv)
    assert fast is not None and full.command == "wal-fetch"
    assert (fast.target, fast.name, str(fast.path), fast.prefetch, fast.as_json) == (
        full.target,
        full.name,
        full.path,
        full.prefetch,
        full.json,
    )
    assert fast.prefetch_dir == (Path(full.prefetch_dir) if full.prefetch_dir else None)


@pytest.mark.parametrize(
    "argv",
    [
        ["wal-fetch", "N", "P"],  # no --target: the full parser's usage error (255)
        ["-v", "wal-fetch", "--target", "shop", "N", "P"],  # log lines wanted: the full path
        ["wal-fetch", "--targ", "shop", "N", "P"],  # an abbreviation argparse would accept
        ["wal-fetch", "--target", "shop", "--target", "other", "N", "P"],
        ["wal-fetch", "--target", "shop", "--prefetch", "-1", "N", "P"],
        ["wal-fetch", "--target", "shop", "--prefetch", "x", "N", "P"],
        ["wal-fetch", "--target", "shop", "N", "P", "extra"],
        ["wal-fetch", "--target", "shop", "--", "N", "P"],
        ["--target", "shop", "wal-fetch", "N", "P"],  # a command option before the command
        ["wal-window", "shop"],
        ["wal-fetch", "--help"],
        ["--version"],
        [],
    ],
)
def test_parse_leaves_everything_else_to_the_full_command_line(argv: list[str]) -> None:
    assert parse(argv) is None


def test_a_hit_is_written_and_served_once(pg_wal: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spool = spooled(pg_wal, *SEGMENTS)
    assert serve(request(pg_wal, SEGMENTS[0], prefetch=2))
    assert (pg_wal / "RECOVERYXLOG").read_bytes() == body(SEGMENTS[0])
    assert spool.ready() == {SEGMENTS[1].name, SEGMENTS[2].name}
    assert (
        capsys.readouterr().out
        == f"wal-fetch {SEGMENTS[0].name}: {SIZE} bytes from the prefetch spool; 2 of the next 2 already prefetched\n"
    )
    (pg_wal / "RECOVERYXLOG").unlink()
    assert not serve(request(pg_wal, SEGMENTS[0]))  # used once
    assert not (pg_wal / "RECOVERYXLOG").exists()
    assert serve(request(pg_wal, SEGMENTS[1], as_json=True))
    document = json.loads(capsys.readouterr().out)
    assert document["status"] == "OK" and "from the prefetch spool" in document["message"], document


@pytest.mark.parametrize("damage", ["bytes", "size", "sidecar name", "sidecar target", "sidecar json"])
def test_a_spooled_file_not_exactly_verified_is_left_to_the_full_path(pg_wal: Path, damage: str) -> None:
    spool = spooled(pg_wal, SEGMENTS[0])
    file = spool.directory / SEGMENTS[0].name
    sidecar = spool.directory / f"{SEGMENTS[0].name}.json"
    record = json.loads(sidecar.read_text())
    if damage == "bytes":
        file.write_bytes(b"\x00" * SIZE)
    elif damage == "size":
        file.write_bytes(body(SEGMENTS[0])[:-1])
    elif damage == "sidecar json":
        sidecar.write_text("{")
    else:
        record["name" if damage == "sidecar name" else "target"] = "other"
        sidecar.write_text(json.dumps(record))
    before = {p.name: p.read_bytes() for p in spool.directory.iterdir()}
    assert not serve(request(pg_wal, SEGMENTS[0]))
    assert not (pg_wal / "RECOVERYXLOG").exists()
    assert {p.name: p.read_bytes() for p in spool.directory.iterdir()} == before  # the full path refuses and says why


def test_no_hit_without_prefetching_for_a_history_file_or_in_a_refused_directory(pg_wal: Path) -> None:
    spooled(pg_wal, SEGMENTS[0])
    assert not serve(request(pg_wal, SEGMENTS[0], prefetch=0))  # --prefetch 0: the spool is not used
    assert not serve(request(pg_wal, SEGMENTS[0], target="other"))
    assert not serve(Request("shop", "00000002.history", pg_wal / "RECOVERYXLOG"))
    assert not serve(request(pg_wal, SEGMENTS[0], prefetch_dir=pg_wal))  # a pg_wal: refused (the full path: 255)
    assert not serve(request(pg_wal, SEGMENTS[0], path=pg_wal / "missing" / "RECOVERYXLOG"))  # unwritable
    assert not (pg_wal / "RECOVERYXLOG").exists()
    assert serve(request(pg_wal, SEGMENTS[0]))  # all of it was left in place


def test_the_console_script_is_the_fast_path_and_agrees_with_the_full_one() -> None:
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["lifeboat"] == "chalicelib.pitr.fastfetch:main"
    assert fastfetch.DEFAULT_PREFETCH == fetch.DEFAULT_PREFETCH


# --- fresh processes: what is imported, and the exit codes against moto -----------------------------------------


def lifeboat(*argv: str) -> tuple[int, list[str], str]:
    """(exit code, heavy modules imported, stdout before the probe's line) of `lifeboat ARGV` in a new process."""
    code = (
        "import json, sys\n"
        "from chalicelib.pitr.fastfetch import main\n"
        f"sys.argv = ['lifeboat', *{list(argv)!r}]\n"
        "code = main()\n"
        "mods = set(sys.modules)\n"
        f"heavy = sorted({{m.split('.')[0] for m in mods}} & set({list(HEAVY)!r}))\n"
        "heavy += sorted(m for m in mods if m in ('chalicelib.config', 'chalicelib.cli', 'chalicelib.observability'))\n"
        "print(json.dumps([code, heavy]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60, env=os.environ, check=False
    )
    *out, last = done.stdout.splitlines() or [""]
    assert last.startswith("["), done
    exit_code, heavy = json.loads(last)
    return exit_code, heavy, "\n".join(out) + done.stderr


@pytest.fixture
def archived(aws: LocalStack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> WalArchive:
    entry = target("shop", free_port(), aws.secret_arn)
    entry["wal"] = {}
    monkeypatch.setenv("LIFEBOAT_CONFIG", str(write_config(tmp_path / "lifeboat.json", aws.bucket, [entry])))
    archive = WalArchive(S3Store(boto3.client("s3"), aws.bucket), WalLayout("", "shop"))
    for segment in SEGMENTS[:2]:
        archive.put_segment(segment, body(segment))
    return archive


@pytest.mark.usefixtures("archived")
def test_a_hit_imports_no_aws_nor_pydantic_and_a_miss_runs_the_full_command_line(pg_wal: Path) -> None:
    spooled(pg_wal, SEGMENTS[0])
    wanted = str(pg_wal / "RECOVERYXLOG")
    code, heavy, out = lifeboat("wal-fetch", "--target", "shop", SEGMENTS[0].name, wanted)
    assert (code, heavy) == (0, []), out
    assert "from the prefetch spool" in out and (pg_wal / "RECOVERYXLOG").read_bytes() == body(SEGMENTS[0])
    code, heavy, out = lifeboat("wal-fetch", "--target", "shop", SEGMENTS[1].name, wanted)  # a miss: S3
    assert code == 0 and {"boto3", "pydantic", "chalicelib.config"} <= set(heavy), (heavy, out)  # the probe sees them
    assert (pg_wal / "RECOVERYXLOG").read_bytes() == body(SEGMENTS[1]) and "from wal/shop/" in out, out
    code, _, out = lifeboat("wal-fetch", "--target", "shop", SEGMENTS[2].name, wanted)
    assert code == 1 and "not in the archive" in out, out


@pytest.mark.usefixtures("archived")
def test_a_damaged_spooled_file_is_read_from_s3(pg_wal: Path) -> None:
    spool = spooled(pg_wal, SEGMENTS[0])
    (spool.directory / SEGMENTS[0].name).write_bytes(b"\x00" * SIZE)
    code, heavy, out = lifeboat(
        "--json", "wal-fetch", "--target", "shop", SEGMENTS[0].name, str(pg_wal / "RECOVERYXLOG")
    )
    assert code == 0 and "boto3" in heavy, out
    assert "the prefetched copy was refused, its SHA-256 does not match" in json.loads(out.splitlines()[0])["message"]
    assert (pg_wal / "RECOVERYXLOG").read_bytes() == body(SEGMENTS[0])


@pytest.mark.usefixtures("archived")
def test_the_full_paths_exit_codes_stay_when_the_spool_cannot_serve(pg_wal: Path, tmp_path: Path) -> None:
    """A spool inside a data directory (even a complete one, written by hand) and an unwritable PATH: 255."""
    pgdata = pg_wal.parent
    (pgdata / "PG_VERSION").write_text("16")
    by_hand = Spool(tmp_path / "elsewhere", "shop")
    by_hand.put(SEGMENTS[0].name, body(SEGMENTS[0]), "k")
    (pgdata / "lifeboat-prefetch-shop").mkdir()
    for p in by_hand.directory.iterdir():
        (pgdata / "lifeboat-prefetch-shop" / p.name).write_bytes(p.read_bytes())
    wanted = str(pg_wal / "RECOVERYXLOG")
    code, _, out = lifeboat("wal-fetch", "--target", "shop", "--prefetch-dir", str(pgdata), SEGMENTS[0].name, wanted)
    assert code == 255 and "is a PostgreSQL data directory" in out, out
    assert not (pg_wal / "RECOVERYXLOG").exists()
    missing = str(tmp_path / "no" / "RECOVERYXLOG")
    code, _, out = lifeboat(
        "wal-fetch", "--target", "shop", "--prefetch-dir", str(tmp_path / "elsewhere"), SEGMENTS[0].name, missing
    )
    assert code == 255 and "cannot write" in out, out
