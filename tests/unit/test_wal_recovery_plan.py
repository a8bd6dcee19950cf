"""The pure part of the API's WAL recovery plans (chalicelib.restore.wal_plan): which base among pg_basebackup bases
and app-consistent snapshot sets, and the command, quoted."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from chalicelib.adapters.s3 import ObjectInfo
from chalicelib.errors import ConflictError
from chalicelib.pitr.basebackup import BaseBackup, BaseObject
from chalicelib.pitr.recover import RecoveryTarget
from chalicelib.pitr.walarchive import WalEntry
from chalicelib.pitr.walnames import Segment, WalLayout, format_lsn
from chalicelib.restore.wal_plan import SET_KIND, choose, goal_of, recover_command

T0 = datetime(2026, 3, 1, 3, 0, tzinfo=UTC)
LAYOUT = WalLayout("", "shop")


def base(minutes: int, start: int, kind: str = "base") -> BaseBackup:
    started = T0 + timedelta(minutes=minutes)
    return BaseBackup(
        target="shop",
        backup_id=("snapshot:shop:" if kind == SET_KIND else "") + started.strftime("%Y%m%dT%H%M%SZ"),
        started_at=started,
        finished_at=started + timedelta(minutes=2),
        server_version_num=170002,
        timeline=1,
        start_lsn=format_lsn(Segment(1, start).start_lsn + 40),
        end_lsn=format_lsn(Segment(1, start + 1).start_lsn + 40),
        segment_size=Segment(1, 0).segment_size,
        tar_size=0,
        tar_sha256="",
        objects=[BaseObject(role="data", key="k", size=1, sha256="0" * 64)] if kind != SET_KIND else [],
        backup_label="",
        kind=kind,
    )


def wal(numbers: range) -> list[WalEntry]:
    entries = []
    for n in numbers:
        key = LAYOUT.segment_key(Segment(1, n))
        entries.append(WalEntry("segment", key, Segment(1, n), 1, ObjectInfo(key, 1, T0 + timedelta(minutes=10 * n))))
    return entries


def test_the_newest_fitting_base_wins_and_a_base_backup_wins_a_tie() -> None:
    older, snapshot_set = base(0, 1), base(30, 3, SET_KIND)
    goal = RecoveryTarget(time=T0 + timedelta(minutes=60))
    planned, _ = choose("shop", [older], [snapshot_set], wal(range(1, 9)), [], goal)
    assert planned.base.backup_id == snapshot_set.backup_id
    same_time = base(30, 3)
    planned, _ = choose("shop", [older, same_time], [snapshot_set], wal(range(1, 9)), [], goal)
    assert planned.base.backup_id == same_time.backup_id


def test_a_set_whose_wal_is_missing_falls_back_to_the_base_backups() -> None:
    older, snapshot_set = base(0, 1), base(30, 5, SET_KIND)
    entries = [e for e in wal(range(1, 9)) if e.segment is not None and e.segment.number != 6]
    planned, _ = choose("shop", [older], [snapshot_set], entries, [], RecoveryTarget(time=T0 + timedelta(minutes=45)))
    assert planned.base.backup_id == older.backup_id
    with pytest.raises(ConflictError, match="is not restorable"):  # past the hole: no base reaches it
        choose("shop", [older], [snapshot_set], entries, [], RecoveryTarget(time=T0 + timedelta(minutes=75)))


def test_the_command_quotes_what_it_is_given() -> None:
    goal = goal_of(T0, None, None)
    assert (
        recover_command("shop", goal, None)
        == "lifeboat recover shop --time 2026-03-01T03:00:00+00:00 --pgdata <PGDATA>"
    )
    assert recover_command("shop", goal_of(None, True, None), "/srv/a b", "snapshot:shop:20260301T030000Z") == (
        "lifeboat recover shop --latest --pgdata '/srv/a b' --snapshot-set snapshot:shop:20260301T030000Z"
    )
    assert (
        recover_command("shop", goal_of(None, None, "0/3000148"), "/d")
        == "lifeboat recover shop --lsn 0/3000148 --pgdata /d"
    )
