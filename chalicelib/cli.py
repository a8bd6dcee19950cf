"""`lifeboat`: the operator's command line. It calls the same code as the Lambda handlers.

Exit codes: 0 success, 1 the operation failed, 2 bad input or configuration.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TextIO, cast

from chalicelib import wiring
from chalicelib.entrypoints import dispatch_tick
from chalicelib.errors import BadRequestError, ConfigError, ConflictError, LifeboatError, NotFoundError
from chalicelib.logical.catalog import BackupId, Layout
from chalicelib.logical.dump import check_slot, run_logical_backup
from chalicelib.logical.restore import RestoreOptions, restore_logical
from chalicelib.logical.verify import ObjectCheck, verify_backup
from chalicelib.observability import logger
from chalicelib.physical.catalog import list_snapshots
from chalicelib.physical.prune import prune
from chalicelib.physical.start import start_snapshot
from chalicelib.restore import service
from chalicelib.restore.service import run_restore_job
from chalicelib.scheduling.retention import lifecycle_rules

if TYPE_CHECKING:
    from types_boto3_s3.type_defs import LifecycleRuleTypeDef


def _progress(stream: TextIO, label: str) -> Callable[[int], None] | None:
    """A one-line bytes/rate display, only when a person is watching."""
    if not stream.isatty():
        return None
    start = time.monotonic()
    last = [0.0]

    def show(done: int) -> None:
        now = time.monotonic()
        if now - last[0] < 0.2:
            return
        last[0] = now
        rate = done / max(now - start, 1e-6)
        stream.write(f"\r{label}: {_human(done)} streamed, {_human(rate)}/s   ")
        stream.flush()

    return show


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"


def cmd_validate(args: argparse.Namespace, out: TextIO) -> int:
    cfg = wiring.load_config()
    out.write(f"configuration OK: {len(cfg.targets)} target(s), bucket {cfg.settings.bucket}\n")
    return 0


def cmd_backup(args: argparse.Namespace, out: TextIO) -> int:
    slot = _slot(args.slot)  # refused before anything is set up
    svc = wiring.backup_services()
    outcome = run_logical_backup(
        svc,
        args.target,
        slot,
        trigger=args.trigger,
        database=args.database,
        on_progress=_progress(sys.stderr, f"backup {args.target}"),
    )
    if sys.stderr.isatty():
        sys.stderr.write("\n")
    m = outcome.manifest
    if args.json:
        out.write(
            json.dumps(
                {
                    "status": outcome.status,
                    "backup_id": outcome.backup_id,
                    "reason": outcome.reason,
                    "manifest": m.model_dump(mode="json") if m else None,
                }
            )
            + "\n"
        )
    elif m:
        digest = m.objects[0].sha256[:16] + "…" if len(m.objects) == 1 else f"{len(m.objects)} objects"
        out.write(f"{outcome.backup_id}  {_human(m.size)}  {digest}  {m.duration_seconds:.1f}s  {m.retention_class}\n")
    else:
        out.write(f"{outcome.backup_id}  {outcome.status}: {outcome.reason}\n")
    return 0


def cmd_list(args: argparse.Namespace, out: TextIO) -> int:
    cfg = wiring.load_config()
    catalog = wiring.catalog(cfg)
    names = [args.target] if args.target else [t.name for t in cfg.targets]
    for name in names:
        cfg.target(name)
    rows: list[Any] = [m for name in names for m in catalog.list_backups(name, limit=args.limit)]
    physical = [name for name in names if cfg.target(name).physical is not None]
    if physical:
        snapshots = wiring.snapshot_services(cfg)
        rows.extend(e for name in physical for e in list_snapshots(snapshots, name))
    rows.sort(key=lambda m: m.slot, reverse=True)
    if args.json:
        out.write(json.dumps([m.model_dump(mode="json") for m in rows], indent=2) + "\n")
        return 0
    out.write(
        f"{'BACKUP ID':<46} {'KIND':<8} {'TIME':<20} {'SIZE':>10} {'STATUS':<11} {'RETENTION':<9} "
        f"{'REGION':<12} SERVER\n"
    )
    for m in rows:
        region = getattr(m, "region", "") or "-"
        out.write(
            f"{m.backup_id:<46} {m.kind:<8} {m.slot:%Y-%m-%d %H:%M:%S} {_human(m.size):>10} "
            f"{m.status:<11} {m.retention_class:<9} {region:<12} {m.server_version}\n"
        )
    if not rows:
        out.write("(no complete backups)\n")
    return 0


def cmd_restore(args: argparse.Namespace, out: TextIO) -> int:
    cfg = wiring.load_config()
    bid = BackupId.parse(args.backup_id)
    into = cfg.target(args.into_target or bid.target)
    if into.connection is None:
        raise BadRequestError(f"target {into.name!r} has no connection to restore into")
    login = wiring.credentials().restore_login(into.connection)
    catalog = wiring.catalog(cfg)
    if args.clean and args.confirm != args.database:
        raise BadRequestError(f"--clean replaces database {args.database!r}: add --confirm {args.database}")
    result = restore_logical(
        catalog.store,
        catalog,
        wiring.toolbox(),
        str(bid),
        login,
        args.database,
        RestoreOptions(
            schemas=tuple(args.schema),
            tables=tuple(args.table),
            no_owner=args.no_owner,
            no_acl=args.no_acl,
            jobs=args.jobs,
            replace=args.clean,
            globals=args.globals,
        ),
        on_progress=_progress(sys.stderr, f"restore {bid}"),
    )
    if sys.stderr.isatty():
        sys.stderr.write("\n")
    v = result.verification
    if args.json:
        out.write(json.dumps(result.__dict__, default=str) + "\n")
    else:
        checked = (
            f"{v.get('tables_checked', 0)} tables, {v.get('rows_checked', 0)} rows match"
            if v.get("match")
            else v.get("reason", "row counts not verified")
        )
        out.write(
            f"restored {result.backup_id} into {into.connection.host}/{result.database}: "
            f"{_human(result.bytes_restored)} in {result.seconds:.1f}s with pg_restore"
            f" {result.pg_restore_version}; verified: {checked}\n"
        )
    return 0


def cmd_verify(args: argparse.Namespace, out: TextIO) -> int:
    """Re-read every object of a backup (size, SHA-256) and check its manifest's signature: 0 verified, 1 not."""
    bid = BackupId.parse(args.backup_id)
    catalog = wiring.catalog(wiring.load_config())

    def line(check: ObjectCheck) -> None:
        if not args.json:
            verdict = "OK    " if check.ok else "FAILED"
            why = f"sha256 {check.sha256[:16]}" if check.ok else check.problem
            out.write(f"{verdict} {check.role:<8} {check.key} {_human(check.size)}: {why}\n")

    report = verify_backup(catalog, bid, on_object=line)
    if args.json:
        out.write(json.dumps(report.as_json(), indent=2, default=str) + "\n")
        return 0 if report.verified else 1
    sig = report.signature
    out.write(f"signature: {sig.get('status')} {sig.get('error') or sig.get('reason') or sig.get('key_id', '')}\n")
    for problem in report.problems:
        out.write(f"manifest: {problem}\n")
    bad = sum(not o.ok for o in report.objects)
    total = _human(sum(o.size for o in report.objects))
    if report.verified:
        out.write(f"VERIFIED {bid}: {len(report.objects)} object(s), {total}, signature {sig.get('status')}\n")
        return 0
    out.write(
        f"FAILED {bid}: {bad} of {len(report.objects)} object(s) do not match, signature {sig.get('status')},"
        f" {len(report.problems)} manifest problem(s)\n"
    )
    return 1


def cmd_restores(args: argparse.Namespace, out: TextIO) -> int:
    """The API's restore jobs: recent ones, or one (as recorded: the restore sweeper advances them)."""

    svc = wiring.api_services()
    jobs = [service.get_restore(svc, args.restore_id)] if args.restore_id else svc.jobs.recent(limit=args.limit)
    if args.json:
        out.write(json.dumps([j.public() for j in jobs], indent=2) + "\n")
        return 0
    out.write(f"{'RESTORE ID':<20} {'KIND':<14} {'STATUS':<10} {'CREATED':<20} {'TARGET':<20} RESULT\n")
    for j in jobs:
        outcome = (
            j.error.message
            if j.error
            else j.result.get("database")
            or j.result.get("instance_id")
            or j.result.get("cluster_id")
            or ",".join(v["volume_id"] for v in j.result.get("volumes", []))
            or ""
        )
        out.write(
            f"{j.restore_id:<20} {j.kind:<14} {j.status:<10} {j.created_at:%Y-%m-%d %H:%M:%S} "
            f"{j.target:<20} {outcome}\n"
        )
    if not jobs:
        out.write("(no restores)\n")
    return 0


def cmd_snapshot(args: argparse.Namespace, out: TextIO) -> int:
    o = start_snapshot(wiring.snapshot_services(), args.target, trigger="on-demand")
    out.write(
        json.dumps(o.as_dict()) + "\n"
        if args.json
        else f"{o.backup_id}  {o.status}  {' '.join(o.resource_ids)}  {o.retention_class}  {o.reason}\n"
    )
    return 0


def cmd_prune(args: argparse.Namespace, out: TextIO) -> int:
    r = prune(wiring.snapshot_services(), dry_run=args.dry_run, targets=[args.target] if args.target else None)
    if args.json:
        out.write(json.dumps(r.as_dict(), indent=2) + "\n")
    else:
        verb = "would delete" if r.dry_run else "deleted"
        for label, rows in ((verb, r.deleted), ("keep", r.kept)):
            for d in rows:
                out.write(f"{label:<12} {d.backup_id:<46} {d.region:<12} {','.join(d.resource_ids)}  {d.reason}\n")
        for e in r.errors:
            out.write(f"error: {e}\n")
    return 1 if r.errors else 0


def cmd_lifecycle(args: argparse.Namespace, out: TextIO) -> int:
    cfg = wiring.load_config()
    rules = lifecycle_rules(cfg.settings, Layout(cfg.settings.prefix).failed_prefix)
    if args.apply:
        wiring.client("s3").put_bucket_lifecycle_configuration(
            Bucket=cfg.settings.bucket, LifecycleConfiguration={"Rules": cast("list[LifecycleRuleTypeDef]", rules)}
        )
        out.write(f"applied {len(rules)} lifecycle rules to {cfg.settings.bucket}\n")
    else:
        out.write(json.dumps({"Rules": rules}, indent=2) + "\n")
    return 0


def cmd_dispatch(args: argparse.Namespace, out: TextIO) -> int:
    result = dispatch_tick(args.at or datetime.now(UTC).isoformat())
    out.write(json.dumps(result, indent=2) + "\n")
    return 0


# --- beyond Lambda (chalicelib.fargate): what the ECS task runs -----------------------------------------


def _slot(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        slot = datetime.fromisoformat(text)
    except ValueError:
        raise BadRequestError(f"--slot {text!r} is not an ISO 8601 time, e.g. 2026-11-29T03:00:00+00:00") from None
    slot = slot if slot.tzinfo else slot.replace(tzinfo=UTC)
    check_slot(slot, datetime.now(UTC))  # a slot in the future would pass for the newest backup in retention
    return slot


def cmd_run_restore(args: argparse.Namespace, out: TextIO) -> int:
    """Run a restore job the API created, as the restore worker would (exit 1 when it failed)."""

    job = run_restore_job(wiring.api_services(), args.restore_id)
    if args.json:
        out.write(json.dumps(job.public()) + "\n")
    else:
        detail = job.error.message if job.error else job.result.get("database", "")
        out.write(f"{job.restore_id}  {job.status}  {detail}\n")
    return 1 if job.status == "FAILED" else 0


def build_parser() -> argparse.ArgumentParser:
    # long because it is the command line's table of contents: one add_argument a line, read top to bottom.
    p = argparse.ArgumentParser(prog="lifeboat", description="PostgreSQL backups and restores on AWS.")
    p.add_argument("--config", help="configuration file or ssm:/path (default: $LIFEBOAT_CONFIG)")
    p.add_argument("--region", help="AWS region of the clients (default: $AWS_REGION, else the AWS SDK's)")
    p.add_argument("-v", "--verbose", action="store_true", help="print the structured log lines")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("validate", help="check the configuration").set_defaults(func=cmd_validate)
    b = sub.add_parser("backup", help="take a logical backup of a target now")
    b.add_argument("target")
    b.add_argument("--json", action="store_true")
    # What a Fargate task runs for the backup worker (chalicelib.fargate): the same slot, claimed the same way.
    b.add_argument("--slot", help="back up this schedule slot (ISO 8601, UTC without an offset; default: now)")
    b.add_argument("--database", default="", help="one database of a whole-server (all_databases) target")
    b.add_argument(
        "--trigger",
        choices=("on-demand", "schedule"),
        default="on-demand",
        help="recorded in the manifest (default: on-demand)",
    )
    b.set_defaults(func=cmd_backup)
    ls = sub.add_parser("list", help="list complete backups, newest first")
    ls.add_argument("target", nargs="?")
    ls.add_argument("--limit", type=int, default=50)
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=cmd_list)
    r = sub.add_parser("restore", help="restore a logical backup into a new database")
    r.add_argument("backup_id")
    r.add_argument("--database", required=True, help="name of the new database (must not exist, unless --clean)")
    r.add_argument("--into-target", help="server to restore on (default: the backup's own target)")
    r.add_argument(
        "--schema",
        action="append",
        default=[],
        metavar="NAME",
        help="restore only this schema (exact name; repeatable; with --table: their union)",
    )
    r.add_argument(
        "--table",
        action="append",
        default=[],
        metavar="[SCHEMA.]TABLE",
        help="restore only this table (exact name, any schema unless qualified; repeatable)",
    )
    r.add_argument(
        "--globals",
        action="store_true",
        help="first create the backup's roles the server lacks (existing roles are never altered)",
    )
    r.add_argument("--jobs", type=int, default=1, help="pg_restore -j: download, verify, restore in parallel")
    r.add_argument(
        "--clean",
        action="store_true",
        help="replace an existing database: restore beside it, verify, swap; the old one is kept renamed",
    )
    r.add_argument("--confirm", metavar="NAME", help="with --clean: the database name again, to confirm")
    r.add_argument("--no-owner", action="store_true", help="pg_restore --no-owner: objects owned by the login")
    r.add_argument("--no-acl", action="store_true", help="pg_restore --no-acl: skip GRANT/REVOKE")
    r.add_argument("--json", action="store_true", help="print the result as JSON")
    r.set_defaults(func=cmd_restore)
    v = sub.add_parser("verify", help="re-read a backup's objects, check sizes, SHA-256 and the manifest's signature")
    v.add_argument("backup_id")
    v.add_argument("--json", action="store_true")
    v.set_defaults(func=cmd_verify)
    rs = sub.add_parser("restores", help="restore jobs started through the API (recent, or one by id)")
    rs.add_argument("restore_id", nargs="?")
    rs.add_argument("--limit", type=int, default=50)
    rs.add_argument("--json", action="store_true")
    rs.set_defaults(func=cmd_restores)
    sn = sub.add_parser("snapshot", help="start a snapshot of a target now (does not wait)")
    sn.add_argument("target")
    sn.add_argument("--json", action="store_true")
    sn.set_defaults(func=cmd_snapshot)
    pr = sub.add_parser("prune", help="delete managed snapshots the retention policy no longer keeps")
    pr.add_argument("target", nargs="?")
    pr.add_argument("--dry-run", action="store_true", help="print what would be deleted and why")
    pr.add_argument("--json", action="store_true")
    pr.set_defaults(func=cmd_prune)
    lc = sub.add_parser("lifecycle", help="print (or --apply) the bucket's retention lifecycle rules")
    lc.add_argument("--apply", action="store_true")
    lc.set_defaults(func=cmd_lifecycle)
    rr = sub.add_parser("run-restore", help="run one PENDING restore job of the API here (what a Fargate task runs)")
    rr.add_argument("restore_id")
    rr.add_argument("--json", action="store_true")
    rr.set_defaults(func=cmd_run_restore)
    d = sub.add_parser("dispatch", help="run one dispatcher tick (queue due backups)")
    d.add_argument("--at", help="tick time, ISO 8601 (default: now)")
    d.set_defaults(func=cmd_dispatch)
    return p


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = out or sys.stdout

    logger.setLevel("INFO" if args.verbose else "ERROR")
    try:
        # The options go over the environment for this command only; no metrics unless POWERTOOLS_METRICS_DISABLED
        # asks for them (a Fargate task's environment does).
        with wiring.configured(config=args.config, region=args.region, metrics=False):
            func: Callable[[argparse.Namespace, TextIO], int] = args.func
            return func(args, out)
    except (ConfigError, BadRequestError, NotFoundError, ConflictError) as exc:
        sys.stderr.write(f"lifeboat: {exc}\n")
        return 2
    except LifeboatError as exc:
        sys.stderr.write(f"lifeboat: {exc.code}: {exc}\n")
        return 1
    except KeyboardInterrupt:
        sys.stderr.write("lifeboat: interrupted; nothing was left half-done\n")
        return 130


def _json_default(value: Any) -> str:
    return str(value)


if __name__ == "__main__":
    sys.exit(main())
