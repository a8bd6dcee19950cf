"""Who runs `wal-prune` (chalicelib.pitr.prune): the operator's `lifeboat wal-prune TARGET` and, every day, the
snapshot pruner for every target with a `wal` section. Both call prune_streaming_target, so both judge with the same
inputs: the target's retention policy, `wal.pitr_days`, the manifest sealer (only signed bases count), and the Object
Lock on each object (a locked object is kept and reported).

The scheduled pass does not extend locks afterwards (`extend_locks=False`): the lock pass already runs after every
base backup (pitr.protect.protected_base_backup, in the WAL task's role), the pruner's role holds no
s3:PutObjectRetention (stack/capabilities.py `archive:prune`: the stack's lock-mode Deny rides on the database
policy, which the pruner does not carry), and locks never decide what pruning deletes. The operator's command still
extends them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from chalicelib import wiring
from chalicelib.config import Config, Target
from chalicelib.errors import ConfigError, LifeboatError
from chalicelib.observability import logger, record
from chalicelib.pitr.basebackup import BaseLayout, list_bases
from chalicelib.pitr.protect import protect_bases
from chalicelib.pitr.prune import WalPruneReport, prune_wal
from chalicelib.pitr.sealing import Sealer


def prune_streaming_target(
    cfg: Config, target: Target, now: datetime, dry_run: bool = False, extend_locks: bool = True
) -> WalPruneReport:
    """One wal-prune pass over `target`'s bases and WAL at `now`; then, with an Object Lock mode, `extend_locks` and
    not `dry_run`, the kept bases' locks (and their own WAL's) extended to the class each earns now."""
    if target.wal is None:
        raise ConfigError(f"target {target.name!r} has no wal section: it has no WAL archive to prune")
    store, policy, prefix = wiring.store(cfg), cfg.policy_for(target), cfg.settings.prefix
    sealer = Sealer.from_signing(wiring.signing(cfg))
    report = prune_wal(store, prefix, target.name, policy, now, dry_run, sealer, target.wal.pitr_days)
    mode = cfg.settings.object_lock_mode
    if mode and extend_locks and not dry_run:
        kept = list_bases(store, BaseLayout(prefix, target.name), sealer)
        protect_bases(store, prefix, target.name, policy, mode, now, kept)
    return report


@dataclass
class ArchivePruneOutcome:
    """The scheduled pass over every streaming target: each one's report, or why it failed."""

    reports: dict[str, dict[str, Any]] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)  # target -> the first error

    def as_dict(self) -> dict[str, Any]:
        return {"pruned": self.reports, "failed": self.failures}


def prune_archives(cfg: Config, now: datetime, dry_run: bool = False) -> ArchivePruneOutcome:
    """prune_streaming_target for every target with a `wal` section, each on its own: a target that fails (a listing
    refused, a deletion that failed) is logged and counted (ArchivePruneFailed, per target) and the next one is
    pruned all the same. The caller decides what a failure means for the run."""
    outcome = ArchivePruneOutcome()
    for target in cfg.targets:
        if target.wal is None:
            continue
        try:
            report = prune_streaming_target(cfg, target, now, dry_run, extend_locks=False)
        except LifeboatError as exc:
            outcome.failures[target.name] = str(exc)
        else:
            outcome.reports[target.name] = report.as_dict()
            if report.errors:
                outcome.failures[target.name] = f"{len(report.errors)} deletion(s) failed: {report.errors[0]}"
        failed = target.name in outcome.failures
        if failed:
            logger.error("archive prune failed", extra={"target": target.name, "error": outcome.failures[target.name]})
        record("ArchivePruneFailed", int(failed), "Count", target.name)
    return outcome
