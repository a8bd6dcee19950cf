"""The pure parts of point-in-time recovery: names, continuity, the tar tap, choices and settings."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from chalicelib.adapters.s3 import ObjectInfo
from chalicelib.errors import BadRequestError, IntegrityError, NotFoundError
from chalicelib.pitr import recover
from chalicelib.pitr.basebackup import BaseBackup, BaseObject, TarTap, label_facts, manifest_end_lsn
from chalicelib.pitr.slot import SlotState, lock_key, slot_problems
from chalicelib.pitr.walarchive import SHA256_META, SIZE_META, WalEntry, compress, decompress_verified
from chalicelib.pitr.walnames import Segment, WalLayout, continuity, format_lsn, parse_lsn

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def test_segment_names_and_lsns_round_trip() -> None:
    seg = Segment.parse("0000000200000001000000FF")
    assert (seg.timeline, seg.number) == (2, 0x1FF)
    assert seg.following().name == "000000020000000200000000"
    assert Segment.containing(parse_lsn("1/FF000028"), 2).name == seg.name
    assert format_lsn(parse_lsn("16/b374d848")) == "16/B374D848"
    with pytest.raises(BadRequestError, match="not an LSN"):
        parse_lsn("16-B3")
    with pytest.raises(BadRequestError, match="not a WAL segment name"):
        Segment.parse("00000001000000000000001")


def test_layout_keys_parse_back() -> None:
    layout = WalLayout("pg/", "shop")
    seg = Segment(1, 5)
    assert layout.segment_key(seg) == "pg/wal/shop/00000001/000000010000000000000005"
    assert layout.parse_key(layout.partial_key(seg)) == ("partial", seg)
    assert layout.parse_key(layout.history_key(2)) == ("history", 2)
    assert layout.parse_key("pg/wal/shop/gaps/x.json") is None
    assert layout.parse_key("pg/wal/shop/00000002/000000010000000000000005") is None  # folder and name disagree


def test_continuity_accepts_the_same_next_or_a_switch_and_reports_the_rest() -> None:
    assert continuity(None, Segment(1, 9)) is None
    assert continuity(Segment(1, 4), Segment(1, 4)) is None
    assert continuity(Segment(1, 4), Segment(1, 5)) is None
    assert continuity(Segment(1, 4), Segment(2, 4)) is None
    skipped = continuity(Segment(1, 4), Segment(1, 7))
    assert skipped is not None and "2 segment(s)" in skipped.reason and skipped.after == Segment(1, 4).name
    back = continuity(Segment(1, 4), Segment(1, 2))
    assert back is not None and "backwards" in back.reason


def test_damaged_wal_is_refused() -> None:
    data = bytes(range(256)) * 64
    meta = {SHA256_META: hashlib.sha256(data).hexdigest(), SIZE_META: str(len(data))}
    blob = compress(data)
    assert decompress_verified(blob, meta, "x") == data
    flipped = bytearray(blob)
    flipped[len(flipped) // 2] ^= 0xFF
    with pytest.raises(IntegrityError, match="damaged"):
        decompress_verified(bytes(flipped), meta, "x")
    with pytest.raises(IntegrityError, match="does not match"):
        decompress_verified(compress(data[:-1] + b"\x00"), meta, "x")
    with pytest.raises(IntegrityError, match="no sha256"):
        decompress_verified(blob, {}, "x")


def test_tar_tap_keeps_the_label_and_manifest_and_passes_everything() -> None:
    buf = io.BytesIO()
    members = {"backup_label": b"START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\nSTART TIMELINE: 1\n"}
    members["base/1/1234"] = b"x" * 1000
    members["backup_manifest"] = json.dumps({"WAL-Ranges": [{"Timeline": 1, "End-LSN": "0/2000100"}]}).encode()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, body in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    raw = buf.getvalue()
    tap = TarTap(io.BytesIO(raw))
    out = b"".join(iter(lambda: tap.read(77), b""))
    assert out == raw and tap.sha256 == hashlib.sha256(raw).hexdigest()
    assert set(tap.captured) == {"backup_label", "backup_manifest"}
    assert label_facts(tap.captured["backup_label"].decode()) == ("0/2000028", 1)
    assert manifest_end_lsn(tap.captured["backup_manifest"]) == "0/2000100"


def _base(backup_id: str, finished: datetime, start: str = "0/2000028", end: str = "0/2000100") -> BaseBackup:
    return BaseBackup(
        target="shop",
        backup_id=backup_id,
        started_at=finished - timedelta(seconds=5),
        finished_at=finished,
        server_version_num=150010,
        timeline=1,
        start_lsn=start,
        end_lsn=end,
        segment_size=16 * 1024 * 1024,
        tar_size=1,
        tar_sha256="0",
        objects=[BaseObject(role="data", key="k", size=1, sha256="0")],
        backup_label="",
    )


def _entries(*numbers: int) -> list[WalEntry]:
    layout = WalLayout("", "shop")
    return [
        WalEntry("segment", layout.segment_key(Segment(1, n)), Segment(1, n), 1, ObjectInfo("k", 1)) for n in numbers
    ]


def test_choose_base_takes_the_newest_finished_before_the_target() -> None:
    old, new = _base("a", T0), _base("b", T0 + timedelta(hours=1))
    pick = recover.choose_base
    assert pick([old, new], recover.RecoveryTarget(time=T0 + timedelta(minutes=30))).backup_id == "a"
    assert pick([old, new], recover.RecoveryTarget(time=T0 + timedelta(hours=2))).backup_id == "b"
    assert pick([old, new], recover.RecoveryTarget()).backup_id == "b"
    assert pick([old, new], recover.RecoveryTarget(lsn="0/2000100")).backup_id == "b"
    with pytest.raises(NotFoundError, match="no base backup finished before"):
        pick([old, new], recover.RecoveryTarget(time=T0 - timedelta(minutes=1)))


def test_wal_problems_name_missing_segments_and_gaps_in_the_way() -> None:
    base = _base("a", T0, start="0/2000028", end="0/4000100")
    later = recover.RecoveryTarget(time=T0 + timedelta(hours=1))
    assert recover.wal_problems(base, _entries(2, 3, 4, 5), [], later) == []
    assert "000000010000000000000003" in recover.wal_problems(base, _entries(2, 4, 5), [], later)[0]
    gap: dict[str, Any] = {
        "after": "000000010000000000000005",
        "before": "000000010000000000000009",
        "reason": "slot lost",
        "detected_at": (T0 + timedelta(minutes=30)).isoformat(),
    }
    assert "cannot pass it" in recover.wal_problems(base, _entries(2, 3, 4, 5), [gap], later)[0]
    before_gap = recover.RecoveryTarget(time=T0 + timedelta(minutes=10))
    assert recover.wal_problems(base, _entries(2, 3, 4, 5), [gap], before_gap) == []


def test_recovery_settings_and_restore_command() -> None:
    command = recover.fetch_command("lifeboat", "shop", "/etc/life boat.json", "eu-west-1")
    assert command == 'lifeboat --config "/etc/life boat.json" --region eu-west-1 wal-fetch --target shop %f "%p"'
    timed = recover.recovery_settings(recover.RecoveryTarget(time=T0), command)
    assert timed["recovery_target_time"] == "'2026-03-01 12:00:00+00:00'"
    assert timed["recovery_target_action"] == "'promote'"
    assert timed["restore_command"].startswith("'lifeboat --config") and "%f" in timed["restore_command"]
    latest = recover.recovery_settings(recover.RecoveryTarget(), command)
    assert "recovery_target_time" not in latest and "recovery_target_action" not in latest


def test_a_different_major_is_refused() -> None:
    with pytest.raises(BadRequestError, match="same major"):
        recover.check_major(_base("a", T0), 17)
    recover.check_major(_base("a", T0), 15)


def test_slot_problems() -> None:
    healthy = SlotState("s", True, 1, "reserved", "0/1", 1024)
    assert slot_problems(healthy, 10 * 1024 * 1024) == []
    assert "does not exist" in slot_problems(None, 1)[0]
    lost = SlotState("s", False, None, "lost", None, None)
    problems = slot_problems(lost, 1)
    assert any("removed WAL" in p for p in problems) and any("no receiver" in p for p in problems)
    assert "keep 20 MiB" in slot_problems(SlotState("s", True, 1, "reserved", "0/1", 20 * 1024 * 1024), 16 * 1024**2)[0]


def test_the_receivers_lock_key_is_stable_per_slot_and_a_bigint() -> None:
    key = lock_key("lifeboat_shop")
    assert key == lock_key("lifeboat_shop") != lock_key("lifeboat_other")
    assert -(2**63) <= key < 2**63
    assert SlotState("s", False, None, "lost", None, None).invalidated
    assert SlotState("s", False, None, "reserved", None, None).invalidated  # no restart_lsn: it holds nothing
    assert not SlotState("s", True, 1, "unreserved", "0/1", 1).invalidated  # may still return to reserved
