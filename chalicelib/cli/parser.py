"""The `lifeboat` parser's machinery: global options accepted before or after the subcommand, one call per
subcommand (`add_command`), usage errors as exceptions (so `--json` reports them too), the version.

Adding a subcommand (e.g. `lifeboat check`) is one call in chalicelib.cli.entry.build_parser:

    add_command(sub, "check", run_check, "pre-flight checks of a target", [
        arg("target", nargs="?", help="one target (default: all)"),
    ])

where `run_check(args, out: Output) -> int` writes human lines with `out.line(...)`, its JSON document with
`out.json(...)`, and returns an exit code (or raises a LifeboatError: `main` reports it once). The global
options (--config, --region, --profile, --stack, -v, --json) come with it; every option needs a help text
(tests/unit/test_cli_parser.py), and a JSON schema in schemas/cli.json (tests/cli/test_json_contract.py).
A command whose caller reads its exit codes differently (`wal-fetch`: PostgreSQL's restore_command) passes
`error_exit=`: every error of that command, a usage error included, then exits with it instead of 1 or 2.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from typing import Any, NoReturn, TextIO

from chalicelib.cli.output import Output

DISTRIBUTION = "pg-lifeboat"

EPILOG = """\
output: human text on stdout; with --json one JSON document instead (schemas/cli.json), and on failure
  {"status": "FAILED", "error": {"code": ..., "message": ...}}. Each error is reported once: on stderr
  as one "lifeboat: ..." line, or as that JSON document with --json. -v adds the structured log lines on stderr.

exit codes:
  0  success
  1  the operation failed (a backup, a restore, a verification, AWS or PostgreSQL refused)
  2  bad input or configuration (arguments, the configuration file, a missing target, backup or stack)

configuration: --config or LIFEBOAT_CONFIG (a JSON/TOML file, or ssm:/path), or --stack NAME (a deployed
  stack's outputs: configuration, jobs table, queues); AWS: --profile/AWS_PROFILE, --region/AWS_REGION.
"""

Runner = Callable[[argparse.Namespace, Output], int]


class UsageError(Exception):
    """The command line itself is wrong (unknown option, missing argument): exit 2, or the command's error_exit."""

    def __init__(self, message: str, usage: str, error_exit: int | None = None) -> None:
        super().__init__(message)
        self.usage = usage
        self.error_exit = error_exit


class LifeboatParser(argparse.ArgumentParser):
    """argparse, except that a usage error is raised (main reports it, as JSON under --json) instead of exiting."""

    error_exit: int | None = None  # add_command's: the exit code of every error of this subcommand

    def error(self, message: str) -> NoReturn:
        raise UsageError(message, self.format_usage(), self.error_exit)


def installed_version() -> str:
    """The installed distribution's version; a checkout that was never installed says so."""
    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:
        return "unknown (not installed: pip install .)"


def _global_options(parser: argparse.ArgumentParser, *, after_command: bool) -> None:
    """The options every command takes. After the subcommand they default to SUPPRESS, so that an option given
    before it is not overwritten by the subcommand's default (argparse copies a subparser's defaults over)."""

    def default(value: Any) -> Any:
        return argparse.SUPPRESS if after_command else value

    group = parser.add_argument_group("global options (before or after the command)")
    group.add_argument(
        "--config", default=default(None), metavar="PATH|ssm:/PATH", help="configuration (default: $LIFEBOAT_CONFIG)"
    )
    group.add_argument(
        "--region", default=default(None), help="AWS region of every client (default: $AWS_REGION, else the profile's)"
    )
    group.add_argument("--profile", default=default(None), help="AWS profile of every client (default: $AWS_PROFILE)")
    group.add_argument(
        "--stack",
        default=default(None),
        metavar="NAME",
        help="a deployed pg-lifeboat CloudFormation stack: its outputs give the configuration, table and queues",
    )
    group.add_argument(
        "-v", "--verbose", action="store_true", default=default(False), help="the structured log lines on stderr"
    )
    group.add_argument("--json", action="store_true", default=default(False), help="one JSON document on stdout")


@dataclass(frozen=True)
class Arg:
    """One add_argument call, kept for add_command."""

    flags: tuple[str, ...]
    options: dict[str, Any] = field(default_factory=dict)


def arg(*flags: str, **options: Any) -> Arg:
    return Arg(flags, options)


def new_parser(description: str) -> tuple[LifeboatParser, argparse._SubParsersAction[LifeboatParser]]:
    """The top-level parser with the global options, --version and the exit codes; and its subcommands."""
    parser = LifeboatParser(
        prog="lifeboat", description=description, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"lifeboat {installed_version()}")
    _global_options(parser, after_command=False)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    return parser, sub


def add_command(
    sub: argparse._SubParsersAction[LifeboatParser],
    name: str,
    run: Runner,
    help: str,
    args: Sequence[Arg] = (),
    *,
    epilog: str | None = None,
    error_exit: int | None = None,
) -> argparse.ArgumentParser:
    """A subcommand: its runner, its one-line help, its own arguments; the global options come with it. `epilog`
    replaces the exit codes in its --help; `error_exit` replaces main's 1/2 for every error (see the docstring)."""
    parser = sub.add_parser(name, help=help, description=help, epilog=epilog or EPILOG.split("\n\n")[1])
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.error_exit = error_exit
    for a in args:
        parser.add_argument(*a.flags, **a.options)
    _global_options(parser, after_command=True)
    parser.set_defaults(run=run, error_exit=error_exit)
    return parser


def print_usage_error(exc: UsageError, stream: TextIO) -> None:
    stream.write(f"{exc.usage}lifeboat: error: {exc}\n")
