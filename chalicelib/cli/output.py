"""The one output contract of `lifeboat`: human text by default, one JSON document with `--json` (one line).

A command writes through `Output`: `line(...)` for people (dropped under `--json`), `json(...)` for programs
(dropped without it). A failure is reported by `main` once: `{"status": "FAILED", "error": {"code", "message"}}`
on stdout under `--json`, else one `lifeboat: ...` line on stderr.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TextIO

# Exit codes, everywhere (documented in `lifeboat --help`).
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


@dataclass
class Output:
    stream: TextIO
    as_json: bool

    def line(self, text: str = "") -> None:
        """One line of the human report (nothing under --json)."""
        if not self.as_json:
            self.stream.write(text + "\n")

    def json(self, document: Any) -> None:
        """The command's JSON document (nothing without --json), values JSON lacks (datetimes) as strings: on one
        line (a Fargate task's log event, a script's input), indented only for a terminal."""
        if self.as_json:
            indent = 2 if self.stream.isatty() else None
            self.stream.write(json.dumps(document, indent=indent, default=str) + "\n")

    def report_failure(self, code: str, message: str, exit_code: int) -> None:
        """The one report of a failure: its JSON document under --json, else one `lifeboat: ...` line on stderr
        (bad input: the message alone; otherwise with its code). main uses it for every error a command raises."""
        if self.as_json:
            self.json(failure(code, message))
        elif exit_code == EXIT_BAD_INPUT:
            sys.stderr.write(f"lifeboat: {message}\n")
        else:
            sys.stderr.write(f"lifeboat: {code}: {message}\n")


def failure(code: str, message: str, **details: Any) -> dict[str, Any]:
    """The JSON document of a failed command (schemas/cli.json, $defs/failure)."""
    return {"status": "FAILED", "error": {"code": code, "message": message}, **details}


def human_size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"


def human_span(seconds: float | None) -> str:
    """A duration or an age in the two largest units: 45s, 3m05s, 2h14m, 3d4h; '-' when unknown."""
    if seconds is None:
        return "-"
    if seconds < 0:
        return "future"
    if seconds < 60:
        return f"{seconds:.1f}s" if seconds < 10 else f"{int(seconds)}s"
    whole = int(seconds)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s"


def seconds(span: timedelta | None) -> float | None:
    return None if span is None else span.total_seconds()


def progress(stream: TextIO, label: str) -> Callable[[int], None] | None:
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
        stream.write(f"\r{label}: {human_size(done)} streamed, {human_size(rate)}/s   ")
        stream.flush()

    return show


def end_progress(stream: TextIO) -> None:
    if stream.isatty():
        stream.write("\n")
