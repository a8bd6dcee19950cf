"""What a drill may drop, against the session's real PostgreSQL and moto (security review: the jobs table is not
proof). The runner and the sweeper drop only the drill id's own `lifeboat_drill_<12 hex digits>`, and only while it
carries the marker the drill's restore wrote: a forged RUNNING record naming another database (the review's PoC),
one whose id is not a drill's, or a database that merely has a scratch name, is left alone and reported."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from datetime import timedelta

import pytest

from chalicelib.config import Config
from chalicelib.drills.logical import drop_scratch
from chalicelib.drills.model import DrillRecord, new_drill_id, scratch_database
from chalicelib.drills.runner import run_drill
from chalicelib.drills.services import DrillServices
from chalicelib.drills.sweep import sweep_drills
from devstack.postgres import PostgresServer
from tests.drills.conftest import NOW, Metrics, drill_databases, services

VICTIM = "drill_victim"
LOGIN = "lifeboat_backup"  # the drill's login on the scratch server (tests/drills/conftest.py): it owns the victim


def exists(pg: PostgresServer, name: str) -> bool:
    return pg.psql(f"SELECT count(*) FROM pg_database WHERE datname = '{name}'").strip() == "1"


@pytest.fixture
def victim(pg: PostgresServer) -> Iterator[str]:
    """A database the drill's login could drop (it owns it): only the drill's own checks keep it alive."""
    pg.psql(f'DROP DATABASE IF EXISTS "{VICTIM}" WITH (FORCE)')
    pg.psql(f'CREATE DATABASE "{VICTIM}" OWNER {LOGIN}')
    yield VICTIM
    pg.psql(f'DROP DATABASE IF EXISTS "{VICTIM}" WITH (FORCE)')


def forge(svc: DrillServices, drill_id: str, database: str) -> None:
    """What any role with PutItem on the jobs table can write: a RUNNING logical drill whose lease has ended."""
    rec = DrillRecord(
        drill_id=drill_id,
        target="shop",
        kind="logical",
        pick="latest",
        started_at=NOW - timedelta(hours=2),
        into={"target": "scratch", "database": database},
        lease_until=NOW - timedelta(hours=1),
    )
    assert svc.evidence.table is not None
    assert svc.evidence.table.put(rec.drill_id, "RUNNING", rec.started_at, rec.model_dump_json(), rec.lease_until)


def test_a_forged_record_naming_a_real_database_cannot_make_the_sweeper_drop_it(
    pg: PostgresServer, victim: str, write_drill_config: Callable[..., Config]
) -> None:
    svc = services(write_drill_config(), Metrics())
    forged = "d-00000000000000aa"
    forge(svc, forged, victim)
    report = sweep_drills(svc, NOW)
    assert exists(pg, victim), "the sweeper dropped a database a forged record named"
    assert len(report["refused"]) == 1 and forged in report["refused"][0] and repr(victim) in report["refused"][0]
    rec = svc.evidence.get(forged)
    assert rec is not None and rec.status == "FAILED" and rec.error is not None
    assert rec.error.code == "drill_record_forged"
    assert rec.cleanup == {"database": scratch_database(forged), "dropped": False, "reason": "it does not exist"}


def test_a_record_whose_id_is_not_a_drills_is_refused(
    pg: PostgresServer, victim: str, write_drill_config: Callable[..., Config]
) -> None:
    svc = services(write_drill_config(), Metrics())
    forge(svc, "d-zz", victim)
    report = sweep_drills(svc, NOW)
    assert exists(pg, victim)
    assert report["refused"] == ["'d-zz' is not a drill id (d-<16 hex digits>): a forged record, left alone"]


def test_a_database_with_a_scratch_name_but_not_the_drills_marker_survives(
    pg: PostgresServer, write_drill_config: Callable[..., Config]
) -> None:
    """The sweeper's drop of an abandoned drill's scratch database, and the runner's after a failed restore, both
    read the database's comment first: only the drill's own restore marker allows the drop."""
    svc = services(write_drill_config(), Metrics())
    abandoned = new_drill_id(random.Random(1))  # noqa: S311  # a fixed id
    squatted = scratch_database(abandoned)
    pg.psql(f'CREATE DATABASE "{squatted}" OWNER {LOGIN}')
    try:
        forge(svc, abandoned, squatted)  # consistent with its id, but the database is not the drill's
        report = sweep_drills(svc, NOW)
        assert exists(pg, squatted)
        rec = svc.evidence.get(abandoned)
        assert rec is not None and rec.error is not None and rec.error.code == "drill_abandoned"
        assert rec.cleanup["dropped"] is False and f"does not carry drill {abandoned}'s marker" in rec.cleanup["reason"]
        assert report["abandoned"] == [abandoned]
        # With the restore's marker naming the drill, it is the drill's: dropped.
        pg.psql(f"COMMENT ON DATABASE \"{squatted}\" IS 'pg-lifeboat restoring {abandoned} from logical:shop:x'")
        scratch = svc.config.target("scratch").connection
        assert scratch is not None
        dropped = drop_scratch(svc.credentials.restore_login(scratch), abandoned)
        assert dropped == {"database": squatted, "dropped": True}
        assert not exists(pg, squatted)
    finally:
        pg.psql(f'DROP DATABASE IF EXISTS "{squatted}" WITH (FORCE)')


def test_the_runner_does_not_drop_a_database_that_already_had_its_scratch_name(
    pg: PostgresServer, backups: Config
) -> None:
    """The next drill's id comes from the seeded generator: a database created under its scratch name beforehand
    makes the restore refuse (it exists) and the drill fail, and is not dropped by the drill's cleanup."""
    upcoming = scratch_database(new_drill_id(random.Random(7)))  # noqa: S311  # services(seed=7) draws this id
    pg.psql(f'CREATE DATABASE "{upcoming}" OWNER {LOGIN}')
    try:
        rec = run_drill(services(backups, Metrics(), seed=7), "shop", NOW)
        assert rec is not None and rec.into["database"] == upcoming
        assert rec.status == "FAILED" and rec.cleanup["dropped"] is False, rec
        assert exists(pg, upcoming)
    finally:
        pg.psql(f'DROP DATABASE IF EXISTS "{upcoming}" WITH (FORCE)')
    assert drill_databases(pg) == []
