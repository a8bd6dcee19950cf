"""Drill fixtures: a logical target `shop` on the session's PostgreSQL with its drill restoring into the `scratch`
target (the same server), a target whose scratch server refuses connections, fixed clocks and seeds, and metrics
captured in-process (the real recorder prints EMF; the drill takes its sink by injection)."""

from __future__ import annotations

import dataclasses
import random
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from chalicelib import wiring
from chalicelib.config import Config, load_file
from chalicelib.drills.build import drill_services
from chalicelib.drills.services import DrillServices
from chalicelib.logical.dump import run_logical_backup
from devstack.local import LocalStack, target, write_config
from devstack.postgres import PostgresServer

NOW = datetime(2026, 10, 20, 6, 0, tzinfo=UTC)
BACKUP_SLOTS = [datetime(2026, 10, d, 3, tzinfo=UTC) for d in (17, 18, 19)]


@dataclass
class Metrics:
    calls: list[tuple[str, float, str, str | None]] = field(default_factory=list)

    def __call__(self, name: str, value: float, unit: str, target: str | None = None) -> None:
        self.calls.append((name, value, unit, target))

    def names(self) -> list[str]:
        return [c[0] for c in self.calls]


def free_port() -> int:
    """A port nothing listens on (bound, then released): connections to it are refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def drill_targets(pg: PostgresServer, secret: str, checks: list[dict[str, str]] | None = None) -> list[dict[str, Any]]:
    shop = target("shop", pg.port, secret, schedule="cron(0 3 * * ? *)")
    shop["restore_into"] = ["scratch"]  # a logical drill's scratch server is one the target may restore into
    shop["drill"] = {
        "schedule": "cron(0 6 ? * MON *)",
        "pick": "latest",
        "into": {"target": "scratch"},
        "checks": checks or [],
        "rto_seconds": 600,
        "owner": "dba-team@example.com",
    }
    scratch = target("scratch", pg.port, secret, schedule=None)
    del scratch["logical"]
    refused = target("refused", free_port(), secret, schedule=None)
    del refused["logical"]
    return [shop, scratch, refused]


@pytest.fixture
def write_drill_config(
    aws: LocalStack, pg: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Callable[..., Config]:
    def write(targets: list[dict[str, Any]] | None = None, **settings: Any) -> Config:
        path = write_config(
            tmp_path / "lifeboat.json", aws.bucket, targets or drill_targets(pg, aws.secret_arn), **settings
        )
        monkeypatch.setenv("LIFEBOAT_CONFIG", str(path))
        return load_file(path)

    return write


@pytest.fixture
def backups(write_drill_config: Callable[..., Config]) -> Config:
    """Three daily backups of `shop` (17, 18, 19 October 2026)."""
    cfg = write_drill_config()
    svc = wiring.backup_services(cfg)
    for slot in BACKUP_SLOTS:
        assert run_logical_backup(svc, "shop", slot).status == "SUCCEEDED"
    return cfg


def services(cfg: Config, metrics: Metrics, now: datetime = NOW, seed: int = 7, **kw: Any) -> DrillServices:
    rng = random.Random(seed)  # noqa: S311  # a fixed seed: the drill ids and picks repeat
    return dataclasses.replace(drill_services(cfg), clock=lambda: now, rng=rng, metrics=metrics, **kw)


def drill_databases(pg: PostgresServer) -> list[str]:
    return pg.psql("SELECT datname FROM pg_database WHERE datname LIKE 'lifeboat_drill_%'").split()
