"""catalog: backup ids and the key layout, formatted and parsed in one place."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta, timezone

import pytest

from chalicelib.errors import BadRequestError
from chalicelib.logical.catalog import BackupId, Layout, format_stamp, parse_stamp


def at(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0, micro: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, second, micro, tzinfo=UTC)


BID = BackupId("prod", at(2026, 1, 2, 3, 4, 5))


def test_str() -> None:
    assert str(BID) == "logical:prod:20260102T030405Z"


def test_str_is_utc_whatever_the_zone() -> None:
    cet = timezone(timedelta(hours=1))
    assert str(BackupId("prod", datetime(2026, 1, 2, 4, 4, 5, tzinfo=cet))) == "logical:prod:20260102T030405Z"


@pytest.mark.parametrize(
    "text",
    [
        "logical:prod:20260102T030405Z",
        "logical:a:19991231T235959Z",
        "logical:orders-db-2:20260228T000000Z",
        f"logical:{'a' * 48}:20260102T030405Z",
        "snapshot:prod:20260102T030405Z",
    ],
)
def test_parse_round_trip(text: str) -> None:
    bid = BackupId.parse(text)
    assert str(bid) == text
    assert BackupId.parse(str(bid)) == bid
    assert bid.stamp.tzinfo is UTC


def test_parse_fields() -> None:
    assert BackupId.parse("logical:prod:20260102T030405Z") == BID
    assert BackupId.parse("logical:prod:20260102T030405Z").kind == "logical"


@pytest.mark.parametrize(
    "text",
    [
        "physical:prod:20260102T030405Z",
        "LOGICAL:prod:20260102T030405Z",
        "logical:Prod:20260102T030405Z",
        "logical:1prod:20260102T030405Z",
        "logical:prod:20260102T030405",
        "logical:prod:2026-01-02T03:04:05Z",
        "logical:prod",
        "prod:20260102T030405Z",
        "",
        "logical::20260102T030405Z",
        f"logical:{'a' * 49}:20260102T030405Z",
        "logical:prod:20260102T030405Z:extra",
    ],
)
def test_parse_rejects_malformed_ids(text: str) -> None:
    with pytest.raises(BadRequestError, match="is not a backup id"):
        BackupId.parse(text)


@pytest.mark.parametrize("stamp", ["20261340T000000Z", "20260230T000000Z", "20260102T250000Z", "20260102T006000Z"])
def test_parse_rejects_impossible_dates(stamp: str) -> None:
    with pytest.raises(BadRequestError, match="has an impossible date"):
        BackupId.parse(f"logical:prod:{stamp}")


def test_stamp_round_trip() -> None:
    assert format_stamp(at(2026, 1, 2, 3, 4, 5)) == "20260102T030405Z"
    assert parse_stamp("20260102T030405Z") == at(2026, 1, 2, 3, 4, 5)


def test_ids_order_by_target_then_time() -> None:
    ids = [BackupId("b", at(2026, 1, 1)), BackupId("a", at(2026, 1, 2)), BackupId("a", at(2025, 12, 31))]
    assert sorted(ids) == [ids[2], ids[1], ids[0]]


# --- Layout -------------------------------------------------------------------------------------------------------


def test_keys() -> None:
    layout = Layout("pg/")
    base = "pg/logical/prod/2026/01/02/20260102T030405Z/"
    assert layout.target_prefix("prod") == "pg/logical/prod/"
    assert layout.backup_prefix(BID) == base
    assert layout.dump_key(BID) == base + "database.dump"
    assert layout.dump_key(BID, "directory") == base + "database.dir/"
    assert layout.globals_key(BID) == base + "globals.sql"
    assert layout.manifest_key(BID) == base + "manifest.json"
    assert layout.failed_prefix == "pg/failed/"
    started = at(2026, 1, 2, 3, 4, 6, 789)
    assert layout.failed_key(BID, started) == "pg/failed/prod/20260102T030405Z_@_20260102T030406000789Z.json"
    assert Layout().manifest_key(BID) == "logical/prod/2026/01/02/20260102T030405Z/manifest.json"


def test_failed_records_never_collide_across_databases_and_attempts() -> None:
    """review13 F10: every database of a whole-server run, and every retry of a slot, has its own FAILED record."""
    layout = Layout()
    first, retry = at(2026, 11, 29, 3, 0, 1), at(2026, 11, 29, 3, 0, 1, 1)
    run = BackupId("server", at(2026, 11, 29, 3))
    keys = {
        layout.failed_key(bid, when)
        for bid in (run, run.for_database("orders"), run.for_database("hr"), run.for_database("@"))
        for when in (first, retry)
    }
    assert len(keys) == 8
    assert all(k.startswith("failed/server/") for k in keys)  # the lifecycle rule's prefix
    assert (
        layout.failed_key(run.for_database("a/b"), first)
        == "failed/server/20261129T030000Z_a%2Fb_20261129T030001000000Z.json"
    )


def test_a_target_prefix_never_covers_another_target() -> None:
    layout = Layout()
    other = BackupId("prod-eu", BID.stamp)
    assert not layout.manifest_key(other).startswith(layout.target_prefix("prod"))
    assert layout.manifest_key(BID).startswith(layout.target_prefix("prod"))


def test_keys_sort_chronologically_as_strings() -> None:
    rng = random.Random(20260102)  # noqa: S311 - reproducible test data, not cryptography
    start = at(1999, 12, 31, 23, 59, 59)
    stamps = sorted({start + timedelta(seconds=rng.randrange(0, 40 * 365 * 86400)) for _ in range(500)})
    stamps += [at(2026, 1, 1), at(2026, 1, 1, 0, 0, 1), at(2026, 1, 10), at(2026, 10, 1), at(2026, 9, 30, 23, 59, 59)]
    layout = Layout("pg/")
    keys = [layout.manifest_key(BackupId("prod", s)) for s in stamps]
    assert sorted(keys) == [layout.manifest_key(BackupId("prod", s)) for s in sorted(stamps)]
    failed = [layout.failed_key(BackupId("prod", s), s) for s in stamps]
    assert sorted(failed) == [layout.failed_key(BackupId("prod", s), s) for s in sorted(stamps)]


@pytest.mark.parametrize("prefix", ["", "pg/", "team/pg/"])
def test_parse_manifest_key_inverts_manifest_key(prefix: str) -> None:
    layout = Layout(prefix)
    for bid in (BID, BackupId("a", at(2000, 2, 29, 23, 59, 59)), BackupId("orders-db-2", at(2199, 12, 31))):
        assert layout.parse_manifest_key(layout.manifest_key(bid)) == bid


@pytest.mark.parametrize(
    "key",
    [
        "pg/logical/prod/2026/01/02/20260102T030405Z/database.dump",
        "pg/logical/prod/2026/01/02/20260102T030405Z/globals.sql",
        "pg/failed/prod/20260102T030405Z.json",
        "pg/logical/prod/2026/01/02/manifest.json",
        "pg/logical/prod/2026/01/02/20260102T030405Z/x/manifest.json",
        "pg/logical/prod/2026/01/02/20261340T000000Z/manifest.json",
        "pg/logical/prod/2026/01/02/not-a-stamp/manifest.json",
        "pg/snapshot/prod/2026/01/02/20260102T030405Z/manifest.json",
        "other/logical/prod/2026/01/02/20260102T030405Z/manifest.json",
        "pg/pg/logical/prod/2026/01/02/20260102T030405Z/manifest.json",
    ],
)
def test_parse_manifest_key_rejects_other_keys(key: str) -> None:
    assert Layout("pg/").parse_manifest_key(key) is None


@pytest.mark.parametrize(
    "key",
    [
        "logical/prod/2026/01/02/20260102T030405Z/manifest.json",  # outside the layout's prefix "pg/"
        "pg/logical/prod/1999/12/31/20260102T030405Z/manifest.json",  # folders disagree with the stamp
        "pg/logical/PROD/2026/01/02/20260102T030405Z/manifest.json",  # not a target name: str(id) won't parse
    ],
)
def test_parse_manifest_key_rejects_keys_manifest_key_cannot_produce(key: str) -> None:
    assert Layout("pg/").parse_manifest_key(key) is None
