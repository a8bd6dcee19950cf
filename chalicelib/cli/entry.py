"""`lifeboat`: the operator's command line. It calls the same code as the Lambda handlers.

build_parser is the table of contents (one add_command per subcommand); main runs one command and reports its
one error: exit 0 success, 1 the operation failed, 2 bad input or configuration (chalicelib.cli.parser.EPILOG);
except for a command registered with its own error_exit (`wal-fetch`: 255, so PostgreSQL stops recovery rather
than read 1 as "the end of the WAL" and promote early).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TextIO

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    NoCredentialsError,
    NoRegionError,
    PartialCredentialsError,
    ProfileNotFound,
)

from chalicelib import wiring
from chalicelib.adapters.aws_errors import error_code, error_message
from chalicelib.cli import commands, listing, operations
from chalicelib.cli.completion import SHELLS, script
from chalicelib.cli.output import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_INTERRUPTED, Output
from chalicelib.cli.parser import LifeboatParser, UsageError, add_command, arg, new_parser, print_usage_error
from chalicelib.errors import (
    BadRequestError,
    ConfigError,
    ConflictError,
    ForbiddenError,
    LifeboatError,
    NotFoundError,
)
from chalicelib.observability import command_line_logging
from chalicelib.pitr import commands as pitr
from chalicelib.pitr.fetch import DEFAULT_PREFETCH, FATAL

BAD_INPUT = (ConfigError, BadRequestError, NotFoundError, ConflictError, ForbiddenError)
WAL_FETCH_EXITS = """exit codes (PostgreSQL's restore_command reads them):
  0    the file was fetched, verified and written to PATH
  1    not in the archive: the end of the WAL (recovery ends there)
  255  anything else: damaged, S3 unreachable, bad configuration or arguments (recovery stops, never ends early)
"""
NO_AWS_ACCESS = (NoCredentialsError, PartialCredentialsError, NoRegionError, ProfileNotFound)


def positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not positive")
    return value


def build_parser() -> LifeboatParser:
    # long because it is the command line's table of contents: one add_command per subcommand, read top to bottom.
    parser, sub = new_parser("PostgreSQL backups and restores on AWS.")
    add_command(sub, "validate", commands.cmd_validate, "check the configuration (and, with --stack, its bucket)")
    add_command(
        sub,
        "backup",
        commands.cmd_backup,
        "take a logical backup of a target now",
        [
            arg("target", help="the target's name in the configuration"),
            # What a Fargate task runs for the backup worker (chalicelib.fargate): the same slot, claimed the same way.
            arg("--slot", help="back up this schedule slot (ISO 8601, UTC without an offset; default: now)"),
            arg("--database", default="", help="one database of a whole-server (all_databases) target"),
            arg(
                "--trigger",
                choices=("on-demand", "schedule"),
                default="on-demand",
                help="recorded in the manifest (default: on-demand)",
            ),
        ],
    )
    add_command(
        sub,
        "list",
        listing.cmd_list,
        "list complete backups and snapshots (with --failed also failed attempts), newest first",
        [
            arg("target", nargs="?", help="one target (default: every target)"),
            arg("--limit", type=positive, default=50, help="at most this many rows in all (default: 50)"),
            arg("--failed", action="store_true", help="also the failed attempts, with their error"),
        ],
    )
    add_command(
        sub,
        "restore",
        commands.cmd_restore,
        "restore a logical backup into a new database",
        [
            arg("backup_id", help="e.g. logical:shop:20261129T030000Z (lifeboat list shows them)"),
            arg("--database", required=True, help="name of the new database (must not exist, unless --clean)"),
            arg("--into-target", help="server to restore on (default: the backup's own target)"),
            arg(
                "--schema",
                action="append",
                default=[],
                metavar="NAME",
                help="restore only this schema (exact name; repeatable; with --table: their union)",
            ),
            arg(
                "--table",
                action="append",
                default=[],
                metavar="[SCHEMA.]TABLE",
                help="restore only this table (exact name, any schema unless qualified; repeatable)",
            ),
            arg(
                "--globals",
                action="store_true",
                help="first create the backup's roles the server lacks (existing roles are never altered)",
            ),
            arg("--jobs", type=positive, default=1, help="pg_restore -j: download, verify, restore in parallel"),
            arg(
                "--clean",
                action="store_true",
                help="replace an existing database: restore beside it, verify, swap; the old one is kept renamed",
            ),
            arg("--confirm", metavar="NAME", help="with --clean: the database name again, to confirm"),
            arg("--no-owner", action="store_true", help="pg_restore --no-owner: objects owned by the login"),
            arg("--no-acl", action="store_true", help="pg_restore --no-acl: skip GRANT/REVOKE"),
        ],
    )
    add_command(
        sub,
        "verify",
        commands.cmd_verify,
        "re-read a backup's objects, check sizes, SHA-256 and the manifest's signature (exit 1: it does not verify)",
        [arg("backup_id", help="e.g. logical:shop:20261129T030000Z")],
    )
    add_command(
        sub,
        "restores",
        commands.cmd_restores,
        "restore jobs started through the API (recent, or one by id)",
        [
            arg("restore_id", nargs="?", help="one job, e.g. r-0123456789abcdef (default: the recent ones)"),
            arg("--limit", type=positive, default=50, help="at most this many jobs (default: 50)"),
        ],
    )
    add_command(
        sub,
        "snapshot",
        commands.cmd_snapshot,
        "start a snapshot of a target now (does not wait)",
        [arg("target", help="a target with a physical section")],
    )
    add_command(
        sub,
        "prune",
        commands.cmd_prune,
        "delete managed snapshots the retention policy no longer keeps",
        [
            arg("target", nargs="?", help="one target (default: every target with snapshots)"),
            arg("--dry-run", action="store_true", help="print what would be deleted and why; delete nothing"),
        ],
    )
    add_command(
        sub,
        "lifecycle",
        commands.cmd_lifecycle,
        "show (or --apply) the bucket's retention lifecycle rules",
        [arg("--apply", action="store_true", help="put the rules on the bucket (replacing its lifecycle rules)")],
    )
    add_command(
        sub,
        "run-restore",
        commands.cmd_run_restore,
        "run one PENDING restore job of the API here (what a Fargate task runs)",
        [arg("restore_id", help="the job's id, from POST /restores or lifeboat restores")],
    )
    add_command(
        sub,
        "dispatch",
        commands.cmd_dispatch,
        "run one dispatcher tick (queue due backups)",
        [arg("--at", help="tick time, ISO 8601 (default: now)")],
    )
    add_operator_commands(sub)
    add_recovery_commands(sub)

    def completion(args: argparse.Namespace, out: Output) -> int:
        text = script(parser, args.shell)
        out.json({"shell": args.shell, "script": text})
        if not out.as_json:
            out.stream.write(text)
        return 0

    add_command(
        sub,
        "completion",
        completion,
        "print the shell completion script: source <(lifeboat completion bash)",
        [arg("shell", choices=SHELLS, help="the shell: bash or zsh")],
    )
    return parser


def add_operator_commands(sub: argparse._SubParsersAction[LifeboatParser]) -> None:
    """The operator's views: the pre-flight, the morning view, the restore drills."""
    add_command(
        sub,
        "check",
        operations.run_check,
        "pre-flight before the first night: secret, login, TLS, pg_dump, table privileges, bucket, lifecycle,"
        " table and queues (exit 1: a check failed)",
        [arg("target", nargs="?", metavar="TARGET", help="check only this target (default: every target)")],
    )
    add_command(
        sub,
        "status",
        operations.run_status,
        "one line per target: last good backup and its age against the schedule, failures, snapshots, the WAL"
        " window (STALE when its latest restorable time is older than 2 x wal.flush_seconds + 5 minutes, FAILING"
        " when a gap breaks it) (exit 1: a target is STALE, FAILING, NEVER backed up or DRILL_OVERDUE)",
        [
            arg("targets", nargs="*", metavar="TARGET", help="the targets to show (default: every backed-up target)"),
            arg(
                "--grace",
                type=int,
                metavar="MINUTES",
                help="how long after its slot a backup may land before the target is STALE"
                " (default: a quarter of the schedule's interval, at least 60, as the dashboard's dead-man alarm)",
            ),
        ],
    )
    add_command(
        sub,
        "drills",
        operations.run_drills,
        "restore drills: every target's latest, one target's evidence, the auditor's report, or one drill now",
        [
            arg("target", nargs="?", help="one target's drills, newest first (default: every target's latest)"),
            arg("--report", action="store_true", help="every target over a period: last success, recovery times"),
            arg("--since", metavar="YYYY-MM-DD", help="with --report: the period's first day (UTC)"),
            arg(
                "--format",
                choices=("csv", "json", "md"),
                default="md",
                help="with --report: the report's format (default: md; --json prints the json one as the document)",
            ),
            # dest: `run` is the runner add_command stores on the namespace.
            arg("--run", dest="run_now", action="store_true", help="run a drill of TARGET now (exit 1: it failed)"),
        ],
    )


def add_recovery_commands(sub: argparse._SubParsersAction[LifeboatParser]) -> None:
    """Point-in-time recovery (chalicelib.pitr): the WAL stream, base backups, restore_command, recovery."""
    # long because it is the recovery commands' table of contents: one add_command each, with their options.
    add_command(
        sub,
        "wal-stream",
        pitr.cmd_wal_stream,
        "stream a target's WAL into the bucket (runs until SIGTERM; an ECS service runs one per target)",
        [
            arg("target", help="a target with a wal section"),
            arg("--spool", metavar="DIR", help="local directory for the open segment (default: a new temporary one)"),
        ],
    )
    add_command(
        sub,
        "base-backup",
        pitr.cmd_base_backup,
        "pg_basebackup a streaming target into the bucket",
        [arg("target", help="a target with a wal section (wal-stream must be running)")],
    )
    add_command(
        sub,
        "wal-fetch",
        pitr.cmd_wal_fetch,
        "restore_command: one WAL file from the bucket, verified, to PATH (exit 1: not archived, 255: stop)",
        [
            arg("--target", required=True, help="the target whose archive to read"),
            arg("name", help="%%f: the file PostgreSQL asks for"),
            arg("path", help="%%p: where to write it"),
            arg(
                "--prefetch",
                type=int,
                default=DEFAULT_PREFETCH,
                metavar="N",
                help=f"also fetch the next N segments into a spool for the next calls (default: {DEFAULT_PREFETCH};"
                " 0: none)",
            ),
            arg("--prefetch-dir", metavar="DIR", help="the spool (default: PATH's directory/lifeboat-prefetch)"),
        ],
        epilog=WAL_FETCH_EXITS,
        error_exit=FATAL,  # never main's 1 (read as "end of WAL": an early promotion) nor 2
    )
    add_command(
        sub,
        "recover",
        pitr.cmd_recover,
        "prepare a data directory that recovers a target to a point in time",
        [
            arg("target", help="the target whose base backups and WAL to use"),
            arg("--time", help="recover to this time (ISO 8601 with an offset): commits at or before it"),
            arg("--lsn", help="recover to this LSN"),
            arg("--latest", action="store_true", help="recover all the WAL archived"),
            arg(
                "--pgdata",
                required=True,
                metavar="DIR",
                help="the new data directory (absent or empty); with --snapshot-set: the set's restored volumes",
            ),
            arg(
                "--snapshot-set",
                metavar="SET_ID",
                help="base: an app-consistent EBS snapshot set (snapshot:<target>:<stamp>) whose volumes are"
                " mounted at --pgdata, instead of a base backup",
            ),
            arg(
                "--postgres",
                metavar="BIN_DIR",
                help="bin directory of the PostgreSQL that will start it (checked: same major)",
            ),
            arg(
                "--fetch-command",
                default=pitr.DEFAULT_FETCH_COMMAND,
                help="how the server runs lifeboat in restore_command (default: lifeboat;"
                " e.g. 'python -m chalicelib.cli')",
            ),
            arg("--dry-run", action="store_true", help="say what would be used; write nothing"),
        ],
    )
    add_command(
        sub,
        "wal-status",
        pitr.cmd_wal_status,
        "the replication slot's safety and the archive's window (exit 1: a problem)",
        [arg("target", help="a target with a wal section")],
    )
    add_command(
        sub,
        "wal-window",
        pitr.cmd_wal_window,
        "when a target can be recovered to, and its gaps (exit 1: broken, or nothing restorable yet)",
        [arg("target", help="the target whose archive to read")],
    )
    add_command(
        sub,
        "wal-prune",
        pitr.cmd_wal_prune,
        "delete the base backups the retention policy drops and the WAL only they needed",
        [
            arg("target", help="a target with a wal section"),
            arg("--dry-run", action="store_true", help="say what would be deleted; delete nothing"),
        ],
    )


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    output = Output(out or sys.stdout, as_json="--json" in words)  # a usage error is reported as JSON too
    try:
        args = build_parser().parse_args(words)
    except UsageError as exc:
        exit_code = exc.error_exit or EXIT_BAD_INPUT
        if output.as_json:
            return _failed(output, "usage", str(exc), exit_code)
        print_usage_error(exc, sys.stderr)
        return exit_code
    except SystemExit as exc:  # --help, --version: printed, nothing to run
        return int(exc.code or 0)
    output.as_json = args.json
    # Log lines go to stderr. EMF metrics stay on stdout, one JSON object a line like the --json document, for the
    # stack's metric filters: only where POWERTOOLS_METRICS_DISABLED=false asks for them (a Fargate task).
    with command_line_logging(args.verbose, sys.stderr):
        return _run(args, output)


def _run(args: argparse.Namespace, output: Output) -> int:
    # long because it is the one mapping of errors to exit codes (and the command's own error_exit over it).
    own: int | None = getattr(args, "error_exit", None)  # wal-fetch: 255 for every error
    try:
        # The options go over the environment for this command only; no metrics unless POWERTOOLS_METRICS_DISABLED
        # asks for them (a Fargate task's environment does).
        with wiring.configured(
            config=args.config, region=args.region, profile=args.profile, stack=args.stack, metrics=False
        ):
            code: int = args.run(args, output)
            return code
    except BAD_INPUT as exc:
        return _failed(output, exc.code, str(exc), own or EXIT_BAD_INPUT)
    except LifeboatError as exc:
        return _failed(output, exc.code, str(exc), own or EXIT_FAILED)
    except NO_AWS_ACCESS as exc:
        hint = "configure AWS credentials and a region (aws configure; --profile, --region or AWS_PROFILE, AWS_REGION)"
        return _failed(output, "aws_unconfigured", f"{exc}: {hint}", own or EXIT_BAD_INPUT)
    except (ClientError, BotoCoreError) as exc:
        aws_code = error_code(exc)
        message = f"AWS refused: {aws_code}: {error_message(exc)}" if aws_code else f"{type(exc).__name__}: {exc}"
        return _failed(output, "aws_error", message, own or EXIT_FAILED)
    except KeyboardInterrupt:
        return _failed(output, "interrupted", "interrupted; nothing was left half-done", own or EXIT_INTERRUPTED)
    except Exception as exc:  # only under an error_exit: a traceback would exit 1, which wal-fetch must never do
        if own is None:
            raise
        return _failed(output, "internal_error", f"{type(exc).__name__}: {exc}", own)


def _failed(output: Output, code: str, message: str, exit_code: int) -> int:
    """The one report of an error: a JSON document on stdout with --json, else one line on stderr."""
    output.report_failure(code, message, exit_code)
    return exit_code
