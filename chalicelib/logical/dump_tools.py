"""The dump tools as streams into the store: pg_dump/pg_dumpall command lines, a tool under the deadline
watchdog, a custom-format archive streamed into one object, a directory-format dump uploaded file by file."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from chalicelib.adapters.pgtools import (
    ChildProcess,
    Deadline,
    PgTool,
    conninfo_dbname,
    minimal_env,
    open_files,
    watchdog,
)
from chalicelib.adapters.postgres import Login
from chalicelib.adapters.s3 import BackupStore, PutResult
from chalicelib.config import Logical
from chalicelib.errors import DeadlineError, LifeboatError, StorageError
from chalicelib.logical.catalog import ManifestObject
from chalicelib.logical.digests import manifest_object


def compression_args(compression: str, pg_dump_major: int) -> list[str]:
    """--compress in the syntax of the pg_dump that runs (method:level from 16 on, gzip level before)."""
    method, _, level = compression.partition(":")
    if pg_dump_major >= 16 or method not in ("gzip", "none"):
        return [f"--compress={compression}"]
    if method == "none":
        return ["--compress=0"]
    return [f"--compress={level or 6}"]


def pg_dump_args(opts: Logical, pg_dump: PgTool, snapshot_id: str | None, compression: str | None = None) -> list[str]:
    args = [
        f"--format={opts.format}",
        "--no-password",
        f"--lock-wait-timeout={opts.lock_wait_timeout_seconds * 1000}",
        *compression_args(compression or opts.compression, pg_dump.major),
    ]
    if opts.format == "directory":
        args.append(f"--jobs={opts.jobs}")
    if snapshot_id:
        args.append(f"--snapshot={snapshot_id}")
    for flag, patterns in (
        ("--schema", opts.schemas),
        ("--exclude-schema", opts.exclude_schemas),
        ("--table", opts.tables),
        ("--exclude-table", opts.exclude_tables),
    ):
        args.extend(f"{flag}={p}" for p in patterns)
    return args


def pg_dumpall_args(database: str) -> list[str]:
    """Roles and tablespaces. --no-role-passwords: RDS lets nobody read pg_authid."""
    return ["--globals-only", "--no-role-passwords", "--no-password", f"--database={conninfo_dbname(database)}"]


@contextmanager
def dumping(child: ChildProcess, deadline: Deadline | None) -> Iterator[None]:
    """Run a dump tool under the watchdog: its failure after the watchdog fired is a DeadlineError, and
    any other failure (an upload's) stops the tool before it is raised."""
    with child, watchdog(child, deadline) as fired:
        try:
            yield
        except LifeboatError:
            if fired.is_set():
                raise DeadlineError(
                    f"stopped {deadline.margin_seconds if deadline else 0:.0f} s before the time limit with the dump"
                    " unfinished: run this target on the long-running worker (see 'When you outgrow Lambda')"
                ) from None
            raise
        except BaseException:  # an upload failure or an interrupt: stop the tool, then re-raise
            child.stop("the upload failed")
            raise


def stream_tool(
    store: BackupStore,
    tool: PgTool,
    args: list[str],
    login: Login,
    key: str,
    tags: dict[str, str],
    deadline: Deadline | None,
    on_progress: Callable[[int], None] | None,
) -> PutResult:
    child = ChildProcess(tool, args, minimal_env(login.env()), login.secrets, login.context)
    with dumping(child, deadline):
        result = store.put_stream(key, child.stdout, tags=tags, before_complete=child.check, on_progress=on_progress)
    stored = store.head(key)
    if stored is None or stored.size != result.size:
        raise StorageError(
            f"s3://{store.bucket}/{key} holds {stored.size if stored else 'nothing'} bytes after"
            f" uploading {result.size}"
        )
    return result


def dump_directory(
    store: BackupStore,
    tool: PgTool,
    args: list[str],
    login: Login,
    prefix: str,
    tags: dict[str, str],
    deadline: Deadline | None,
    on_progress: Callable[[int], None] | None,
    written: list[str],
) -> list[ManifestObject]:
    """pg_dump -j into a local directory, each finished file uploaded and deleted while the dump goes on.

    Ephemeral storage holds only the files being written (about one table per worker), not the whole
    dump. A file is finished when no pg_dump process holds it open (listing first, then looking at the
    open files, so a file seen in the listing but not held is closed), compared by (st_dev, st_ino); where the
    open files cannot be known (no /proc), every file is uploaded after pg_dump exited. toc.dat is written last and
    uploaded after pg_dump exited 0; the manifest lists every file with its SHA-256.
    """
    objects: dict[str, ManifestObject] = {}
    uploaded = [0]

    def upload(path: Path) -> None:
        key = prefix + path.name
        written.append(key)
        with path.open("rb") as f:
            result = store.put_stream(key, f, tags=tags)
        objects[path.name] = manifest_object("dir-file", result)
        path.unlink()
        uploaded[0] += result.size
        if on_progress:
            on_progress(uploaded[0])

    with tempfile.TemporaryDirectory(prefix="lifeboat-dump-") as tmp:
        out = Path(tmp) / "dump"
        child = ChildProcess(
            tool, [*args, f"--file={out}"], minimal_env(login.env()), login.secrets, login.context, capture_stdout=False
        )
        with dumping(child, deadline):
            while child.poll() is None:
                time.sleep(0.2)
                if out.is_dir():
                    _upload_closed(out, child.pid, objects, upload)
            child.check()
        for path in sorted(out.iterdir(), key=lambda p: p.name == "toc.dat"):  # toc.dat last
            upload(path)
    return sorted(objects.values(), key=lambda o: o.key)


def _upload_closed(out: Path, pid: int, objects: dict[str, ManifestObject], upload: Callable[[Path], None]) -> None:
    """Upload the files of the dump directory that no pg_dump process holds open (toc.dat waits for the exit)."""
    listed = [p for p in sorted(out.iterdir()) if p.name != "toc.dat" and p.name not in objects]
    held = open_files(pid)
    if held is None:  # cannot tell which files are still being written: wait for pg_dump to exit
        return
    for path in listed:
        try:
            st = path.stat()
        except OSError:
            continue
        if (st.st_dev, st.st_ino) not in held:
            upload(path)
