"""`lifeboat wal-fetch` is PostgreSQL's restore_command: 0 fetched, 1 not archived (the end of the WAL), and every
error 255 (recovery stops), never main's 1 or 2, which PostgreSQL would read as "the end of the WAL" and promote
early. Run through chalicelib.cli.main like any command; another command keeps main's 1 and 2 for the same errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from chalicelib.pitr import commands
from devstack.local import LocalStack, target, write_config
from devstack.postgres import free_port
from tests.cli.conftest import Lifeboat

SEGMENT = "000000010000000000000003"


@pytest.fixture
def config(aws: LocalStack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    entry = target("shop", free_port(), aws.secret_arn)
    entry["wal"] = {}
    path = write_config(tmp_path / "lifeboat.json", aws.bucket, [entry])
    monkeypatch.setenv("LIFEBOAT_CONFIG", str(path))
    return path


def fetch(lifeboat: Lifeboat, tmp_path: Path, *options: str) -> tuple[int, str]:
    ran = lifeboat(*options, "wal-fetch", "--target", "shop", SEGMENT, str(tmp_path / "RECOVERYXLOG"))
    assert ran.out == "" or "--json" in options, ran
    return ran.code, ran.err


@pytest.mark.usefixtures("config")
def test_a_file_not_archived_is_1_the_end_of_the_wal(lifeboat: Lifeboat, tmp_path: Path) -> None:
    code, err = fetch(lifeboat, tmp_path)
    assert (code, err) == (1, f"lifeboat: not_archived: wal-fetch {SEGMENT}: not in the archive\n")
    assert not (tmp_path / "RECOVERYXLOG").exists()


def test_a_bad_configuration_is_255_not_2(lifeboat: Lifeboat, tmp_path: Path) -> None:
    code, err = fetch(lifeboat, tmp_path, "--config", str(tmp_path / "missing.json"))
    assert code == 255 and "missing.json" in err, err
    assert lifeboat("--config", str(tmp_path / "missing.json"), "wal-window", "shop").code == 2  # main's mapping


def test_a_usage_error_is_255_also_as_json(lifeboat: Lifeboat) -> None:
    human = lifeboat("wal-fetch", SEGMENT, "pg_wal/RECOVERYXLOG")  # no --target
    assert human.code == 255 and "the following arguments are required: --target" in human.err, human
    document = lifeboat("wal-fetch", SEGMENT, "--json")
    assert document.code == 255 and document.json()["error"]["code"] == "usage", document
    assert lifeboat("wal-window").code == 2


def test_s3_out_of_reach_is_255_not_1(
    config: Path, lifeboat: Lifeboat, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    code, err = fetch(lifeboat, tmp_path)
    assert code == 255 and err.startswith("lifeboat: "), err
    ran = lifeboat("wal-window", "shop")
    assert ran.code == 1, ran  # main's mapping for the same failure elsewhere


@pytest.mark.usefixtures("config")
def test_an_unexpected_error_is_255_not_a_traceback(
    lifeboat: Lifeboat, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_: object) -> tuple[int, str]:
        raise RuntimeError("a bug")

    monkeypatch.setattr(commands, "wal_fetch", broken)
    code, err = fetch(lifeboat, tmp_path)
    assert (code, err) == (255, "lifeboat: internal_error: RuntimeError: a bug\n")
