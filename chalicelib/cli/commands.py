"""What each `lifeboat` command does: the same code paths as the Lambda handlers, reported through Output."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, cast

from pydantic import ValidationError

from chalicelib import wiring
from chalicelib.cli.output import EXIT_FAILED, EXIT_OK, Output, end_progress, human_size, progress
from chalicelib.entrypoints import dispatch_tick
from chalicelib.errors import BadRequestError, ConfigError
from chalicelib.logical.catalog import BackupId, Layout
from chalicelib.logical.dump import check_slot, run_logical_backup
from chalicelib.logical.restore import restore_logical
from chalicelib.logical.verify import ObjectCheck, verify_backup
from chalicelib.physical.prune import prune
from chalicelib.physical.start import start_snapshot
from chalicelib.restore import service
from chalicelib.restore.model import RestoreJob
from chalicelib.restore.requests import LogicalRestoreRequest, describe_validation_error
from chalicelib.restore.service import run_restore_job
from chalicelib.scheduling.retention import lifecycle_rules

if TYPE_CHECKING:
    from types_boto3_s3.type_defs import LifecycleRuleTypeDef


def cmd_validate(args: argparse.Namespace, out: Output) -> int:
    cfg = wiring.load_config()
    env = wiring.settings()
    if args.stack:
        stack_bucket = wiring.stack_outputs(args.stack).get("BucketName")
        if stack_bucket and stack_bucket != cfg.settings.bucket:
            raise ConfigError(
                f"settings.bucket is {cfg.settings.bucket!r} but stack {args.stack!r} keeps backups in"
                f" {stack_bucket!r}: put the stack's SettingsJson output into its SettingsParameter (stack/README.md)"
            )
    out.json(
        {
            "status": "OK",
            "config": env.config,
            "targets": [t.name for t in cfg.targets],
            "bucket": cfg.settings.bucket,
            "jobs_table": env.jobs_table,
            "backup_queue_url": env.backup_queue_url,
            "restore_queue_url": env.restore_queue_url,
        }
    )
    out.line(f"configuration OK: {len(cfg.targets)} target(s), bucket {cfg.settings.bucket} ({env.config})")
    return EXIT_OK


def cmd_backup(args: argparse.Namespace, out: Output) -> int:
    slot = parse_slot(args.slot)  # refused before anything is set up
    svc = wiring.backup_services()
    outcome = run_logical_backup(
        svc,
        args.target,
        slot,
        trigger=args.trigger,
        database=args.database,
        on_progress=progress(sys.stderr, f"backup {args.target}"),
    )
    end_progress(sys.stderr)
    m = outcome.manifest
    out.json(
        {
            "status": outcome.status,
            "backup_id": outcome.backup_id,
            "reason": outcome.reason,
            "manifest": m.model_dump(mode="json") if m else None,
        }
    )
    if m:
        digest = m.objects[0].sha256[:16] + "…" if len(m.objects) == 1 else f"{len(m.objects)} objects"
        out.line(f"{outcome.backup_id}  {human_size(m.size)}  {digest}  {m.duration_seconds:.1f}s  {m.retention_class}")
    else:
        out.line(f"{outcome.backup_id}  {outcome.status}: {outcome.reason}")
    return EXIT_OK


def cmd_restore(args: argparse.Namespace, out: Output) -> int:
    cfg = wiring.load_config()
    bid = BackupId.parse(args.backup_id)
    if args.clean and args.confirm != args.database:
        raise BadRequestError(f"--clean replaces database {args.database!r}: add --confirm {args.database}")
    # The API's and the worker's rules (restore_into, --clean only on the backup's own target, a new database):
    request = restore_request(args, bid)
    destination = service.check_rules(cfg, wiring.credentials(), request)
    into = cfg.target(destination.target)
    assert destination.login is not None and into.connection is not None  # check_rules: a logical restore's login
    login = destination.login
    catalog = wiring.catalog(cfg)
    options = service.restore_options(request)  # what the request says, as the worker reads it
    result = restore_logical(
        catalog.store,
        catalog,
        wiring.toolbox(),
        str(bid),
        login,
        args.database,
        options,
        on_progress=progress(sys.stderr, f"restore {bid}"),
    )
    end_progress(sys.stderr)
    out.json({"status": "SUCCEEDED", **asdict(result)})
    v = result.verification
    checked = (
        f"{v.get('tables_checked', 0)} tables, {v.get('rows_checked', 0)} rows match"
        if v.get("match")
        else v.get("reason", "row counts not verified")
    )
    out.line(
        f"restored {result.backup_id} into {into.connection.host}/{result.database}: "
        f"{human_size(result.bytes_restored)} in {result.seconds:.1f}s with pg_restore"
        f" {result.pg_restore_version}; verified: {checked}"
    )
    return EXIT_OK


def restore_request(args: argparse.Namespace, bid: BackupId) -> LogicalRestoreRequest:
    """`lifeboat restore`'s arguments as the API's request, for the rules they share (service.check_rules)."""
    if bid.kind != "logical":
        raise BadRequestError(f"{bid} is a {bid.kind}, not a logical dump: restore it through the snapshot form")
    body = {
        "backup_id": str(bid),
        "into": {"target": args.into_target, "database": args.database},
        "options": {
            "schemas": args.schema,
            "tables": args.table,
            "clean": args.clean,
            "confirm": args.confirm,
            "no_owner": args.no_owner,
            "no_acl": args.no_acl,
            "jobs": args.jobs,
            "globals": args.globals,
        },
    }
    try:
        return LogicalRestoreRequest.model_validate(body)
    except ValidationError as exc:
        raise BadRequestError(describe_validation_error(exc)) from None


def cmd_verify(args: argparse.Namespace, out: Output) -> int:
    """Re-read every object of a backup (size, SHA-256) and check its manifest's signature: 0 verified, 1 not."""
    bid = BackupId.parse(args.backup_id)
    catalog = wiring.catalog(wiring.load_config())

    def line(check: ObjectCheck) -> None:
        verdict = "OK    " if check.ok else "FAILED"
        why = f"sha256 {check.sha256[:16]}" if check.ok else check.problem
        out.line(f"{verdict} {check.role:<8} {check.key} {human_size(check.size)}: {why}")

    report = verify_backup(catalog, bid, on_object=line)
    sig = report.signature
    bad = sum(not o.ok for o in report.objects)
    total = human_size(sum(o.size for o in report.objects))
    if report.verified:
        out.json(report.as_json())
        out.line(f"signature: {sig.get('status')} {sig.get('key_id', '')}")
        out.line(f"VERIFIED {bid}: {len(report.objects)} object(s), {total}, signature {sig.get('status')}")
        return EXIT_OK
    summary = (
        f"{bad} of {len(report.objects)} object(s) do not match, signature {sig.get('status')},"
        f" {len(report.problems)} manifest problem(s)"
    )
    out.json({**report.as_json(), "error": {"code": "integrity_failed", "message": f"{bid}: {summary}"}})
    out.line(f"signature: {sig.get('status')} {sig.get('error') or sig.get('reason') or sig.get('key_id', '')}")
    for problem in report.problems:
        out.line(f"manifest: {problem}")
    out.line(f"FAILED {bid}: {summary}")
    return EXIT_FAILED


def cmd_restores(args: argparse.Namespace, out: Output) -> int:
    """The API's restore jobs: recent ones, or one (as recorded: the restore sweeper advances them)."""
    svc = wiring.api_services()
    jobs = [service.get_restore(svc, args.restore_id)] if args.restore_id else svc.jobs.recent(limit=args.limit)
    out.json([j.public() for j in jobs])
    out.line(f"{'RESTORE ID':<20} {'KIND':<14} {'STATUS':<10} {'CREATED':<20} {'TARGET':<20} RESULT")
    for j in jobs:
        out.line(
            f"{j.restore_id:<20} {j.kind:<14} {j.status:<10} {j.created_at:%Y-%m-%d %H:%M:%S} "
            f"{j.target:<20} {_job_outcome(j)}"
        )
    if not jobs:
        out.line("(no restores)")
    return EXIT_OK


def _job_outcome(job: RestoreJob) -> str:
    if job.error:
        return job.error.message
    r = job.result
    volumes = ",".join(v["volume_id"] for v in r.get("volumes", []))
    return str(r.get("database") or r.get("instance_id") or r.get("cluster_id") or volumes or "")


def cmd_snapshot(args: argparse.Namespace, out: Output) -> int:
    o = start_snapshot(wiring.snapshot_services(), args.target, trigger="on-demand")
    out.json(o.as_dict())
    out.line(f"{o.backup_id}  {o.status}  {' '.join(o.resource_ids)}  {o.retention_class}  {o.reason}")
    return EXIT_OK


def cmd_prune(args: argparse.Namespace, out: Output) -> int:
    cfg = wiring.load_config()
    if args.target:
        cfg.target(args.target)  # an unknown target: NotFoundError (exit 2), not an empty report
    r = prune(wiring.snapshot_services(cfg), dry_run=args.dry_run, targets=[args.target] if args.target else None)
    report = r.as_dict()
    if r.errors:
        message = f"{len(r.errors)} snapshot(s) could not be pruned: {r.errors[0]}"
        report.update(status="FAILED", error={"code": "snapshot_failed", "message": message})
    out.json({"status": "SUCCEEDED", **report})
    verb = "would delete" if r.dry_run else "deleted"
    for label, rows in ((verb, r.deleted), ("keep", r.kept)):
        for d in rows:
            out.line(f"{label:<12} {d.backup_id:<46} {d.region:<12} {','.join(d.resource_ids)}  {d.reason}")
    for e in r.errors:
        out.line(f"error: {e}")
    if not r.deleted and not r.kept and not r.errors:
        out.line("(no managed snapshots)")
    return EXIT_FAILED if r.errors else EXIT_OK


def cmd_lifecycle(args: argparse.Namespace, out: Output) -> int:
    cfg = wiring.load_config()
    rules = lifecycle_rules(cfg.settings, Layout(cfg.settings.prefix).failed_prefix)
    if args.apply:
        wiring.client("s3").put_bucket_lifecycle_configuration(
            Bucket=cfg.settings.bucket, LifecycleConfiguration={"Rules": cast("list[LifecycleRuleTypeDef]", rules)}
        )
    out.json({"bucket": cfg.settings.bucket, "applied": args.apply, "Rules": rules})
    for rule in rules:
        out.line(f"{rule['ID']:<34} {_rule_filter(rule['Filter']):<56} {_rule_action(rule)}")
    out.line(
        f"applied {len(rules)} lifecycle rules to {cfg.settings.bucket}"
        if args.apply
        else f"{len(rules)} rules for {cfg.settings.bucket} (not applied: --apply; the S3 document: --json)"
    )
    return EXIT_OK


def _rule_filter(spec: dict[str, Any]) -> str:
    both = spec.get("And", spec)
    tags = " ".join(f"{t['Key']}={t['Value']}" for t in both.get("Tags", []))
    return " ".join(part for part in (f"prefix={both.get('Prefix', '')!r}", tags) if part)


def _rule_action(rule: dict[str, Any]) -> str:
    if "AbortIncompleteMultipartUpload" in rule:
        return f"abort uploads after {rule['AbortIncompleteMultipartUpload']['DaysAfterInitiation']}d"
    # A rule may expire only old versions (the WAL stream's rewritten .partial objects): no Expiration then.
    parts = [f"expire after {rule['Expiration']['Days']}d"] if "Expiration" in rule else []
    old = rule.get("NoncurrentVersionExpiration")
    parts += [f"old versions after {old['NoncurrentDays']}d"] if old else []
    return ", ".join(parts) or "-"


def cmd_dispatch(args: argparse.Namespace, out: Output) -> int:
    tick = parse_time("--at", args.at) if args.at else datetime.now(UTC)
    result = dispatch_tick(tick.isoformat())
    dispatched = [json.loads(message) for message in result["dispatched"]]
    out.json({**result, "dispatched": dispatched})
    out.line(f"tick {result['tick']}: {len(dispatched)} backup(s) queued")
    for d in dispatched:
        out.line(f"  {d['target']:<24} {d['kind']:<9} {d['slot']}  {d.get('database', '')}".rstrip())
    if result["overdue"]:
        out.line(f"overdue: {', '.join(result['overdue'])}")
    return EXIT_OK


def cmd_run_restore(args: argparse.Namespace, out: Output) -> int:
    """Run a restore job the API created, as the restore worker would (exit 1 when it failed)."""
    job = run_restore_job(wiring.api_services(), args.restore_id)
    out.json(job.public())
    out.line(f"{job.restore_id}  {job.status}  {job.error.message if job.error else job.result.get('database', '')}")
    return EXIT_FAILED if job.status == "FAILED" else EXIT_OK


def parse_time(option: str, text: str) -> datetime:
    """An ISO 8601 time from the command line (no offset: UTC)."""
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise BadRequestError(f"{option} {text!r} is not an ISO 8601 time, e.g. 2026-11-29T03:00:00+00:00") from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def parse_slot(text: str | None) -> datetime | None:
    if not text:
        return None
    slot = parse_time("--slot", text)
    check_slot(slot, datetime.now(UTC))  # a slot in the future would pass for the newest backup in retention
    return slot
