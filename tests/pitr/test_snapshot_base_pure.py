"""A snapshot set's label as a recovery base, and the checks of the restored data directory: pure, no AWS, no
server (the end-to-end story is test_snapshot_base.py)."""

from __future__ import annotations

import struct
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from chalicelib.errors import BadRequestError, ConflictError, IntegrityError, NotFoundError
from chalicelib.physical.model import SnapshotResource, SnapshotSet
from chalicelib.pitr.recover import RecoveryTarget, wal_problems
from chalicelib.pitr.restored_dir import DirFacts, parse_control, prepare, read_facts, refusal, tablespace_paths
from chalicelib.pitr.snapshotbase import (
    IN_ARCHIVE_RECOVERY,
    IN_PRODUCTION,
    SHUT_DOWN,
    as_base,
    check_goal,
    choose_set,
    parse_label,
    parse_set_id,
    segment_size_of,
)
from chalicelib.pitr.walarchive import WalEntry
from chalicelib.pitr.walnames import Segment, parse_lsn

SLOT = datetime(2026, 11, 29, 3, 0, tzinfo=UTC)
STOPPED = SLOT + timedelta(seconds=40)
LABELFILE = (
    "START WAL LOCATION: 0/5000028 (file 000000010000000000000005)\nCHECKPOINT LOCATION: 0/5000060\n"
    "BACKUP METHOD: streamed\nBACKUP FROM: primary\nSTART TIME: 2026-11-29 03:00:05 UTC\n"
    "LABEL: pg-lifeboat snapshot:vm:20261129T030000Z\nSTART TIMELINE: 1\n"
)


def document(**changes: Any) -> dict[str, Any]:
    doc = {
        "label": "pg-lifeboat snapshot:vm:20261129T030000Z",
        "server_version_num": 160004,
        "function": "pg_backup_start",
        "start_lsn": "0/5000028",
        "stop_lsn": "0/7000100",
        "labelfile": LABELFILE,
        "spcmapfile": "",
        "backup_id": "snapshot:vm:20261129T030000Z",
        "target": "vm",
        "slot": SLOT.isoformat(),
        "region": "us-east-1",
        "snapshot_ids": ["snap-b", "snap-a"],
        "stopped_at": STOPPED.isoformat(),
    }
    return {**doc, **changes}


SET_ID = parse_set_id("snapshot:vm:20261129T030000Z", "vm")
LABEL = parse_label(document(), SET_ID)


def test_set_ids_are_of_the_target_and_of_snapshots() -> None:
    with pytest.raises(BadRequestError, match="belongs to target 'vm', not 'shop': recover vm with it"):
        parse_set_id("snapshot:vm:20261129T030000Z", "shop")
    with pytest.raises(BadRequestError, match="is not a snapshot set id"):
        parse_set_id("logical:vm:20261129T030000Z", "vm")
    with pytest.raises(BadRequestError, match="is not a backup id"):
        parse_set_id("snap-0123", "vm")


def test_the_label_read_out() -> None:
    assert (LABEL.major, LABEL.timeline, LABEL.segment_size) == (16, 1, 16 * 1024 * 1024)
    assert (LABEL.start_lsn, LABEL.checkpoint_lsn, LABEL.stop_lsn) == ("0/5000028", "0/5000060", "0/7000100")
    assert LABEL.snapshot_ids == {"snap-a", "snap-b"} and not LABEL.from_standby and LABEL.stopped_at == STOPPED
    standby = parse_label(document(labelfile=LABELFILE.replace("FROM: primary", "FROM: standby")), SET_ID)
    assert standby.from_standby
    with pytest.raises(IntegrityError, match="names 'snapshot:other:20261129T030000Z' of target 'vm'"):
        parse_label(document(backup_id="snapshot:other:20261129T030000Z"), SET_ID)
    with pytest.raises(IntegrityError, match="lacks the start, checkpoint or stop location"):
        parse_label(document(stop_lsn=""), SET_ID)


def test_segment_size_from_the_start_line() -> None:
    assert segment_size_of(parse_lsn("0/5000028"), "000000010000000000000005") == 16 * 1024 * 1024
    assert segment_size_of(parse_lsn("0/5000028"), "000000010000000000000001") == 64 * 1024 * 1024
    assert segment_size_of(parse_lsn("1/5000028"), "000000020000000100000005") == 16 * 1024 * 1024
    with pytest.raises(IntegrityError, match="is not in segment"):
        segment_size_of(parse_lsn("0/5000028"), "000000010000000000000007")


def _entries(*numbers: int) -> list[WalEntry]:
    return [WalEntry("segment", f"wal/{n}", Segment(1, n), 1, None) for n in numbers]  # type: ignore[arg-type]


def test_the_label_is_checked_as_a_base_is() -> None:
    base = as_base(LABEL)
    assert (base.start_segment.number, base.end_segment.number, base.finished_at) == (5, 7, STOPPED)
    latest = RecoveryTarget()
    assert wal_problems(base, _entries(5, 6, 7, 8), [], latest) == []
    [missing] = wal_problems(base, _entries(5, 7, 8), [], latest)
    assert "base snapshot:vm:20261129T030000Z needs WAL" in missing and "000000010000000000000006" in missing
    gap = {"after": "000000010000000000000008", "before": "00000001000000000000000A", "reason": "slot lost"}
    assert wal_problems(base, _entries(5, 6, 7, 8), [{**gap, "detected_at": STOPPED.isoformat()}], latest)
    assert not wal_problems(
        base, _entries(5, 6, 7, 8), [{**gap, "detected_at": (SLOT - timedelta(hours=1)).isoformat()}], latest
    )


def test_a_target_before_the_backup_ended_is_refused() -> None:
    check_goal(LABEL, RecoveryTarget(time=STOPPED))
    check_goal(LABEL, RecoveryTarget(lsn="0/7000100"))
    check_goal(LABEL, RecoveryTarget())
    with pytest.raises(BadRequestError, match="is before snapshot set snapshot:vm:20261129T030000Z's backup ended"):
        check_goal(LABEL, RecoveryTarget(time=STOPPED - timedelta(microseconds=1)))
    with pytest.raises(BadRequestError, match=r"--lsn 0/70000FF is before"):
        check_goal(LABEL, RecoveryTarget(lsn="0/70000FF"))


def _set(region: str, *members: tuple[str, str, dict[str, str]]) -> SnapshotSet:
    made = tuple(SnapshotResource("ebs", sid, region, state, state, tags) for sid, state, tags in members)  # type: ignore[arg-type]
    return SnapshotSet("ebs", "vm", SLOT, region, made)


def test_the_set_must_be_complete_and_the_one_the_label_records() -> None:
    done = _set("us-east-1", ("snap-a", "available", {}), ("snap-b", "available", {}))
    copy = _set(
        "eu-west-1",
        ("snap-x", "available", {"lifeboat:copy-of": "snap-a"}),
        ("snap-y", "available", {"lifeboat:copy-of": "snap-b"}),
    )
    assert choose_set(LABEL, [done, copy]) is done
    assert choose_set(LABEL, [copy]) is copy  # the source region lost: its copy serves
    creating = _set("us-east-1", ("snap-a", "available", {}), ("snap-b", "creating", {}))
    with pytest.raises(ConflictError, match="is not complete \\(creating in us-east-1\\)"):
        choose_set(LABEL, [creating])
    with pytest.raises(ConflictError, match=r"\(snap-a\) are not the ones its backup label records \(snap-a, snap-b\)"):
        choose_set(LABEL, [_set("us-east-1", ("snap-a", "available", {}))])
    with pytest.raises(NotFoundError, match="no snapshot of set snapshot:vm:20261129T030000Z found"):
        choose_set(LABEL, [])


def control(state: int = IN_PRODUCTION, written: datetime = SLOT, checkpoint: str = "0/6000000", tli: int = 1) -> bytes:
    head = struct.pack("<QIIi4x", 7714025750222140266, 1300, 202307071, state)
    return head + struct.pack("<qQQI", int(written.timestamp()), parse_lsn(checkpoint), 0, tli) + bytes(200)


def facts(**changes: Any) -> DirFacts:
    fit = DirFacts("/data", True, "16", parse_control(control()))
    return replace(fit, **changes)


def test_pg_control_head() -> None:
    parsed = parse_control(control(SHUT_DOWN, STOPPED, "0/7000000", 2))
    assert parsed is not None and (parsed.state_name, parsed.written_at, parsed.timeline) == ("shut down", STOPPED, 2)
    assert parsed.checkpoint_lsn == parse_lsn("0/7000000") and parse_control(b"short") is None


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"is_dir": False}, "is not a directory: mount the volumes"),
        ({"control": None}, "not a PostgreSQL data directory"),
        ({"pg_version": "15"}, "it holds PostgreSQL 15, the set is PostgreSQL 16. Create new volumes"),
        ({"running_pid": 4242}, "a server runs on it (pid 4242): stop it"),
        ({"markers": ("recovery.signal",)}, "it has recovery.signal already: recover ran here before"),
        ({"control": parse_control(control(SHUT_DOWN))}, "pg_control says shut down"),
        ({"control": parse_control(control(IN_ARCHIVE_RECOVERY))}, "pg_control says in archive recovery"),
        ({"control": parse_control(control(tli=2))}, "pg_control is on timeline 2, the set's backup on 1"),
        ({"control": parse_control(control(checkpoint="0/4000000"))}, "latest checkpoint 0/4000000 is outside"),
        ({"control": parse_control(control(checkpoint="0/7000200"))}, "latest checkpoint 0/7000200 is outside"),
        ({"control": parse_control(control(written=STOPPED + timedelta(minutes=5)))}, "pg_control was written at"),
        ({"postmaster_started": STOPPED + timedelta(hours=2)}, "postmaster.pid says a server started on it at"),
        ({"backup_label_old": LABELFILE}, "backup_label.old is this set's label"),
        ({"linked_files": ("backup_label",)}, "backup_label is a symlink: recover writes it and never through a link"),
        ({"unsafe_tablespaces": ("/srv/ts lies in the data directory /srv",)}, "recovery would write into another"),
        ({"missing_tablespaces": ("/mnt/ts1",)}, "tablespace directory /mnt/ts1 (tablespace_map) is missing"),
    ],
)
def test_what_an_operator_can_get_wrong(changes: dict[str, Any], expected: str) -> None:
    message = refusal(facts(**changes), LABEL)
    assert expected in message and message.startswith("/data cannot be recovered from set"), message


def test_a_fit_directory_passes_and_clock_skew_is_tolerated() -> None:
    assert refusal(facts(), LABEL) == ""
    skewed = parse_control(control(written=STOPPED + timedelta(seconds=30)))
    assert refusal(facts(control=skewed, postmaster_started=SLOT - timedelta(days=30)), LABEL) == ""
    standby = replace(LABEL, from_standby=True)
    assert refusal(facts(control=parse_control(control(IN_ARCHIVE_RECOVERY))), standby) == ""
    assert "Create new volumes" not in refusal(facts(missing_tablespaces=("/mnt/ts1",)), LABEL)  # fixed by mounting


def test_tablespace_map_lines() -> None:
    assert tablespace_paths("16384 /mnt/ts one\n16390 /mnt/two\n\n") == [
        ("16384", "/mnt/ts one"),
        ("16390", "/mnt/two"),
    ]


def test_prepare_writes_the_label_and_clears_what_the_snapshot_carried(tmp_path: Path) -> None:
    pgdata = tmp_path / "data"
    (pgdata / "global").mkdir(parents=True)
    (pgdata / "global" / "pg_control").write_bytes(control())
    (pgdata / "PG_VERSION").write_text("16\n")
    (pgdata / "postmaster.pid").write_text(f"999999\n{pgdata}\n{int(SLOT.timestamp()) - 86400}\n5432\n")
    (pgdata / "pg_wal" / "archive_status").mkdir(parents=True)
    (pgdata / "pg_wal" / "000000010000000000000006").write_bytes(b"\0" * 16)
    (pgdata / "pg_wal" / "archive_status" / "000000010000000000000005.done").write_text("")
    (pgdata / "pg_replslot" / "lifeboat_vm").mkdir(parents=True)
    (pgdata / "pg_replslot" / "lifeboat_vm" / "state").write_bytes(b"x")
    ts = tmp_path / "ts"
    ts.mkdir()
    label = replace(LABEL, spcmapfile=f"16384 {ts}\n")
    assert refusal(read_facts(pgdata, label), label) == ""
    done = prepare(pgdata, label)
    assert "removed postmaster.pid (the snapshotted server's)" in done
    assert any("lifeboat_vm" in line for line in done)
    assert (pgdata / "backup_label").read_text() == LABELFILE
    assert (pgdata / "tablespace_map").read_text() == f"16384 {ts}\n"
    assert not (pgdata / "postmaster.pid").exists() and list((pgdata / "pg_replslot").iterdir()) == []
    assert [p.name for p in (pgdata / "pg_wal").rglob("*")] == ["archive_status"]
    # a second run finds the label it wrote
    assert "it has backup_label, tablespace_map already" in refusal(read_facts(pgdata, label), label)
    ts.rmdir()
    assert "tablespace directory" in refusal(read_facts(pgdata, label), label)


def test_a_standby_s_snapshot_loses_its_standby_signal(tmp_path: Path) -> None:
    pgdata = tmp_path / "data"
    (pgdata / "global").mkdir(parents=True)
    (pgdata / "global" / "pg_control").write_bytes(control(IN_ARCHIVE_RECOVERY))
    (pgdata / "PG_VERSION").write_text("16\n")
    (pgdata / "standby.signal").write_text("")
    standby = replace(LABEL, from_standby=True)
    assert "it has standby.signal already" in refusal(read_facts(pgdata, LABEL), LABEL)
    assert refusal(read_facts(pgdata, standby), standby) == ""
    assert any("removed standby.signal" in line for line in prepare(pgdata, standby))
    assert not (pgdata / "standby.signal").exists()
