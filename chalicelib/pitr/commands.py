"""The point-in-time recovery commands' runners: each `cmd_*` is `(args, out: Output) -> exit code`, registered
with its arguments in chalicelib.cli.entry.build_parser (the global options, --json included, come from there).
Where the `lifeboat` entry point is not installed, `python -m chalicelib.cli` runs the same commands (e.g. in a
restore_command: `--fetch-command "python -m chalicelib.cli"`).

    lifeboat wal-stream TARGET [--spool DIR]        the WAL receiver (one per target; an ECS service runs it)
    lifeboat base-backup TARGET                      pg_basebackup into the bucket
    lifeboat wal-fetch --target T NAME PATH          PostgreSQL's restore_command (exit codes: chalicelib.pitr.fetch)
    lifeboat recover TARGET --time T | --lsn L | --latest --pgdata DIR [--snapshot-set SET_ID]
    lifeboat wal-status TARGET                       the slot's safety and the recoverable window
    lifeboat wal-window TARGET                       the recoverable window and its gaps (exit 1: broken)
    lifeboat wal-prune TARGET [--dry-run]            bases the retention policy drops, and the WAL only they needed
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import tempfile
import threading
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from chalicelib import wiring
from chalicelib.adapters.postgres import Login
from chalicelib.config import Config, Target
from chalicelib.errors import BadRequestError, ConfigError, ConflictError, SnapshotError
from chalicelib.physical.names import label_key
from chalicelib.pitr import recover as recovery
from chalicelib.pitr import restored_dir, snapshotbase
from chalicelib.pitr.basebackup import BaseLayout, BaseRun, list_bases
from chalicelib.pitr.basesched import scheduler_for
from chalicelib.pitr.chains import check_incremental_server
from chalicelib.pitr.fetch import FETCHED, MISSING, Prefetch, wal_fetch
from chalicelib.pitr.incremental import ParentChooser, restore_base
from chalicelib.pitr.protect import protected_base_backup, wal_lock_days
from chalicelib.pitr.prune_runs import prune_streaming_target
from chalicelib.pitr.receiver import ReceiverSetup, WalReceiver
from chalicelib.pitr.sealing import Sealer
from chalicelib.pitr.slot import ServerFacts, server_facts, slot_problems, slot_state
from chalicelib.pitr.spool import Spool
from chalicelib.pitr.spool import default_directory as default_spool
from chalicelib.pitr.walarchive import WalArchive, now_utc
from chalicelib.pitr.walnames import WalLayout
from chalicelib.pitr.window import describe_window, gather_window

if TYPE_CHECKING:  # the runners only call out.line/out.json/out.report_failure; no import of the CLI at run time
    from chalicelib.cli.output import Output

DEFAULT_FETCH_COMMAND = "lifeboat"


def _streaming_target(cfg: Config, name: str) -> Target:
    target = cfg.target(name)
    if target.wal is None or target.connection is None:
        raise ConfigError(f"target {name!r} has no wal section: add `wal: {{}}` (and a connection) to stream its WAL")
    return target


def replication_login(target: Target) -> Login:
    assert target.connection is not None and target.wal is not None
    conn, wal = target.connection, target.wal
    if wal.replication_user:
        secret = wal.replication_password_secret or conn.password_secret
        conn = conn.model_copy(update={"user": wal.replication_user, "password_secret": secret})
    return wiring.credentials().login(conn)


def sealer(cfg: Config) -> Sealer | None:
    """Signs and checks base manifests and WAL digests with settings.signing_key_id (chalicelib.pitr.sealing)."""
    return Sealer.from_signing(wiring.signing(cfg))


def archive_for(cfg: Config, target: Target) -> WalArchive:
    mode = cfg.settings.object_lock_mode
    return WalArchive(
        wiring.store(cfg),
        WalLayout(cfg.settings.prefix, target.name),
        lock_mode=mode,
        lock_days=wal_lock_days(cfg.policy_for(target), target.wal) if mode else 0,
        sealer=sealer(cfg),
    )


def base_run(cfg: Config, target: Target, login: Login, facts: ServerFacts) -> BaseRun:
    parent_for = None
    if target.wal is not None and target.wal.incremental:  # summarize_wal is checked as each base starts
        check_incremental_server(target.name, facts.major)
        parent_for = ParentChooser(
            target.name, wiring.store(cfg), cfg.settings.prefix, login, facts.major, target.wal.full_every, sealer(cfg)
        )
    return BaseRun(
        target=target.name,
        store=wiring.store(cfg),
        layout=BaseLayout(cfg.settings.prefix, target.name),
        pg_basebackup=wiring.toolbox().pick("pg_basebackup", facts.major, f"base backup of {target.name}"),
        login=login,
        server_version_num=facts.server_version_num,
        segment_size=facts.segment_size,
        tags={"kind": "base", "target": target.name},
        sealer=sealer(cfg),
        parent_for=parent_for,
    )


def cmd_wal_stream(args: argparse.Namespace, out: Output) -> int:
    cfg = wiring.load_config()
    target = _streaming_target(cfg, args.target)
    assert target.wal is not None
    login = replication_login(target)
    facts = server_facts(login)
    run, policy, mode = base_run(cfg, target, login, facts), cfg.policy_for(target), cfg.settings.object_lock_mode
    bases = scheduler_for(target.wal, run, policy, mode)  # scheduled bases and bases after a gap
    spool = Path(args.spool) if args.spool else Path(tempfile.mkdtemp(prefix="lifeboat-wal-"))
    setup = ReceiverSetup(
        target=target.name,
        archive=archive_for(cfg, target),
        pg_receivewal=wiring.toolbox().pick("pg_receivewal", facts.major, f"streaming {target.name}"),
        login=login,
        slot=target.wal.slot_name(target.name),
        spool=spool,
        segment_size=facts.segment_size,
        server_major=facts.major,
        flush_seconds=target.wal.flush_seconds,
        on_gap=bases,
        on_flush=bases.poll if bases is not None else None,
    )
    receiver = WalReceiver(setup)
    receiver.prepare()
    if bases is not None and gather_window(wiring.store(cfg), cfg.settings.prefix, target.name).broken:
        bases.request("the window is broken: a gap recorded earlier has no newer base backup")
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    out.line(f"streaming {target.name} (slot {setup.slot}, spool {spool}); SIGTERM stops after a last upload")
    out.stream.flush()
    receiver.run(stop)
    out.json({"status": "OK", "target": target.name, "slot": setup.slot, "spool": str(spool), "gaps": receiver.gaps})
    out.line(f"stopped; {len(receiver.gaps)} gap(s) recorded")
    return 0


def cmd_base_backup(args: argparse.Namespace, out: Output) -> int:
    cfg = wiring.load_config()
    target = _streaming_target(cfg, args.target)
    login = replication_login(target)
    run = base_run(cfg, target, login, server_facts(login))
    base = protected_base_backup(run, cfg.policy_for(target), cfg.settings.object_lock_mode)
    out.json({"status": "OK", **base.model_dump(mode="json")})
    out.line(f"{base.backup_id}  timeline {base.timeline}  {base.start_lsn} .. {base.end_lsn}  {base.tar_size} B")
    return 0


def cmd_wal_fetch(args: argparse.Namespace, out: Output) -> int:
    """0 fetched, 1 not archived (the end of the WAL), 255 damaged or unwritable (chalicelib.pitr.fetch). An error
    raised here or before (the configuration, AWS, the command line) is 255 too, never 1: `lifeboat` registers
    this command with error_exit=FATAL (chalicelib.cli.entry), so recovery stops instead of ending early."""
    cfg = wiring.load_config()
    if args.prefetch < 0:
        raise BadRequestError(f"--prefetch {args.prefetch}: give how many segments to fetch ahead, 0 or more")
    path = Path(args.path)
    spool = Spool(Path(args.prefetch_dir) if args.prefetch_dir else default_spool(path), args.target)
    prefetch = Prefetch(spool, args.prefetch) if args.prefetch else None
    layout = WalLayout(cfg.settings.prefix, args.target)
    archive = lambda: WalArchive(wiring.store(cfg), layout, sealer=sealer(cfg))  # noqa: E731 (a spool hit makes no S3 client)
    code, message = wal_fetch(archive, args.name, path, prefetch)
    if code == FETCHED:
        out.json({"status": "OK", "name": args.name, "path": args.path, "message": message})
        out.line(message)
    else:
        out.report_failure("not_archived" if code == MISSING else "wal_fetch_failed", message, code)
    return code


def parse_time(text: str) -> datetime:
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise BadRequestError(f"--time {text!r}: use ISO 8601 with an offset, e.g. 2026-05-01T12:30:00+00:00") from None
    if when.tzinfo is None:
        raise BadRequestError(f"--time {text!r} has no offset: add one (+00:00 for UTC)")
    return when


def _server_major(args: argparse.Namespace) -> Callable[[int], int]:
    """The major of the PostgreSQL that will start the recovered directory: --postgres's, else the one under
    LIFEBOAT_PG_ROOTS matching the base (none matching: the newest there, which check_major then refuses)."""

    def major(base_major: int) -> int:
        if args.postgres:
            return _version_of(Path(args.postgres) / "postgres")
        found = wiring.toolbox().majors("postgres")
        if not found:
            raise BadRequestError(
                f"no PostgreSQL server here (LIFEBOAT_PG_ROOTS, or --postgres BIN_DIR): install PostgreSQL {base_major}"
            )
        return base_major if base_major in found else max(found)

    return major


def _version_of(binary: Path) -> int:
    try:
        text = subprocess.run([str(binary), "--version"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        raise BadRequestError(f"--postgres: cannot run {binary}: {exc}") from None
    return int(text.split()[-1].split(".")[0])


def cmd_recover(args: argparse.Namespace, out: Output) -> int:
    cfg = wiring.load_config()
    target = cfg.target(args.target)
    if sum(bool(x) for x in (args.time, args.lsn, args.latest)) != 1:
        raise BadRequestError("give exactly one of --time, --lsn, --latest")
    goal = recovery.RecoveryTarget(parse_time(args.time) if args.time else None, args.lsn)
    if args.snapshot_set:
        return _recover_snapshot_set(args, out, cfg, target, goal)
    store = wiring.store(cfg)
    archive = archive_for(cfg, target)
    bases = list_bases(store, BaseLayout(cfg.settings.prefix, target.name), sealer(cfg))
    config_path = str(Path(wiring.settings().config).resolve()) if wiring.settings().config else None
    command = recovery.fetch_command(args.fetch_command, target.name, config_path, wiring.region())
    segment_size = bases[-1].segment_size if bases else 16 * 1024 * 1024
    plan = recovery.plan(bases, archive.entries(segment_size), archive.gaps(), goal, command, _server_major(args))
    out.line(
        f"base {plan.base.backup_id} (PostgreSQL {plan.base.major}, timeline {plan.base.timeline}, from"
        f" {plan.base.start_lsn}); WAL {plan.first_segment} .. {plan.last_segment}; target {goal.describe()}"
    )
    pgdata = Path(args.pgdata)
    document = {
        "status": "PLANNED" if args.dry_run else "READY",
        "target": target.name,
        "base": plan.base.backup_id,
        "first_segment": plan.first_segment,
        "last_segment": plan.last_segment,
        "recovery_target": goal.describe(),
        "pgdata": str(pgdata),
        "settings": plan.settings,
    }
    if not args.dry_run:
        restore_base(store, wiring.toolbox(), bases, plan.base, pgdata)  # an incremental: combined with its chain
        if plan.base.parent:
            out.line(f"incremental base: combined with {' and '.join(plan.base.chain)} (pg_combinebackup)")
        recovery.write_recovery(pgdata, plan.settings)
        out.line(f"ready: start it with  pg_ctl -D {pgdata} start  (it replays the WAL, then promotes)")
    out.json(document)
    return 0


def _recover_snapshot_set(
    args: argparse.Namespace, out: Output, cfg: Config, target: Target, goal: recovery.RecoveryTarget
) -> int:
    """--snapshot-set: DIR is the data directory restored from an app-consistent EBS snapshot set, and the set's
    backup label is the base (chalicelib.pitr.snapshotbase). Everything is checked before anything is written."""
    set_id = snapshotbase.parse_set_id(args.snapshot_set, target.name)
    if target.physical is None or target.physical.method != "ebs":
        raise BadRequestError(
            f"target {target.name!r} has no EBS physical section: --snapshot-set takes an app-consistent EBS snapshot"
            " set; for a base backup leave it out"
        )
    store = wiring.store(cfg)
    document, stored_at = snapshotbase.read_label_document(store, cfg.settings.prefix, set_id)
    found, failures = snapshotbase.find_sets(wiring.snapshot_services(cfg), target.physical, set_id)
    if not found and failures:
        raise SnapshotError(f"cannot list the snapshots of set {set_id}: {'; '.join(failures)}")
    chosen = snapshotbase.choose_set(snapshotbase.parse_label(document, set_id), found)
    uri = f"s3://{store.bucket}/{label_key(cfg.settings.prefix, set_id.target, set_id.stamp)}"
    label, signature = snapshotbase.believed_label(chosen, document, uri, sealer(cfg), stored_at)  # as the API does
    snapshotbase.check_goal(label, goal)
    archive = archive_for(cfg, target)
    config_path = str(Path(wiring.settings().config).resolve()) if wiring.settings().config else None
    command = recovery.fetch_command(args.fetch_command, target.name, config_path, wiring.region())
    base = snapshotbase.as_base(label)
    entries, gaps = archive.entries(label.segment_size), archive.gaps()
    plan = recovery.plan_for_base(base, entries, gaps, goal, command, _server_major(args))
    pgdata = Path(args.pgdata)
    refused = restored_dir.refusal(restored_dir.read_facts(pgdata, label), label)
    if refused:
        raise ConflictError(refused)
    out.line(
        f"snapshot set {set_id} ({chosen.region}, PostgreSQL {label.major}, timeline {label.timeline},"
        f" {label.start_lsn} .. {label.stop_lsn}); WAL {plan.first_segment} .. {plan.last_segment};"
        f" target {goal.describe()}; label {signature}"
    )
    result: dict[str, Any] = {
        "status": "PLANNED" if args.dry_run else "READY",
        "target": target.name,
        "base": str(set_id),
        "snapshot_set": str(set_id),
        "label_signature": signature,
        "snapshot_ids": [m.resource_id for m in chosen.members],
        "region": chosen.region,
        "first_segment": plan.first_segment,
        "last_segment": plan.last_segment,
        "recovery_target": goal.describe(),
        "pgdata": str(pgdata),
        "settings": plan.settings,
    }
    if not args.dry_run:
        result["done"] = restored_dir.prepare(pgdata, label)
        recovery.write_recovery(pgdata, plan.settings)
        for line in result["done"]:
            out.line(f"  {line}")
        out.line(f"ready: start it with  pg_ctl -D {pgdata} start  (it replays the WAL, then promotes)")
    out.json(result)
    return 0


def cmd_wal_status(args: argparse.Namespace, out: Output) -> int:
    cfg = wiring.load_config()
    target = _streaming_target(cfg, args.target)
    assert target.wal is not None
    login = replication_login(target)
    facts = server_facts(login)
    state = slot_state(login, target.wal.slot_name(target.name), facts.major)
    problems = slot_problems(state, target.wal.max_retained_wal_mib * 1024 * 1024)
    archive = archive_for(cfg, target)
    entries = [e for e in archive.entries(facts.segment_size) if e.segment is not None]
    bases = list_bases(wiring.store(cfg), BaseLayout(cfg.settings.prefix, target.name))
    report: dict[str, Any] = {
        "target": target.name,
        "slot": state.__dict__ if state else None,
        "problems": problems,
        "oldest_base": bases[0].finished_at.isoformat() if bases else None,
        "newest_wal": entries[-1].segment.name if entries and entries[-1].segment else None,
        "newest_wal_at": entries[-1].info.last_modified.isoformat()
        if entries and entries[-1].info.last_modified
        else None,
        "gaps": archive.gaps(),
    }
    window = gather_window(wiring.store(cfg), cfg.settings.prefix, target.name)
    report["window"] = window.as_dict()
    if problems:
        error = {"code": "wal_stream_unsafe", "message": f"{target.name}: " + "; ".join(problems)}
        report.update(status="FAILED", error=error)
    out.json({"status": "OK", **report})
    slot = "no slot"
    if state:
        slot = f"slot {state.name}: {'active' if state.active else 'INACTIVE'}, wal {state.wal_status}"
    out.line(f"{target.name}: {slot}; newest WAL {report['newest_wal'] or '-'} at {report['newest_wal_at'] or '-'}")
    for problem in problems:
        out.line(f"  ! {problem}")
    out.line(describe_window(window))
    return 1 if problems else 0


def cmd_wal_window(args: argparse.Namespace, out: Output) -> int:
    """Exit 0: restorable up to the newest WAL; 1: broken by a gap (or nothing restorable yet)."""
    cfg = wiring.load_config()
    target = cfg.target(args.target)
    window = gather_window(wiring.store(cfg), cfg.settings.prefix, target.name)
    document: dict[str, Any] = {"status": "OK", **window.as_dict()}
    if window.broken or window.empty:
        why = "broken by a gap: take a base backup" if window.broken else "nothing restorable yet: take a base backup"
        document.update(status="FAILED", error={"code": "window_broken", "message": f"{target.name}: {why}"})
    out.json(document)
    out.line(describe_window(window))
    return 1 if window.broken or window.empty else 0


def cmd_wal_prune(args: argparse.Namespace, out: Output) -> int:
    cfg = wiring.load_config()
    target = _streaming_target(cfg, args.target)
    # The same pass as the daily snapshot pruner's (prune_runs), which only does not extend the kept bases' locks.
    report = prune_streaming_target(cfg, target, now_utc(), args.dry_run)
    document: dict[str, Any] = {"status": "OK", **report.as_dict()}
    if report.errors:
        message = f"{target.name}: {len(report.errors)} deletion(s) failed: {report.errors[0]}"
        document.update(status="FAILED", error={"code": "storage_failed", "message": message})
    out.json(document)
    verb = "would delete" if args.dry_run else "deleted"
    out.line(
        f"{target.name}: {verb} {len(report.deleted_bases)} base backup(s), {len(report.deleted_wal)} WAL"
        f" file(s) (before {report.cutoff or '-'}), {len(report.deleted_gaps)} gap record(s);"
        f" kept {len(report.kept_bases)} base(s), {len(report.locked)} locked object(s)"
    )
    for key, why in sorted(report.locked.items()):
        out.line(f"  kept {key}: {why}")
    for error in report.errors:
        out.line(f"  error: {error}")
    return 1 if report.errors else 0
