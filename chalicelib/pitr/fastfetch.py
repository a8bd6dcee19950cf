"""The `lifeboat` console script, with a fast path for PostgreSQL's restore_command when the spool has the segment.

PostgreSQL starts `lifeboat wal-fetch --target T %f %p` once per WAL segment. Importing the whole command line
(every command, boto3, pydantic, the configuration) costs most of a second, which a recovery of thousands of
segments pays thousands of times; a segment the previous call prefetched needs none of it. So `main` first looks
at the command line: a plain `wal-fetch` of a segment name with prefetching on (`--prefetch` N > 0) whose spool
(chalicelib.pitr.spool) holds that segment, verified exactly as `Spool.take` verifies it (its sidecar, written
last, names this segment and target; size and SHA-256 match), is written to PATH and removed from the spool with
the standard library alone. Everything else runs the full command line (chalicelib.cli.main), unchanged: any
other command or option (`-v`, `--help`, an abbreviation), a miss, a damaged spooled file (the full path refuses
it, says so and reads S3), a spool directory the full path refuses (exit 255), a PATH that cannot be written.
The fast path never exits non-zero itself, so the exit codes are the full path's (chalicelib.pitr.fetch). A hit
neither reads the configuration nor refills the spool: the next miss fetches its segment and the next N.
"""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from chalicelib.errors import LifeboatError
from chalicelib.pitr.spool import Spool, default_directory, deliver
from chalicelib.pitr.walnames import is_segment_name

COMMAND = "wal-fetch"
FULL_COMMAND_LINE = "chalicelib.cli"  # imported only when the fast path does not serve (the point of this module)
VALUED_GLOBALS = ("--config", "--region", "--profile", "--stack")  # read by the full path only
VALUED_OPTIONS = ("--target", "--prefetch", "--prefetch-dir")
DEFAULT_PREFETCH = 8  # chalicelib.pitr.fetch.DEFAULT_PREFETCH (tests/pitr/test_fast_fetch.py checks they agree)


@dataclass(frozen=True)
class Request:
    """A `wal-fetch` command line the fast path understands."""

    target: str
    name: str
    path: Path
    prefetch: int = DEFAULT_PREFETCH
    prefetch_dir: Path | None = None
    as_json: bool = False


def parse(argv: Sequence[str]) -> Request | None:
    """The request, when `argv` is exactly `[globals] wal-fetch [options] NAME PATH` in spellings argparse gives
    the same meaning (each option once, `--opt VALUE` or `--opt=VALUE`); None for anything else."""
    values: dict[str, str] = {}
    positionals: list[str] = []
    as_json, command_seen, rest = False, False, list(argv)
    while rest:
        word = rest.pop(0)
        option, has_value, inline = word.partition("=")
        if word == "--json" and not as_json:
            as_json = True
        elif not word.startswith("-"):
            if command_seen:
                positionals.append(word)
            elif word != COMMAND:
                return None
            command_seen = True
        elif option in VALUED_GLOBALS + (VALUED_OPTIONS if command_seen else ()) and option not in values:
            if not has_value and (not rest or rest[0].startswith("-")):
                return None
            values[option] = inline if has_value else rest.pop(0)
        else:
            return None  # -v, --help, --version, an abbreviation, a repeat, `--`: the full parser decides
    if not command_seen or len(positionals) != 2 or "--target" not in values:
        return None
    prefetch = values.get("--prefetch", str(DEFAULT_PREFETCH))
    if not prefetch.isdigit():
        return None
    prefetch_dir = Path(values["--prefetch-dir"]) if values.get("--prefetch-dir") else None  # "": the default
    name, path = positionals
    return Request(values["--target"], name, Path(path), int(prefetch), prefetch_dir, as_json)


def serve(request: Request) -> bool:
    """Write the spooled, verified segment to the request's PATH and remove it from the spool; False (nothing
    written, nothing removed) when it is not there or not usable, or the spool's directory is refused."""
    if request.prefetch <= 0 or not is_segment_name(request.name):
        return False
    try:
        spool = Spool(request.prefetch_dir or default_directory(request.path), request.target)
    except LifeboatError:
        return False  # the full path refuses it too and says why (exit 255)
    data = spool.peek(request.name).data
    if data is None:
        return False
    try:
        deliver(request.path, data)
    except OSError:
        return False  # the full path reports it (exit 255)
    spool.discard(request.name)
    _report(request, spool, len(data))
    return True


def _report(request: Request, spool: Spool, size: int) -> None:
    """What the full path prints for a spool hit (chalicelib.pitr.commands.cmd_wal_fetch)."""
    try:
        left = spool.ready_after(request.name, size, request.prefetch)
    except OSError:
        left = 0
    message = (
        f"{COMMAND} {request.name}: {size} bytes from the prefetch spool;"
        f" {left} of the next {request.prefetch} already prefetched"
    )
    if request.as_json:
        document = {"status": "OK", "name": request.name, "path": str(request.path), "message": message}
        sys.stdout.write(json.dumps(document, indent=2 if sys.stdout.isatty() else None) + "\n")
    else:
        sys.stdout.write(message + "\n")


def main() -> int:
    """`lifeboat`: a spool hit of wal-fetch served here, everything else by the full command line."""
    request = parse(sys.argv[1:])
    if request is not None and serve(request):
        return 0
    full: int = importlib.import_module(FULL_COMMAND_LINE).main()
    return full


if __name__ == "__main__":
    sys.exit(main())
