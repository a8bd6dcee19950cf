"""The drills' services, built at the edge (the worker, the sweeper, the command line) from chalicelib.wiring's
clients and settings: nothing under chalicelib.drills builds a client or reads the environment itself."""

from __future__ import annotations

from chalicelib import wiring
from chalicelib.adapters.dynamo import DrillTable, RestoreJobTable
from chalicelib.adapters.sqs import Queue
from chalicelib.config import Config
from chalicelib.drills.evidence import EvidenceStore
from chalicelib.drills.services import DrillServices
from chalicelib.drills.settings import drill_kind
from chalicelib.pitr.sealing import Sealer
from chalicelib.restore.model import RestoreJobStore, RestoreQueue, RestoreServices


def evidence_store(cfg: Config) -> EvidenceStore:
    table = wiring.settings().jobs_table
    return EvidenceStore(
        DrillTable(wiring.client("dynamodb"), table) if table else None,
        wiring.store(cfg),
        cfg.settings.prefix,
        cfg.settings.object_lock_mode,
        sealer=Sealer.from_signing(wiring.signing(cfg)),  # GenerateMac to write evidence, VerifyMac to show it
    )


def drill_services(cfg: Config | None = None) -> DrillServices:
    cfg = cfg or wiring.load_config()
    catalog = wiring.catalog(cfg)
    restore = None
    table = wiring.settings().jobs_table
    if table and any(t.drill is not None and drill_kind(t) == "snapshot" for t in cfg.targets):
        # Snapshot drills use chalicelib.restore.snapshot's start and advance, which read only the configuration
        # and the snapshot services; the job store and the queue are there because RestoreServices has them.
        restore = RestoreServices(
            config=cfg,
            catalog=catalog,
            jobs=RestoreJobStore(RestoreJobTable(wiring.client("dynamodb"), table)),
            restore_queue=RestoreQueue(Queue(wiring.client("sqs"), wiring.settings().restore_queue_url or "unused")),
            credentials=wiring.credentials(),
            toolbox=wiring.toolbox(),
            snapshots=wiring.snapshot_services(cfg),
        )
    return DrillServices(
        config=cfg,
        store=catalog.store,
        catalog=catalog,
        credentials=wiring.credentials(),
        toolbox=wiring.toolbox(),
        evidence=evidence_store(cfg),
        restore=restore,
        claims=wiring.jobs(),
    )
