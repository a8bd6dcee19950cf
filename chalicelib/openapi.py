"""The OpenAPI description of the restore API, generated from the request and response models.

`python -m chalicelib.openapi > openapi.json` refreshes the committed copy; a test fails when they drift,
and the API tests validate every response against it. Every operation has an `operationId` (app.py's route
function, camelCased) so that client generators name their methods; `servers` is the stack's `EndpointURL`
output with its parts as variables (`restApiId` is the `RestAPIId` output).
"""

from __future__ import annotations

import json
import sys
from typing import Any

from pydantic import BaseModel, Field

from chalicelib.api import BackupRequest
from chalicelib.drills.model import DrillRecord
from chalicelib.restore.model import RestoreJob
from chalicelib.restore.requests import (
    LogicalRestoreRequest,
    PointInTimeRestoreRequest,
    SnapshotRestoreRequest,
    WalRecoveryRequest,
)


class ErrorResponse(BaseModel):
    error: str
    message: str


class DrillProof(BaseModel):
    """The newest successful restore drill of a backup whose signed evidence verifies."""

    drill_id: str
    finished_at: str


class BackupEntry(BaseModel):
    backup_id: str
    kind: str = Field(description="logical, snapshot, or base (a streaming target's base backup)")
    target: str
    time: str
    size: int
    status: str
    retention_class: str | None = Field(description="null for a base backup (wal-prune keeps bases by the policy)")
    server_version: str | None = None
    database: str | None = None
    region: str | None = None
    resource_ids: list[str] | None = None
    started_at: str | None = Field(default=None, description="a base backup: when pg_basebackup started")
    finished_at: str | None = Field(default=None, description="a base backup: when it ended (restorable from then)")
    timeline: int | None = None
    start_lsn: str | None = None
    end_lsn: str | None = None
    incremental_of: str | None = Field(default=None, description="an incremental base: its parent's stamp")
    last_proven: DrillProof | None = Field(description="when the backup was last proven restorable; null: never")


class WalSpan(BaseModel):
    base: str
    from_: str = Field(alias="from")
    to: str
    ended_by_gap: str | None


class WalWindow(BaseModel):
    """chalicelib.pitr.window.RecoverableWindow.as_dict: when a streaming target can be recovered to."""

    target: str
    earliest: str | None = Field(description="the oldest restorable time (the oldest usable base's end)")
    latest: str | None = Field(description="the newest archived WAL's upload time")
    broken: bool = Field(description="a gap after the newest usable base: later times need a new base backup")
    restorable_until: str | None
    spans: list[WalSpan]
    gaps: list[dict[str, Any]]
    unusable_bases: dict[str, str]
    newest_wal: str | None


class BackupList(BaseModel):
    target: str
    backups: list[BackupEntry]
    wal: WalWindow | None = Field(description="the recoverable window of a target with a wal section; null otherwise")


class BackupQueued(BaseModel):
    backup_id: str
    target: str
    kind: str
    status: str
    queued_at: str


class RestoreList(BaseModel):
    restores: list[RestoreJob]


class DrillList(BaseModel):
    """chalicelib.drills.views.list_drills: the target's drills, newest first, and its last success."""

    target: str
    last_success: DrillRecord | None
    drills: list[DrillRecord]


MODELS: list[type[BaseModel]] = [
    LogicalRestoreRequest,
    SnapshotRestoreRequest,
    PointInTimeRestoreRequest,
    WalRecoveryRequest,
    BackupRequest,
    RestoreJob,
    ErrorResponse,
    BackupList,
    BackupQueued,
    RestoreList,
    DrillList,
]


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Any]:
    return {str(c): {"description": "error", **_json(_ref("ErrorResponse"))} for c in codes}


TARGET = {
    "name": "target",
    "in": "path",
    "required": True,
    "description": "a configured target; IAM policies grant execute-api:Invoke per target on this path",
    "schema": {"type": "string"},
}


SERVERS = [
    {
        "url": "https://{restApiId}.execute-api.{region}.amazonaws.com/{basePath}",
        "description": "the stack's EndpointURL output: aws cloudformation describe-stacks --stack-name"
        " pg-lifeboat-<stage> --query \"Stacks[0].Outputs[?OutputKey=='EndpointURL'].OutputValue\" --output text",
        "variables": {
            "restApiId": {"default": "REST_API_ID", "description": "the stack's RestAPIId output"},
            "region": {"default": "eu-west-1", "description": "the stack's region"},
            "basePath": {"default": "api", "description": "api_gateway_stage in .chalice/config.json"},
        },
    }
]


def _paths() -> dict[str, Any]:
    """Every route of app.py (long because it is the table of operations, one literal per route)."""
    forms = ("LogicalRestoreRequest", "SnapshotRestoreRequest", "PointInTimeRestoreRequest", "WalRecoveryRequest")
    restore_body = {"oneOf": [_ref(form) for form in forms]}
    idempotency_key = {"name": "Idempotency-Key", "in": "header", "schema": {"type": "string", "maxLength": 128}}
    job = {"description": "the job", **_json(_ref("RestoreJob"))}
    return {
        "/targets/{target}/backups": {
            "get": {
                "operationId": "listBackups",
                "summary": "the target's catalog, newest first",
                "parameters": [
                    TARGET,
                    {"name": "kind", "in": "query", "schema": {"enum": ["logical", "snapshot", "base"]}},
                ],
                "responses": {
                    "200": {"description": "backups", **_json(_ref("BackupList"))},
                    **_errors(400, 404, 500, 502, 503),
                },
            },
            "post": {
                "operationId": "requestBackup",
                "summary": "an on-demand backup of the target",
                "parameters": [TARGET],
                "requestBody": _json(_ref("BackupRequest")),
                "responses": {
                    "202": {"description": "queued", **_json(_ref("BackupQueued"))},
                    **_errors(400, 404, 500, 502, 503),
                },
            },
        },
        "/targets/{target}/restores": {
            "post": {
                "operationId": "startRestore",
                "summary": "restore one of the target's backups (or its instance to a point in time) into a"
                " configured target; for a target with a WAL stream (time, latest or lsn): the recovery plan and the"
                " `lifeboat recover` command to run",
                "parameters": [TARGET, idempotency_key],
                "requestBody": _json(restore_body),
                "responses": {
                    "201": {
                        "description": "a WAL recovery plan (kind wal, SUCCEEDED): its result names the base, the WAL"
                        " range and the command (for a snapshot set: the snapshot restore that makes its volumes)",
                        **_json(_ref("RestoreJob")),
                        "headers": {"Location": {"schema": {"type": "string"}}},
                    },
                    "202": {**job, "headers": {"Location": {"schema": {"type": "string"}}}},
                    **_errors(400, 403, 404, 409, 429, 500, 502, 503),
                },
            },
            "get": {
                "operationId": "listRestores",
                "summary": "recent restores of the target's backups",
                "parameters": [TARGET],
                "responses": {
                    "200": {"description": "jobs", **_json(_ref("RestoreList"))},
                    **_errors(404, 500, 502, 503),
                },
            },
        },
        "/targets/{target}/drills": {
            "get": {
                "operationId": "listDrills",
                "summary": "the target's restore drills (the evidence), newest first, and its last success",
                "parameters": [TARGET],
                "responses": {
                    "200": {"description": "drills", **_json(_ref("DrillList"))},
                    **_errors(404, 500, 502, 503),
                },
            },
        },
        "/targets/{target}/restores/{restore_id}": {
            "get": {
                "operationId": "getRestore",
                "summary": "one restore's status (read only: the restore sweeper advances it)",
                "parameters": [
                    TARGET,
                    {"name": "restore_id", "in": "path", "required": True, "schema": {"type": "string"}},
                ],
                "responses": {"200": job, **_errors(404, 500, 502, 503)},
            },
        },
    }


def build() -> dict[str, Any]:
    schemas: dict[str, Any] = {}
    for model in MODELS:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}", mode="serialization")
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    iam: list[dict[str, list[str]]] = [{"sigv4": []}]
    return {
        "openapi": "3.1.0",
        "info": {"title": "pg-lifeboat", "version": "2", "description": "Backups and restores of PostgreSQL."},
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "sigv4": {
                    "type": "apiKey",
                    "name": "Authorization",
                    "in": "header",
                    "x-amazon-apigateway-authtype": "awsSigv4",
                }
            },
        },
        "servers": SERVERS,
        "security": iam,
        "paths": _paths(),
    }


def main() -> None:
    json.dump(build(), sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
