"""A backup's slot may not lie in the future: it would pass for the newest backup in retention (`keep` held until
that date, every real backup after it only its class)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest

from chalicelib.cli import main
from chalicelib.config import Config, Connection, Logical, Settings, Target
from chalicelib.errors import BadRequestError
from chalicelib.logical.dump import BackupServices, check_slot, run_logical_backup

NOW = datetime(2026, 12, 1, 3, tzinfo=UTC)


def _services() -> BackupServices:
    cfg = Config(
        settings=Settings(bucket="lifeboat-test"),
        targets=[Target(name="shop", connection=Connection(host="h", user="u"), logical=Logical())],
    )
    nothing = cast(Any, None)  # the slot is refused before the store, the catalog or a login is touched
    return BackupServices(cfg, nothing, nothing, nothing, nothing, clock=lambda: NOW)


@pytest.mark.parametrize("ahead", [timedelta(minutes=6), timedelta(days=365)])
def test_run_refuses_a_slot_ahead_of_the_clock(ahead: timedelta) -> None:
    with pytest.raises(BadRequestError, match="in the future"):
        run_logical_backup(_services(), "shop", NOW + ahead, trigger="on-demand")


def test_a_slot_within_the_skew_allowance_or_past_is_accepted() -> None:
    check_slot(NOW + timedelta(minutes=5), NOW)
    check_slot(NOW - timedelta(days=400), NOW)


def test_cli_refuses_a_future_slot(capsys: pytest.CaptureFixture[str]) -> None:
    future = (datetime.now(UTC) + timedelta(days=365)).replace(microsecond=0, tzinfo=None).isoformat()
    assert main(["backup", "shop", "--slot", future]) == 2
    assert "in the future" in capsys.readouterr().err
