"""The HTTP API's operations, independent of Chalice: backups on demand, the catalog, idempotent restores.

Every operation works on one target, the one the route's path names (/targets/{target}/...), so an IAM
policy on the path decides who may do what to which target. Restores themselves live in chalicelib.restore;
this module adds what only the web needs (body size and JSON parsing, Idempotency-Key). Errors are mapped
to HTTP responses in app.py only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import ValidationError

from chalicelib.adapters.dynamo import IDEMPOTENCY_KEY_PREFIX
from chalicelib.drills.evidence import EvidenceStore
from chalicelib.drills.views import proof, proven_backups
from chalicelib.errors import BadRequestError, ConflictError
from chalicelib.logical.catalog import BackupId
from chalicelib.logical.signing import ManifestSigning
from chalicelib.physical.catalog import list_snapshots
from chalicelib.pitr.catalog import base_entry, read_wal_listing
from chalicelib.pitr.sealing import Sealer
from chalicelib.restore.model import RestoreServices
from chalicelib.restore.requests import RestoreRequest, _Body, describe_validation_error
from chalicelib.restore.service import start_restore
from chalicelib.scheduling.dispatch import BackupQueue, DueBackup

MAX_BODY_BYTES = 16 * 1024


class BackupRequest(_Body):
    kind: Literal["logical", "physical"] = "logical"


@dataclass
class ApiServices(RestoreServices):
    """The restore services plus the backup queue (POST /backups)."""

    backup_queue: BackupQueue | None = None


def parse_json(raw: str | bytes | None) -> dict[str, Any]:
    if raw is not None and len(raw) > MAX_BODY_BYTES:
        raise BadRequestError(f"the body is {len(raw)} bytes; the limit is {MAX_BODY_BYTES}")
    try:
        body = json.loads(raw or b"null")
    except (ValueError, UnicodeDecodeError):
        raise BadRequestError("the body is not valid JSON") from None
    except RecursionError:  # deeply nested arrays/objects: json's parser recurses per level
        raise BadRequestError("the body is nested too deeply") from None
    if not isinstance(body, dict):
        raise BadRequestError("the body must be a JSON object")
    return body


def parse_backup_request(body: dict[str, Any]) -> BackupRequest:
    try:
        return BackupRequest.model_validate(body)
    except ValidationError as exc:
        raise BadRequestError(describe_validation_error(exc)) from None


def request_backup(svc: ApiServices, name: str, req: BackupRequest) -> dict[str, Any]:
    target = svc.config.target(name)
    if req.kind == "physical" and target.physical is None:
        raise BadRequestError(f"target {name!r} has no physical section")
    if req.kind == "logical" and target.connection is None:
        raise BadRequestError(f"target {name!r} has no connection for a logical backup")
    if svc.backup_queue is None:
        raise BadRequestError("on-demand backups need LIFEBOAT_BACKUP_QUEUE_URL")
    slot = datetime.now(UTC).replace(microsecond=0)
    svc.backup_queue.send([DueBackup(name, req.kind, slot, trigger="on-demand")])
    kind = "logical" if req.kind == "logical" else "snapshot"
    return {
        "backup_id": str(BackupId(name, slot, kind)),
        "target": name,
        "kind": req.kind,
        "status": "QUEUED",
        "queued_at": slot.isoformat(),
    }


def list_backups(
    svc: ApiServices, target: str, kind: str | None, limit: int = 50, evidence: EvidenceStore | None = None
) -> dict[str, Any]:
    """The target's catalog, newest first; each complete backup's `last_proven`: its newest successful restore drill
    (verified evidence, one read of the drill records), or null. A target with a `wal` section also lists its base
    backups (kind `base`) and `wal`: its recoverable window (chalicelib.pitr.catalog); `wal` is null otherwise."""
    config = svc.config.target(target)
    if kind not in (None, "logical", "snapshot", "base"):
        raise BadRequestError("kind must be 'logical', 'snapshot' or 'base'")
    entries: list[dict[str, Any]] = []
    if kind in (None, "logical"):
        for m in svc.catalog.list_backups(target, limit=limit):
            entries.append(
                {
                    "backup_id": m.backup_id,
                    "kind": "logical",
                    "target": m.target,
                    "time": m.slot.isoformat(),
                    "size": m.size,
                    "status": m.status,
                    "retention_class": m.retention_class,
                    "server_version": m.server_version,
                    "database": m.database,
                }
            )
    if kind in (None, "snapshot") and svc.config.target(target).physical is not None and svc.snapshots:
        for e in list_snapshots(svc.snapshots, target):
            entries.append(
                {
                    "backup_id": e.backup_id,
                    "kind": "snapshot",
                    "target": e.target,
                    "time": e.slot.isoformat(),
                    "size": e.size,
                    "status": e.status,
                    "retention_class": e.retention_class,
                    "server_version": e.server_version or None,
                    "region": e.region,
                    "resource_ids": e.resource_ids,
                }
            )
    wal = None
    if kind in (None, "base") and config.wal is not None:
        signing = svc.catalog.signing
        sealer = Sealer.from_signing(signing if isinstance(signing, ManifestSigning) else None)
        listing = read_wal_listing(svc.catalog.store, svc.config.settings.prefix, target, sealer)
        entries.extend(base_entry(base) for base in listing.bases)
        wal = listing.window
    entries.sort(key=lambda e: e["time"], reverse=True)
    entries = entries[:limit]
    complete = [(target, e["backup_id"]) for e in entries if e["status"] == "SUCCEEDED" and e["kind"] != "base"]
    drills = proven_backups(evidence, complete) if evidence is not None and complete else {}
    for entry in entries:
        entry["last_proven"] = proof(drills[entry["backup_id"]]) if entry["backup_id"] in drills else None
    return {"target": target, "backups": entries, "wal": wal}


def start_restore_once(
    svc: ApiServices,
    req: RestoreRequest,
    idempotency_key: str | None,
    table: str | None,
    lambda_context: Any = None,
    scope: str = "",
) -> dict[str, Any]:
    """start_restore, deduplicated by the client's Idempotency-Key through Powertools Idempotency.

    The same key with the same body returns the first job; the same key with another body is refused. Keys
    live in `scope` (the path's target and the caller's identity): one caller's key never answers, or blocks,
    another's request.
    With the handler's Lambda context, a request that dies mid-way (a timeout) leaves its key "in progress"
    only until the invocation's deadline, not for the record's whole day: a retry then runs. Without one
    (chalice local, tests) the in-progress record lasts as long as the record.
    """
    # long because Powertools' idempotency is set up here, lazily (cold starts): imports, config, the call.
    if not idempotency_key:
        return start_restore(svc, req).public()
    if not table:
        raise BadRequestError("Idempotency-Key needs LIFEBOAT_JOBS_TABLE")
    if len(idempotency_key) > 128:
        raise BadRequestError("Idempotency-Key is longer than 128 characters")
    # Powertools Idempotency (and the DynamoDB layer under it) loads only for requests that use it: cold starts.
    from aws_lambda_powertools.utilities.idempotency import IdempotencyConfig, idempotent_function
    from aws_lambda_powertools.utilities.idempotency.exceptions import (
        IdempotencyAlreadyInProgressError,
        IdempotencyValidationError,
    )

    persistence = svc.jobs.records.idempotency_persistence()
    config = IdempotencyConfig(
        event_key_jmespath="key",
        payload_validation_jmespath="body",
        expires_after_seconds=24 * 3600,
        raise_on_no_idempotency_key=True,
    )
    if callable(getattr(lambda_context, "get_remaining_time_in_millis", None)):
        config.register_lambda_context(lambda_context)

    def run(request: dict[str, Any]) -> dict[str, Any]:
        return start_restore(svc, req).public()

    once = idempotent_function(
        run,
        data_keyword_argument="request",
        persistence_store=persistence,
        config=config,
        key_prefix=IDEMPOTENCY_KEY_PREFIX,
    )
    try:
        result: dict[str, Any] = once(
            request={"key": f"{scope}|{idempotency_key}", "body": req.model_dump(mode="json")}
        )
    except IdempotencyValidationError:
        raise ConflictError("this Idempotency-Key was used with a different body: use a new key") from None
    except IdempotencyAlreadyInProgressError:
        raise ConflictError("a request with this Idempotency-Key is still being processed: retry shortly") from None
    if result.get("restore_id"):
        return svc.jobs.get(str(result["restore_id"])).public()  # the job as it is now
    return result
