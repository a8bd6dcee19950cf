"""The prefetch spool of `lifeboat wal-fetch`: WAL segments fetched ahead of PostgreSQL's requests, on local disk.

PostgreSQL runs restore_command once per segment, a new process each time; `wal-fetch --prefetch N` also fetches the
next N finished segments into the spool so that the next calls read them from there instead of starting S3 again.
The spool is a directory of its own, `<DIR>/lifeboat-prefetch-<target>/`, that it creates under the directory it is
given (`--prefetch-dir DIR`; default `<pg_wal>/lifeboat-prefetch/`), and it only ever deletes files it wrote there:
segment names, their sidecars and its own temporary files (a directory someone else's files share, or a data
directory given by mistake, keeps everything else). A DIR that is a data directory, contains one, or is a pg_wal is
refused before anything is written (BadRequestError: wal-fetch exits 255).
Each file `<name>` has a sidecar `<name>.json` (its name, target, size and
SHA-256, as verified when it was fetched from S3), written after the file, each through a temporary file and a rename:
the sidecar is the marker of completeness. `take` serves a file only for exactly the name (timeline included) and
target its sidecar records, only when its size and SHA-256 still match, and removes it either way: a prefetched file
is used once, and a damaged one is refused (the caller reads S3 instead). Pure file logic: no AWS.

This module imports only the standard library, chalicelib.errors and chalicelib.pitr.walnames: the fast path of
`lifeboat wal-fetch` (chalicelib.pitr.fastfetch) serves a spooled segment with it before anything else is imported.
Its log lines go to the standard library's logger of Powertools' Logger (chalicelib.observability: the same name),
which formats them when the command line has set it up.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chalicelib.errors import BadRequestError, LifeboatError
from chalicelib.pitr.walnames import MiB, Segment, is_segment_name

SIDECAR = ".json"
TEMPORARY = ".tmp"
DIRECTORY_NAME = "lifeboat-prefetch"
DELIVERY_TEMPORARY = ".lifeboat-tmp"

logger = logging.getLogger("lifeboat")  # chalicelib.observability.SERVICE, not imported: it brings pydantic


def default_directory(path: Path) -> Path:
    """Next to the file PostgreSQL asked for (%p is `pg_wal/RECOVERYXLOG`): `<pg_wal>/lifeboat-prefetch/` (the
    spool itself is a subdirectory of it, Spool.directory)."""
    return path.parent / DIRECTORY_NAME


def owned(name: str) -> bool:
    """A file name the spool writes: a segment, its sidecar, or either's temporary file (`_write_atomically`)."""
    if name.startswith(".") and name.endswith(TEMPORARY):
        name = name[1 : -len(TEMPORARY)]
    return is_segment_name(name.removesuffix(SIDECAR))


def unsafe_base(base: Path) -> str | None:
    """Why `base` may not hold a spool (None: it may): a data directory, a directory holding one, or a pg_wal (by
    name or by its archive_status folder, also when pg_wal is a symbolic link elsewhere)."""
    try:
        where = base.resolve()
        if (where / "PG_VERSION").exists():
            return "it is a PostgreSQL data directory (it has PG_VERSION)"
        if where.name in ("pg_wal", "pg_xlog") or (where / "archive_status").is_dir():
            return "it is a pg_wal directory"
        if where.is_dir():
            holders = [p.name for p in where.iterdir() if p.is_dir() and (p / "PG_VERSION").exists()]
            if holders:
                return f"it contains a PostgreSQL data directory ({holders[0]})"
    except OSError as exc:
        return f"it cannot be looked into ({exc.strerror})"
    return None


def _write_atomically(path: Path, data: bytes) -> None:
    """`path` appears whole or not at all: a temporary file, fsync, rename."""
    _write_via(path.with_name(f".{path.name}{TEMPORARY}"), path, data)


def deliver(path: Path, data: bytes) -> None:
    """Write what PostgreSQL asked for to its `%p`: whole or not at all (a temporary file next to it, fsync,
    rename)."""
    _write_via(path.with_name(path.name + DELIVERY_TEMPORARY), path, data)


def _write_via(tmp: Path, path: Path, data: bytes) -> None:
    """`data` into `tmp`, fsynced, then renamed over `path`; `tmp` removed when anything fails."""
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise


def following_names(name: str, segment_size: int, count: int) -> list[str]:
    """The `count` segment names after `name` on its timeline (empty: `segment_size` is not one of `name`'s)."""
    if not MiB <= segment_size <= 1024 * MiB or segment_size & (segment_size - 1):
        return []  # PostgreSQL's segment sizes are powers of two from 1 MiB to 1 GiB
    try:
        segment = Segment.parse(name, segment_size)
    except LifeboatError:
        return []
    names = []
    for _ in range(count):
        segment = segment.following()
        names.append(segment.name)
    return names


@dataclass(frozen=True)
class Taken:
    """What `take` found: the verified bytes (None: nothing usable) and why nothing was usable, if something was
    there."""

    data: bytes | None
    refused: str | None = None


class Spool:
    """One recovering data directory's prefetched segments of one target (the module's docstring)."""

    def __init__(self, base: Path, target: str) -> None:
        """The spool of `target` under `base` (`base/lifeboat-prefetch-<target>`); BadRequestError when `base` is
        no place for it (unsafe_base) or the spool's own path is a symbolic link."""
        if "/" in target or target in ("", ".", ".."):
            raise BadRequestError(f"--target {target!r} is not a target name")
        why = unsafe_base(base)
        if why is not None:
            raise BadRequestError(
                f"--prefetch-dir {base}: {why}; give an empty directory of its own (the spool is created in it as"
                f" {DIRECTORY_NAME}-{target}/) or leave --prefetch-dir out"
            )
        self.base, self.target = base, target
        self.directory = base / f"{DIRECTORY_NAME}-{target}"
        if self.directory.is_symlink():
            raise BadRequestError(f"the prefetch spool {self.directory} is a symbolic link: remove it")

    def _file(self, name: str) -> Path:
        return self.directory / name

    def _sidecar(self, name: str) -> Path:
        return self.directory / f"{name}{SIDECAR}"

    def put(self, name: str, data: bytes, key: str) -> None:
        """Keep verified bytes for a later request of `name`: the file, then its sidecar (the marker) last."""
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._sidecar(name).unlink(missing_ok=True)  # an older copy is not complete while the new one is written
        _write_atomically(self._file(name), data)
        record = {
            "name": name,
            "target": self.target,
            "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
            "key": key,
        }
        _write_atomically(self._sidecar(name), json.dumps(record).encode())

    def ready(self) -> set[str]:
        """The names whose file and sidecar are both there (not checked yet: `take` does)."""
        if not self.directory.is_dir():
            return set()
        found = {p.name.removesuffix(SIDECAR) for p in self.directory.iterdir() if p.name.endswith(SIDECAR)}
        return {name for name in found if is_segment_name(name) and self._file(name).is_file()}

    def peek(self, name: str) -> Taken:
        """What `take` would serve, verified the same way (sidecar, name, target, size, SHA-256), but nothing is
        removed and nothing logged: the fast path serves it (then `discard`s it) or leaves it all to `take`."""
        sidecar, file = self._sidecar(name), self._file(name)
        if not sidecar.is_file():
            return Taken(None)
        try:
            record = json.loads(sidecar.read_bytes())
            why = self._refusal(name, record, file)
            data = file.read_bytes() if why is None else None
            if data is not None and hashlib.sha256(data).hexdigest() != record.get("sha256"):
                why, data = "its SHA-256 does not match its sidecar's", None
        except (OSError, ValueError) as exc:  # ValueError: a sidecar that is not JSON
            why, data = f"unreadable: {exc}", None
        return Taken(data, why)

    def take(self, name: str) -> Taken:
        """The verified bytes of `name`, removed from the spool; Taken(None) when it is not there, Taken(None,
        why) when it is there but not usable (removed too)."""
        taken = self.peek(name)
        if taken.data is None and taken.refused is None:
            return taken
        self.discard(name)
        if taken.refused is not None:
            logger.warning(
                "prefetched WAL refused: read from S3 instead", extra={"wal_file": name, "why": taken.refused}
            )
        return taken

    def _refusal(self, name: str, record: Any, file: Path) -> str | None:
        """Why the spool's `name` may not be served before its bytes are read (None: it may, if they hash right)."""
        if not isinstance(record, dict):
            return "its sidecar is not a JSON object"
        if record.get("name") != name or record.get("target") != self.target:
            return f"its sidecar is for {record.get('target')!r}'s {record.get('name')!r}"
        if not file.is_file() or file.stat().st_size != record.get("size"):
            return f"its size is not the {record.get('size')} bytes its sidecar records"
        return None

    def discard(self, name: str) -> None:
        """Remove `name` (served once). The marker first: never a sidecar without its file. A file that cannot be
        removed stays (a later `keep_only` tries again): what PostgreSQL gets does not depend on the spool's
        housekeeping."""
        try:
            self._sidecar(name).unlink(missing_ok=True)
            self._file(name).unlink(missing_ok=True)
        except OSError as exc:
            logger.warning("a prefetched WAL file could not be removed", extra={"wal_file": name, "why": str(exc)})

    def ready_after(self, name: str, segment_size: int, count: int) -> int:
        """How many of the `count` segments after `name` are spooled (complete; not checked yet)."""
        return len(self.ready() & set(following_names(name, segment_size, count)))

    def keep_only(self, names: set[str]) -> None:
        """Remove every file of the spool's own (`owned`) but the complete ones of `names` and their sidecars: older
        segments, other timelines, leftovers of an interrupted prefetch. Any other file is not the spool's: kept."""
        if not self.directory.is_dir() or self.directory.is_symlink():
            return
        keep = names & self.ready()
        for path in self.directory.iterdir():
            if owned(path.name) and path.is_file() and path.name.removesuffix(SIDECAR) not in keep:
                path.unlink(missing_ok=True)
