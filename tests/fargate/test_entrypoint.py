"""The container's entry point, `lifeboat`, as a local process with the environment a task has."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

from chalicelib import wiring
from chalicelib.fargate import FargateLauncher
from chalicelib.logical.catalog import BackupId
from chalicelib.scheduling.dispatch import DueBackup

LIFEBOAT = Path(sys.executable).parent / "lifeboat"
SLOT = datetime(2026, 11, 29, 3, tzinfo=UTC)


def lifeboat(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LIFEBOAT), *args], env=dict(os.environ), capture_output=True, text=True, timeout=120, check=False
    )


def test_the_images_default_command_prints_help() -> None:
    proc = lifeboat("--help")  # CMD ["--help"]
    assert proc.returncode == 0 and "backup" in proc.stdout and "run-restore" in proc.stdout


def test_backup_of_a_slot_as_the_task_runs_it(config_path: Path) -> None:
    command = FargateLauncher.backup_command(DueBackup("shop", "logical", SLOT))
    proc = lifeboat(*command)
    assert proc.returncode == 0, proc.stderr[-2000:]
    outcome = json.loads(proc.stdout.strip().splitlines()[-1])
    assert outcome["status"] == "SUCCEEDED" and outcome["backup_id"] == "logical:shop:20261129T030000Z"
    svc = wiring.backup_services()
    manifest = svc.catalog.manifest(BackupId.parse(outcome["backup_id"]))
    assert manifest.trigger == "schedule" and manifest.slot == SLOT
    assert svc.store.head(manifest.object("dump").key) is not None
    again = lifeboat(*command)  # a second task for the same slot: nothing to do, success
    assert again.returncode == 0 and json.loads(again.stdout.strip().splitlines()[-1])["status"] == "SKIPPED"


def test_bad_arguments_exit_2_with_a_message(config_path: Path) -> None:
    bad_slot = lifeboat("backup", "shop", "--slot", "tomorrow")
    assert bad_slot.returncode == 2 and "ISO 8601" in bad_slot.stderr
    not_server = lifeboat("backup", "shop", "--database", "other")
    assert not_server.returncode == 2 and "all_databases" in not_server.stderr
    unknown = lifeboat("run-restore", "r-0000000000000000")
    assert unknown.returncode == 2 and "no restore" in unknown.stderr
