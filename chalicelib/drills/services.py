"""What a drill is given: clients and settings passed in (chalicelib.entrypoints builds them), a clock, a random
source and a metrics sink that tests replace, and hooks where a test stops a drill as a dying function would."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from chalicelib.adapters.dynamo import JobStore
from chalicelib.adapters.pgtools import Toolbox
from chalicelib.adapters.postgres import CredentialResolver, Login
from chalicelib.adapters.s3 import BackupStore
from chalicelib.config import Config
from chalicelib.drills.evidence import EvidenceStore
from chalicelib.drills.model import DrillRecord
from chalicelib.logical.catalog import Catalog
from chalicelib.observability import record
from chalicelib.restore.model import RestoreServices


def _now() -> datetime:
    return datetime.now(UTC)


def _same(login: Login) -> Login:
    return login


@dataclass
class DrillHooks:
    """Points where a test interrupts a drill (as a dying function would): called with the drill record."""

    after_create: Callable[[DrillRecord], None] | None = None


@dataclass
class DrillServices:
    """What a drill needs. `restore` only for snapshot drills (chalicelib.restore.snapshot's start and advance);
    `resolve_endpoint` maps a restored instance's endpoint to where it is reached (identity but in tests)."""

    config: Config
    store: BackupStore
    catalog: Catalog
    credentials: CredentialResolver
    toolbox: Toolbox
    evidence: EvidenceStore
    restore: RestoreServices | None = None
    claims: JobStore | None = None
    clock: Callable[[], datetime] = _now
    monotonic: Callable[[], float] = time.monotonic
    rng: random.Random = field(default_factory=random.SystemRandom)
    metrics: Callable[[str, float, str, str | None], None] = record
    resolve_endpoint: Callable[[Login], Login] = _same
