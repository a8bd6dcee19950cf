"""PostgreSQL client programs: finding the right binary, running it, and explaining its failures.

The one way this project runs a subprocess. Binaries are looked up under roots laid out as
`<root>/<major>/bin/<tool>` (LIFEBOAT_PG_ROOTS, chalicelib.env: by default the Lambda layer's /opt/pg, then
Debian's /usr/lib/postgresql; chalicelib.wiring.toolbox() builds the Toolbox from it); when no root holds a
major that fits the server, the tool found on PATH is used if its own major fits. Passwords go
to the child through PGPASSWORD in a minimal environment, never on the command line, and every line of
stderr that leaves this module is scrubbed.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import IO

from chalicelib.env import inherited
from chalicelib.errors import DatabaseConnectionError, PgToolError

# lz4 and zstd archives need pg_dump 16 or newer.
COMPRESSION_MIN_MAJOR = {"lz4": 16, "zstd": 16, "gzip": 0, "none": 0}
_PASSWORD_IN_TEXT = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)
_URI_PASSWORD = re.compile(r"(postgres(?:ql)?://[^:/@\s]+:)([^@\s]+)(@)")


@dataclass(frozen=True)
class Deadline:
    """Time left in this invocation (a Lambda context's get_remaining_time_in_millis), minus a margin."""

    remaining_ms: Callable[[], int]
    margin_seconds: float = 60

    def seconds_left(self) -> float:
        return self.remaining_ms() / 1000 - self.margin_seconds


@dataclass(frozen=True)
class PgTool:
    name: str
    major: int
    path: Path


def scrub(text: str, secrets: Iterable[str] = ()) -> str:
    """Remove passwords and tokens from text that may reach a log, an error or a manifest."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    text = _PASSWORD_IN_TEXT.sub(r"\1***", text)
    return _URI_PASSWORD.sub(r"\1***\3", text)


@dataclass
class Toolbox:
    """The PostgreSQL client binaries available on this machine, by major version, under `roots` (searched in
    order; the first root holding a major wins), with the tool found on `search_path` as a fallback.

    `search_path`: a PATH-style list of directories (None: this process's PATH). Its tool (Debian's pg_wrapper,
    Homebrew's, a distribution's) is used only when no root holds a major that fits the server."""

    roots: Sequence[Path]
    search_path: str | None = None

    def majors(self, tool: str) -> dict[int, PgTool]:
        """The tool under the roots, by major (the PATH fallback not included)."""
        found: dict[int, PgTool] = {}
        for root in self.roots:
            if not root.is_dir():
                continue
            for entry in root.iterdir():
                path = entry / "bin" / tool
                if entry.name.isdigit() and os.access(path, os.X_OK):
                    found.setdefault(int(entry.name), PgTool(tool, int(entry.name), path))
        return dict(sorted(found.items()))

    def on_path(self, tool: str) -> PgTool | None:
        """The tool on the search path and its major (from `tool --version`), or None."""
        path = self.search_path if self.search_path is not None else inherited(("PATH",)).get("PATH", "")
        found = shutil.which(tool, path=path) if path else None
        if not found:
            return None
        major = tool_major(Path(found))
        return PgTool(tool, major, Path(found)) if major is not None else None

    def pick(self, tool: str, server_major: int, purpose: str = "") -> PgTool:
        """The binary of the server's own major if bundled, else the oldest newer one; never an older one. When
        no root holds one that fits, the tool on the search path, if its major is the server's or newer.

        Older is impossible (pg_dump refuses newer servers; an older pg_restore rejects newer archives).
        Newer works but is a last resort: a pg_dump 17 archive restored by pg_restore 17 into a
        PostgreSQL 15 server fails on `SET transaction_timeout`, so the matching major is preferred.
        """
        available = self.majors(tool)
        if server_major in available:
            return available[server_major]
        for major, found in available.items():
            if major > server_major:
                return found
        fallback = self.on_path(tool)
        if fallback is not None and fallback.major >= server_major:
            return fallback
        on_path = (
            f"; the {tool} on PATH ({fallback.path}) is {fallback.major}, older than the server"
            if fallback
            else f"; no {tool} on PATH"
        )
        if not available:
            raise PgToolError(
                f"no {tool} found under {', '.join(map(str, self.roots))}: attach the pg-clients"
                f" layer (or set LIFEBOAT_PG_ROOTS to <root> holding <root>/{server_major}/bin/{tool}){on_path}"
            )
        have = ", ".join(str(m) for m in available)
        raise PgToolError(
            f"{purpose or 'this server'} needs {tool} {server_major} or newer but the newest bundled is"
            f" {max(available)} (majors available: {have}): rebuild the layer with that major{on_path}"
        )


_VERSION = re.compile(r"\(PostgreSQL\)\s+(\d+)")


def tool_major(path: Path) -> int | None:
    """The major version a PostgreSQL client program reports (`pg_dump (PostgreSQL) 15.18 ...` → 15); None when it
    does not run or says something else. Cached per file and modification time."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return _tool_major(str(path), stat.st_mtime_ns)


@cache
def _tool_major(path: str, _mtime_ns: int) -> int | None:
    try:
        done = subprocess.run(
            [path, "--version"], capture_output=True, text=True, timeout=10, env=minimal_env({}), check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    found = _VERSION.search(done.stdout)
    return int(found.group(1)) if done.returncode == 0 and found else None


def effective_compression(configured: str, pg_dump_major: int) -> str:
    """lz4 and zstd exist from pg_dump 16 on; older majors write gzip instead (recorded in the manifest)."""
    method = configured.split(":", 1)[0]
    if pg_dump_major < COMPRESSION_MIN_MAJOR.get(method, 0):
        return "gzip:6"
    return configured


def conninfo_dbname(name: str) -> str:
    """`dbname='…'` for --dbname/--database: libpq reads a bare name containing '=' or a URI as connection
    settings, which could point the tool at another host (with the password in its environment)."""
    escaped = name.replace("\\", "\\\\").replace("'", "\\'")
    return f"dbname='{escaped}'"


def child_processes(parent: int) -> dict[int, str]:
    """The direct children of a process, pid → command name, from /proc."""
    children: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses, so split at the last ")".
        if int(stat[stat.rindex(")") + 2 :].split()[1]) == parent:
            children[int(entry.name)] = stat[stat.index("(") + 1 : stat.rindex(")")]
    return children


def open_files(pid: int) -> set[tuple[int, int]] | None:
    """The files (st_dev, st_ino) a process and its direct children hold open (pg_dump -j forks its workers);
    None when that cannot be known (no /proc, as on macOS, or the process's fd table is unreadable).

    Identities, not paths: /proc/<pid>/fd/N links to the resolved path, which is not the path the caller built
    when any component of it (TMPDIR) is a symlink; os.stat on the fd link gives the open file itself."""
    held: set[tuple[int, int]] = set()
    try:
        pids = [pid, *child_processes(pid)]
        os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return None
    for p in pids:
        try:
            fds = list(Path(f"/proc/{p}/fd").iterdir())
        except OSError:  # a worker that exited since the listing holds nothing
            continue
        for fd in fds:
            with contextlib.suppress(OSError):
                st = os.stat(fd)
                held.add((st.st_dev, st.st_ino))
    return held


def minimal_env(extra: Mapping[str, str]) -> dict[str, str]:
    """The child's whole environment: nothing of ours (AWS credentials included) leaks into it."""
    base = inherited(("PATH", "TZ", "LANG", "LC_ALL", "HOME", "TMPDIR"))
    base.setdefault("PATH", "/usr/bin:/bin")
    return {**base, **extra}


# libpq and server messages, in order of precedence: (kind, pattern, what went wrong, what the operator should do).
_EXPLANATIONS: list[tuple[str, re.Pattern[str], str, str]] = [
    (
        "auth",
        re.compile(r"password authentication failed|authentication failed for user|PAM authentication failed", re.I),
        "the server refused the credentials for user {user} ({source})",
        "check the password in the secret, or the IAM setup",
    ),
    (
        "unknown_host",
        re.compile(r"could not translate host name|Name or service not known|nodename nor servname", re.I),
        "unknown host {host}",
        "check connection.host",
    ),
    (
        "refused",
        re.compile(r"Connection refused", re.I),
        "nothing accepts connections at {host}:{port}",
        "check host, port and that the server is running",
    ),
    (
        "timeout",
        re.compile(r"timeout expired|timed out", re.I),
        "connecting to {host}:{port} timed out",
        "check security groups and the route from the function's VPC",
    ),
    (
        "hba",
        re.compile(r"no pg_hba\.conf entry", re.I),
        "the server's pg_hba.conf rejects this client (user {user}, sslmode {sslmode})",
        "allow it or change sslmode",
    ),
    # sslmode verify-full (the default) and verify-ca: no CA file, a certificate from another CA, another name.
    (
        "tls_verify",
        re.compile(r"certificate verify failed|certificate.*(not|doesn't) match|root certificate file", re.I),
        "TLS verification of {host} failed (sslmode {sslmode})",
        "set connection.sslrootcert to the CA that signed the server's certificate (unset: the layer's RDS CA"
        " bundle) and connect by the host name the certificate names, or use verify-ca; if the certificate is not"
        " the server's, something is in the middle (no credential was sent to it)",
    ),
    (
        "no_tls",
        re.compile(r"server does not support SSL|SSL off", re.I),
        "the server does not offer TLS but sslmode is {sslmode}",
        "enable ssl on the server or relax sslmode",
    ),
    (
        "no_database",
        re.compile(r'database "[^"]+" does not exist', re.I),
        "database {database} does not exist on {host}",
        "check connection.database",
    ),
    (
        "no_role",
        re.compile(r'role "[^"]+" does not exist', re.I),
        "role {user} does not exist on {host}",
        "check connection.user",
    ),
    # pg_dump waits for its table locks under statement_timeout = lock_wait_timeout.
    (
        "lock",
        re.compile(r"could not obtain lock|lock timeout|canceling statement due to (lock|statement) timeout", re.I),
        "a table stayed locked longer than lock_wait_timeout_seconds",
        "another session holds a conflicting lock (e.g. ACCESS EXCLUSIVE); retry later or raise the timeout",
    ),
    (
        "version_mismatch",
        re.compile(r"aborting because of server version mismatch", re.I),
        "pg_dump is older than the server",
        "add the server's major to the layer",
    ),
    # Over TLS a vanished server reads as "SSL SYSCALL error: EOF detected" or "SSL connection has been closed".
    (
        "closed",
        re.compile(
            r"terminating connection|server closed the connection unexpectedly|connection to server .* lost"
            r"|SSL SYSCALL error: EOF detected|SSL connection has been closed unexpectedly",
            re.I,
        ),
        "the server closed the connection during the run (restart, failover or admin kill)",
        "",
    ),
]

CONNECTION_PATTERNS = 9  # the first entries above describe failures to connect at all


_MISSING_ROLE = re.compile(r'role "([^"]+)" does not exist', re.I)


@dataclass(frozen=True)
class Diagnosis:
    """A libpq/server message understood: what went wrong, what to do about it, and whether it is a failure to
    connect at all (as opposed to one during the run)."""

    kind: str  # "auth", "unknown_host", "refused", "no_database", ... (the first column of _EXPLANATIONS)
    problem: str
    fix: str
    connection: bool

    @property
    def advice(self) -> str:
        return f"{self.problem}: {self.fix}" if self.fix else self.problem


def diagnose(message: str, context: Mapping[str, object]) -> Diagnosis | None:
    """The first known failure in a libpq/server message (None: not one this module knows)."""
    missing = _MISSING_ROLE.search(message)
    if missing and missing.group(1) != context.get("user"):
        # Not the login: a role the archive names (owner, grantee) that this server lacks.
        return Diagnosis(
            "archive_role",
            f"role {missing.group(1)} named in the backup does not exist on {context.get('host', '?')}",
            "restore its roles first (--globals / options.globals), create it, or restore with --no-owner --no-acl",
            False,
        )
    for index, (kind, pattern, problem, fix) in enumerate(_EXPLANATIONS):
        if pattern.search(message):
            safe = {k: context.get(k, "?") for k in ("user", "host", "port", "sslmode", "database")}
            safe["source"] = context.get("source", "the configured credentials")
            return Diagnosis(kind, problem.format(**safe), fix.format(**safe), index < CONNECTION_PATTERNS)
    return None


def explain(message: str, context: Mapping[str, object]) -> tuple[str, bool]:
    """(advice, is_connection_problem) for a libpq/server message; advice is '' when unknown."""
    found = diagnose(message, context)
    return (found.advice, found.connection) if found else ("", False)


def _meaningful_line(lines: Sequence[str]) -> str:
    for line in reversed(lines):
        if "error" in line.lower() or "fatal" in line.lower() or "failed" in line.lower():
            return line.strip()
    return lines[-1].strip() if lines else ""


@dataclass
class ChildProcess:
    """A running PostgreSQL client program, presented as a readable stream plus an exit check."""

    tool: PgTool
    args: list[str]
    env: dict[str, str]
    secrets: tuple[str, ...] = ()
    context: Mapping[str, object] = field(default_factory=dict)
    stdin: IO[bytes] | int | None = None
    capture_stdout: bool = True
    _proc: subprocess.Popen[bytes] | None = None
    _stderr: deque[str] = field(default_factory=lambda: deque(maxlen=40))
    _stderr_thread: threading.Thread | None = None
    stop_reason: str | None = None

    def start(self) -> ChildProcess:
        self._proc = subprocess.Popen(
            [str(self.tool.path), *self.args],
            stdin=self.stdin if self.stdin is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE if self.capture_stdout else subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=self.env,
            bufsize=1024 * 1024 if self.capture_stdout else -1,
        )
        self._stderr_thread = threading.Thread(target=self._drain_stderr, daemon=True)
        self._stderr_thread.start()
        return self

    def _drain_stderr(self) -> None:
        assert self._proc is not None and self._proc.stderr is not None
        for raw in self._proc.stderr:
            self._stderr.append(scrub(raw.decode("utf-8", "replace").rstrip(), self.secrets))

    @property
    def stdout(self) -> IO[bytes]:
        assert self._proc is not None and self._proc.stdout is not None
        return self._proc.stdout

    @property
    def stdin_pipe(self) -> IO[bytes]:
        assert self._proc is not None and self._proc.stdin is not None
        return self._proc.stdin

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def poll(self) -> int | None:
        assert self._proc is not None
        return self._proc.poll()

    def stderr_tail(self) -> list[str]:
        return list(self._stderr)

    def stop(self, reason: str) -> None:
        """Kill the child (deadline, upload failure); `check` then reports `reason`."""
        if self._proc is not None and self._proc.poll() is None:
            self.stop_reason = reason
            self._proc.kill()

    def wait(self) -> int:
        assert self._proc is not None
        code = self._proc.wait()
        if self._stderr_thread:
            self._stderr_thread.join(timeout=5)
        return code

    def check(self) -> None:
        """Wait for the exit; raise a PgToolError (or DatabaseConnectionError) that says what to fix."""
        code = self.wait()
        if code == 0 and self.stop_reason is None:
            return
        tail = self.stderr_tail()
        detail = _meaningful_line(tail)
        if self.stop_reason:
            raise PgToolError(f"{self.tool.name} was stopped: {self.stop_reason}")
        advice, is_connection = explain("\n".join(tail), self.context)
        cause = f"{self.tool.name} {self.tool.major} exited with {'signal ' + str(-code) if code < 0 else code}"
        message = f"{advice} ({cause}: {detail})" if advice else f"{cause}: {detail or 'no error output'}"
        raise (DatabaseConnectionError if is_connection else PgToolError)(scrub(message, self.secrets))

    def __enter__(self) -> ChildProcess:
        return self.start() if self._proc is None else self

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        for stream in (self._proc.stdin, self._proc.stdout, self._proc.stderr) if self._proc else ():
            if stream:
                with contextlib.suppress(BrokenPipeError):  # unflushed input to a child that has exited
                    stream.close()


WATCH_INTERVAL = 0.2  # seconds between the watchdog's looks at the deadline


@contextmanager
def watchdog(child: ChildProcess, deadline: Deadline | None) -> Iterator[threading.Event]:
    """Kill the child when the deadline comes, leaving the margin to abort and record the failure.

    The event is set when the watchdog fired, so callers can report a DeadlineError, not a tool error.
    A thread that sleeps in short steps rather than threading.Timer: plain sleeps, no timed lock waits,
    which libfaketime (the suite's run on another date) cannot handle.
    """
    fired = threading.Event()
    if deadline is None:
        yield fired
        return
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            left = deadline.seconds_left()
            if left <= 0:
                fired.set()
                child.stop("the invocation's time limit is near")
                return
            time.sleep(min(WATCH_INTERVAL, left))

    threading.Thread(target=watch, name="deadline-watchdog", daemon=True).start()
    try:
        yield fired
    finally:
        done.set()
