"""Incremental base chains without AWS or PostgreSQL: retention's closure, which base recovery may start from, which
base the next one is taken against, and the refusals of a server that cannot take one."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from chalicelib.errors import ConfigError, NotFoundError, RestoreError
from chalicelib.pitr.basebackup import BaseBackup, BaseObject, lineage
from chalicelib.pitr.chains import (
    chain_closure,
    chain_of,
    chain_problem,
    check_incremental_server,
    choose_parent,
    restorable,
)
from chalicelib.pitr.recover import RecoveryTarget, choose_base

DAY0 = datetime(2026, 3, 1, 3, 0, tzinfo=UTC)


def _base(backup_id: str, day: int, parent: BaseBackup | None = None, version: int = 170011) -> BaseBackup:
    started = DAY0 + timedelta(days=day)
    return BaseBackup(
        target="shop",
        backup_id=backup_id,
        started_at=started,
        finished_at=started + timedelta(minutes=5),
        server_version_num=version,
        timeline=1,
        start_lsn=f"0/{day + 2:X}000028",
        end_lsn=f"0/{day + 2:X}000100",
        segment_size=16 * 1024 * 1024,
        tar_size=1,
        tar_sha256="0",
        objects=[BaseObject(role="data", key="k", size=1, sha256="0")],
        backup_label="",
        **lineage(parent),
    )


def _chain(length: int) -> list[BaseBackup]:
    """A full base `f` on day 0, then incrementals i1 .. i<length>, one a day, each against the one before."""
    bases = [_base("f", 0)]
    for n in range(1, length + 1):
        bases.append(_base(f"i{n}", n, bases[-1]))
    return bases


def test_lineage_records_the_parent_and_the_ancestors_full_first() -> None:
    f, i1, i2 = _chain(2)
    assert (f.parent, f.chain) == (None, [])
    assert (i1.parent, i1.chain) == ("f", ["f"])
    assert (i2.parent, i2.chain) == ("i1", ["f", "i1"])


def test_chain_closure_keeps_every_ancestor_of_a_kept_incremental() -> None:
    bases = [*_chain(3), _base("g", 10)]
    assert chain_closure({"i2"}, bases) == {"f", "i1", "i2"}
    assert chain_closure({"g", "f"}, bases) == {"g", "f"}
    assert chain_closure(set(), bases) == set()
    # An ancestor already gone from the listing is still named: the caller must not think the chain whole.
    assert chain_closure({"i3"}, [b for b in bases if b.backup_id != "i1"]) == {"f", "i1", "i2", "i3"}


def test_an_incremental_is_restorable_only_with_its_whole_linked_chain() -> None:
    f, i1, i2 = _chain(2)
    assert chain_of(i2, [f, i1, i2]) == [f, i1, i2]
    assert chain_of(f, [f]) == [f]
    assert "needs base i1" in str(chain_problem(i2, {"f": f, "i2": i2}))
    with pytest.raises(RestoreError, match=r"needs base f.*take a new full base backup"):
        chain_of(i1, [i1, i2])
    # A parent whose own manifest says something else (another lineage under the same id) breaks the chain.
    forged = _base("i1", 1)  # a full base where i2's chain says an incremental against f
    assert "not linked" in str(chain_problem(i2, {"f": f, "i1": forged, "i2": i2}))
    older_major = _base("f", 0, version=160004)
    assert "another major" in str(chain_problem(i1, {"f": older_major, "i1": i1}))
    usable, refused = restorable([i1, i2])
    assert usable == [] and set(refused) == {"i1", "i2"}


def test_recovery_starts_from_an_incremental_like_a_base_but_never_from_a_broken_chain() -> None:
    f, i1, i2 = _chain(2)
    after_i2 = RecoveryTarget(time=i2.finished_at + timedelta(hours=1))
    assert choose_base([f, i1, i2], after_i2) is i2
    assert choose_base([f, i1, i2], RecoveryTarget(time=i1.finished_at + timedelta(hours=1))) is i1
    assert choose_base([f, i1, i2], RecoveryTarget(lsn=i1.end_lsn)) is i1
    # i1's manifest gone: i2 cannot be combined; the full base (replaying more WAL) still can.
    assert choose_base([f, i2], after_i2) is f
    with pytest.raises(NotFoundError, match="incremental base i2 needs base f"):
        choose_base([i1, i2], after_i2)


def test_the_next_base_is_incremental_until_full_every_then_full() -> None:
    assert choose_parent([], 6, 17, []) == (None, "no base backup yet")
    for length in range(0, 3):
        bases = _chain(length)
        parent, why = choose_parent(bases, 3, 17, [])
        assert parent is bases[-1], why
    parent, why = choose_parent(_chain(3), 3, 17, [])
    assert parent is None and "chain of 3 incremental(s)" in why
    parent, why = choose_parent(_chain(1), 1, 17, [])
    assert parent is None


def test_the_next_base_is_full_after_a_gap_a_broken_chain_or_another_major() -> None:
    bases = _chain(1)
    gap_after = {
        "after": "x",
        "before": "y",
        "reason": "slot lost",
        "detected_at": (DAY0 + timedelta(days=2)).isoformat(),
    }
    gap_before = {**gap_after, "detected_at": (DAY0 - timedelta(days=1)).isoformat()}
    assert choose_parent(bases, 6, 17, [gap_before])[0] is bases[-1]
    parent, why = choose_parent(bases, 6, 17, [gap_after])
    assert parent is None and "gap" in why
    parent, why = choose_parent(bases[1:], 6, 17, [])
    assert parent is None and "needs base f" in why
    parent, why = choose_parent(bases, 6, 18, [])
    assert parent is None and "PostgreSQL 17, the server 18" in why


def test_a_server_that_cannot_take_incremental_bases_is_refused_saying_what_to_set() -> None:
    with pytest.raises(ConfigError, match=r"needs PostgreSQL 17 or newer.*is PostgreSQL 16.*wal.incremental to false"):
        check_incremental_server("shop", 16)
    with pytest.raises(ConfigError, match=r"summarize_wal = on.*it is 'off'.*ALTER SYSTEM SET summarize_wal = on"):
        check_incremental_server("shop", 17, "off")
    check_incremental_server("shop", 17)
    check_incremental_server("shop", 18, "on")
