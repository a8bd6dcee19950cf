"""The exception tree. Every error a user can see is a LifeboatError with a message that says what to fix.

`code` is the stable, machine-readable name used in API responses and metrics; the mapping to HTTP
status codes lives in app.py only.
"""

from __future__ import annotations


class LifeboatError(Exception):
    code = "internal_error"


class ConfigError(LifeboatError):
    """The configuration (targets, settings) is invalid or cannot be loaded."""

    code = "invalid_config"


class BadRequestError(LifeboatError):
    """A request (API body, CLI arguments) is malformed."""

    code = "bad_request"


class NotFoundError(LifeboatError):
    code = "not_found"


class ConflictError(LifeboatError):
    """The request would overwrite or duplicate something that exists."""

    code = "conflict"


class UntrustedBackupError(ConflictError):
    """The API refuses to restore a backup whose manifest is not believed (its signature does not verify, or it is
    unsigned and not older than settings.accept_unsigned_before): a 409 before a job exists, with the worker's code."""

    code = "integrity_failed"


class SecretError(LifeboatError):
    """A database password could not be obtained (missing secret, no access, bad format)."""

    code = "secret_unavailable"


class DatabaseConnectionError(LifeboatError):
    """PostgreSQL could not be reached or refused the login."""

    code = "database_unreachable"


class PgToolError(LifeboatError):
    """pg_dump, pg_dumpall, pg_restore or psql failed, or no suitable binary exists."""

    code = "pg_tool_failed"


class StorageError(LifeboatError):
    """The backup store (S3) failed: missing bucket, access denied, upload error."""

    code = "storage_failed"


class IntegrityError(LifeboatError):
    """A backup object does not match its manifest (checksum or size)."""

    code = "integrity_failed"


class DeadlineError(LifeboatError):
    """The run was stopped because the Lambda time limit was close."""

    code = "deadline_exceeded"


class SnapshotError(LifeboatError):
    code = "snapshot_failed"


class RestoreError(LifeboatError):
    code = "restore_failed"


class FargateError(LifeboatError):
    """ECS could not start the long-running task (capacity, network, roles, a missing task definition)."""

    code = "fargate_failed"


class ForbiddenError(LifeboatError):
    """The configuration does not allow this: a destination, an instance class, an instance to attach to."""

    code = "forbidden"


class TooManyRestoresError(LifeboatError):
    """A restore quota (settings.max_running_restores, a target's max_running_restores) is reached."""

    code = "too_many_restores"
