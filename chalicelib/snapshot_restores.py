"""Snapshot and point-in-time restores (RDS, Aurora, EBS): start the AWS operation, observe it later."""

from __future__ import annotations

from typing import Any

from chalicelib.errors import RestoreError
from chalicelib.restore_jobs import RestoreJob


def start(svc: Any, job: RestoreJob) -> RestoreJob:
    raise RestoreError(f"{job.kind} restores are not available yet")
