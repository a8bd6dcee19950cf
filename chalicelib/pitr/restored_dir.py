"""A data directory restored from an app-consistent snapshot set: whether it is fit to recover from the set's label
(`read_facts`, then the pure `data_dir_problems`), and preparing it (`prepare`). See chalicelib.pitr.snapshotbase.

What an operator can get wrong, each refused with what to do instead: DIR is not the data directory (the volume
mounted one level up, or not at all); the volumes come from another set or another server (pg_control's timeline
or latest checkpoint outside the label's range); the server was started on them after the restore (pg_control
says shut down, or pg_control/postmaster.pid were written after the backup ended, or backup_label.old is this
label), in which case its data no longer matches the archived WAL; recover ran already (recovery.signal,
backup_label); a tablespace's volume is not mounted where tablespace_map says, or that path (resolved) lies in
another data directory or holds a running server's directory or tablespace (a restore on the source's own host:
PostgreSQL would replay into the live server's files); a file recover writes is a symlink.

Nothing is followed out of DIR: a snapshot's pg_wal (or pg_replslot) that is a symlink points at the source host's
directory, which on this host may be a live server's; prepare removes the link and creates an empty directory in
DIR instead of emptying the directory it names, and writes files with O_NOFOLLOW.
"""

from __future__ import annotations

import os
import shutil
import struct
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from chalicelib.errors import ConflictError
from chalicelib.pitr.snapshotbase import (
    CLOCK_SKEW,
    IN_ARCHIVE_RECOVERY,
    IN_PRODUCTION,
    MARKERS,
    SHUT_DOWN,
    SHUT_DOWN_IN_RECOVERY,
    SnapshotLabel,
)
from chalicelib.pitr.walnames import format_lsn, parse_lsn

STANDBY = "standby.signal"
# the files recover writes into DIR (prepare, then chalicelib.pitr.recover.write_recovery)
WRITTEN = ("backup_label", "tablespace_map", "recovery.signal", "postgresql.auto.conf")
_STATES = {
    0: "starting up",
    SHUT_DOWN: "shut down",
    SHUT_DOWN_IN_RECOVERY: "shut down in recovery",
    3: "shutting down",
    4: "in crash recovery",
    IN_ARCHIVE_RECOVERY: "in archive recovery",
    IN_PRODUCTION: "in production",
}


@dataclass(frozen=True)
class ControlFacts:
    """The head of global/pg_control (ControlFileData: system identifier, versions, state, time, latest checkpoint,
    then the checkpoint's copy with its timeline), laid out alike from PostgreSQL 9.3 to 18."""

    state: int
    written_at: datetime
    checkpoint_lsn: int
    timeline: int

    @property
    def state_name(self) -> str:
        return _STATES.get(self.state, f"state {self.state}")


def parse_control(data: bytes) -> ControlFacts | None:
    """pg_control's head (little-endian, as on x86_64 and arm64); None when too short to be one. Pure."""
    if len(data) < 52:
        return None
    (state,) = struct.unpack_from("<i", data, 16)
    written, checkpoint, _redo, timeline = struct.unpack_from("<qQQI", data, 24)
    return ControlFacts(state, datetime.fromtimestamp(written, UTC), checkpoint, timeline)


@dataclass(frozen=True)
class DirFacts:
    """What `data_dir_problems` judges, read from DIR by `read_facts`."""

    path: str
    is_dir: bool
    pg_version: str | None = None
    control: ControlFacts | None = None
    markers: tuple[str, ...] = ()
    backup_label_old: str | None = None
    postmaster_started: datetime | None = None
    running_pid: int | None = None
    linked_files: tuple[str, ...] = ()
    missing_tablespaces: tuple[str, ...] = ()
    unsafe_tablespaces: tuple[str, ...] = ()


def tablespace_paths(spcmapfile: str) -> list[tuple[str, str]]:
    """(oid, path) of each tablespace_map line (`<oid> <path>`; the path may hold spaces). Pure."""
    lines = (line.split(" ", 1) for line in spcmapfile.splitlines() if line.strip())
    return [(parts[0], parts[1]) for parts in lines if len(parts) == 2]


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return None


def _postmaster_started(lines: list[str]) -> datetime | None:
    """postmaster.pid's third line: when that postmaster started (seconds since the epoch)."""
    try:
        return datetime.fromtimestamp(int(lines[2]), UTC) if len(lines) > 2 else None
    except ValueError:
        return None


def _running_pid(lines: list[str], pgdata: Path) -> int | None:
    """postmaster.pid's PID when that process runs here with DIR as its working directory (a postmaster changes
    into its data directory); None otherwise, or where /proc cannot tell (not Linux, not permitted). The PID a
    snapshot carries is another host's: a live process here with that number is no proof, its directory is."""
    try:
        pid = int(lines[0]) if lines else 0
        return pid if pid > 0 and Path(f"/proc/{pid}/cwd").resolve(strict=True) == pgdata.resolve() else None
    except (ValueError, OSError):
        return None


def running_servers() -> list[Path]:
    """The data directories of the PostgreSQL servers running on this host, and their tablespaces' directories
    (pg_tblspc's links), resolved: a postmaster's working directory is its data directory. Only what /proc lets
    this user see (root sees all)."""
    found: list[Path] = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cwd = (proc / "cwd").resolve(strict=True)
            if (cwd / "postmaster.pid").is_file() and (cwd / "PG_VERSION").is_file() and cwd not in found:
                found.append(cwd)
                found += [link.resolve() for link in (cwd / "pg_tblspc").iterdir() if link.is_symlink()]
        except OSError:
            continue
    return found


def _data_dir_above(path: Path, pgdata: Path) -> Path | None:
    """The nearest directory at or above `path` (resolved) that is a data directory other than DIR."""
    for folder in (path, *path.parents):
        if folder != pgdata and ((folder / "PG_VERSION").exists() or (folder / "postmaster.pid").exists()):
            return folder
    return None


def unsafe_tablespace(path: Path, pgdata: Path, running: list[Path]) -> str:
    """Why recovering into tablespace directory `path` could write into another server's files ("" when it
    cannot): it lies inside another data directory, or equals or holds a running server's directory or one of its
    tablespaces. `path` and `pgdata` resolved."""
    other = _data_dir_above(path, pgdata)
    if other is not None:
        return f"{path} lies in the data directory {other}"
    for live in running:
        if live == path or live.is_relative_to(path) or path.is_relative_to(live):
            return f"{path} is or holds or lies in {live}, a running server's directory"
    return ""


def _tablespace_problems(pgdata: Path, label: SnapshotLabel) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(missing, unsafe) tablespace_map paths, each resolved (a symlinked path is judged where it leads)."""
    paths = [Path(p).resolve() for _, p in tablespace_paths(label.spcmapfile)]
    missing = tuple(str(p) for p in paths if not p.is_dir())
    running = running_servers() if paths else []
    unsafe = tuple(why for p in paths if (why := unsafe_tablespace(p, pgdata.resolve(), running)))
    return missing, unsafe


def read_facts(pgdata: Path, label: SnapshotLabel) -> DirFacts:
    if not pgdata.is_dir():
        return DirFacts(str(pgdata), False)
    missing, unsafe = _tablespace_problems(pgdata, label)
    control_file = pgdata / "global" / "pg_control"
    control = parse_control(control_file.read_bytes()) if control_file.is_file() else None
    pid_lines = (_read_text(pgdata / "postmaster.pid") or "").splitlines()
    return DirFacts(
        path=str(pgdata),
        is_dir=True,
        pg_version=(_read_text(pgdata / "PG_VERSION") or "").strip() or None,
        control=control,
        # a standby's snapshot carries its standby.signal: prepare removes it (the restored server promotes)
        markers=tuple(m for m in MARKERS if os.path.lexists(pgdata / m) and not (label.from_standby and m == STANDBY)),
        backup_label_old=_read_text(pgdata / "backup_label.old"),
        postmaster_started=_postmaster_started(pid_lines),
        running_pid=_running_pid(pid_lines, pgdata),
        linked_files=tuple(name for name in WRITTEN if (pgdata / name).is_symlink()),
        missing_tablespaces=missing,
        unsafe_tablespaces=unsafe,
    )


def data_dir_problems(facts: DirFacts, label: SnapshotLabel) -> tuple[list[str], list[str]]:
    """Why DIR cannot be recovered with the set's label: (what the operator can fix in place, what means the
    volumes are not or no longer the set's). Both empty: it can. Pure."""
    # long because it is the list of an operator's possible mistakes, one refusal each, in the order to fix them.
    if not facts.is_dir:
        return [f"{facts.path} is not a directory: mount the volumes created from set {label.set_id} there"], []
    if facts.pg_version is None or facts.control is None:
        return [
            f"{facts.path} is not a PostgreSQL data directory (no PG_VERSION or global/pg_control): give the"
            " directory that holds them as --pgdata (a volume often holds it one level down, e.g. .../16/main)"
        ], []
    if facts.pg_version.split(".")[0] != str(label.major):
        return [], [f"it holds PostgreSQL {facts.pg_version}, the set is PostgreSQL {label.major}"]
    if facts.running_pid is not None:
        return [], [f"a server runs on it (pid {facts.running_pid}): stop it"]
    fixable, spoiled = [], []
    if facts.markers:
        spoiled.append(
            f"it has {', '.join(facts.markers)} already: recover ran here before (then start the server as it is),"
            " or the directory was prepared by hand"
        )
    ctl, stop = facts.control, label.stopped_at + CLOCK_SKEW
    if ctl.state in (SHUT_DOWN, SHUT_DOWN_IN_RECOVERY):
        spoiled.append(
            f"pg_control says {ctl.state_name}: a server was started on it after the restore (a snapshot of a running"
            " server is never shut down), and its data no longer matches the archived WAL"
        )
    elif ctl.state != (IN_ARCHIVE_RECOVERY if label.from_standby else IN_PRODUCTION):
        spoiled.append(f"pg_control says {ctl.state_name}: a server was started on it after the restore")
    if ctl.timeline != label.timeline:
        spoiled.append(
            f"pg_control is on timeline {ctl.timeline}, the set's backup on {label.timeline}: the volumes are not"
            " the set's, or were recovered and promoted since"
        )
    if not parse_lsn(label.checkpoint_lsn) <= ctl.checkpoint_lsn <= parse_lsn(label.stop_lsn):
        spoiled.append(
            f"pg_control's latest checkpoint {format_lsn(ctl.checkpoint_lsn)} is outside the set's backup"
            f" ({label.checkpoint_lsn} .. {label.stop_lsn}): the volumes are from another snapshot or server, or a"
            " server ran on them after the restore"
        )
    if ctl.written_at > stop:
        spoiled.append(
            f"pg_control was written at {ctl.written_at.isoformat()}, after the set's backup ended"
            f" ({label.stopped_at.isoformat()}): a server ran on it after the restore"
        )
    if facts.postmaster_started is not None and facts.postmaster_started > stop:
        spoiled.append(
            f"postmaster.pid says a server started on it at {facts.postmaster_started.isoformat()}, after the set's"
            " backup ended (stop it if it runs)"
        )
    if facts.backup_label_old is not None and facts.backup_label_old == label.labelfile:
        spoiled.append("backup_label.old is this set's label: a server was started with it already")
    for name in facts.linked_files:
        fixable.append(f"{name} is a symlink: recover writes it and never through a link; remove the link")
    for path in facts.missing_tablespaces:
        fixable.append(f"tablespace directory {path} (tablespace_map) is missing: mount its volume from the set there")
    for why in facts.unsafe_tablespaces:
        fixable.append(
            f"tablespace directory {why} (tablespace_map): recovery would write into another server's files; recover"
            " on another host, or mount the set's tablespace volume at its own path"
        )
    return fixable, spoiled


def refusal(facts: DirFacts, label: SnapshotLabel) -> str:
    """The one message refusing DIR ("" when it is fit), saying what to do. Pure."""
    fixable, spoiled = data_dir_problems(facts, label)
    if not fixable and not spoiled:
        return ""
    text = f"{facts.path} cannot be recovered from set {label.set_id}: " + "; ".join([*fixable, *spoiled])
    if spoiled:
        text += f". Create new volumes from set {label.set_id}, mount them at {facts.path}, and run recover again"
    return text


def _empty(folder: Path) -> list[str]:
    """Remove every file and symlink under `folder`, never following a link (keeping the real folders of pg_wal,
    e.g. archive_status); the names removed."""
    removed = []
    for top, folders, files in os.walk(folder, followlinks=False):
        for name in [*files, *(f for f in folders if os.path.islink(os.path.join(top, f)))]:
            os.unlink(os.path.join(top, name))
            removed.append(os.path.relpath(os.path.join(top, name), folder))
    return removed


def _own_directory(pgdata: Path, name: str) -> str:
    """pg_wal or pg_replslot as a real directory of DIR. A symlink (the source host's layout) is removed, never
    followed: where it points may be a live server's directory on this host. What was done ("" if nothing)."""
    path = pgdata / name
    if not path.is_symlink():
        path.mkdir(mode=0o700, exist_ok=True)
        return ""
    target = os.readlink(path)
    path.unlink()
    path.mkdir(mode=0o700)
    _chown_like(pgdata, path)
    return (
        f"{name} was a symlink to {target} (the source host's layout): removed the link without following it and"
        f" created an empty {name} in {pgdata}"
    )


def _chown_like(pgdata: Path, path: Path) -> None:
    """Owned like the data directory (recover may run as root for the postgres account)."""
    owner = pgdata.stat()
    if os.geteuid() == 0 and (owner.st_uid, owner.st_gid) != (0, 0):
        os.chown(path, owner.st_uid, owner.st_gid, follow_symlinks=False)


def _write(pgdata: Path, name: str, text: str) -> None:
    """A file of the data directory, mode 0600, owned like the directory; never written through a symlink."""
    path = pgdata / name
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        raise ConflictError(
            f"cannot write {path} ({exc.strerror}): a symlink there is never followed; remove it"
        ) from None
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
        os.fchmod(handle.fileno(), 0o600)
    _chown_like(pgdata, path)


def prepare(pgdata: Path, label: SnapshotLabel) -> list[str]:
    """Make a checked DIR start from the set's label (recovery.signal and the settings come after); what was done."""
    done = []
    if label.from_standby and os.path.lexists(pgdata / STANDBY):
        (pgdata / STANDBY).unlink()
        done.append("removed standby.signal (the snapshotted standby's; the restored server promotes at the target)")
    if os.path.lexists(pgdata / "postmaster.pid"):
        (pgdata / "postmaster.pid").unlink()
        done.append("removed postmaster.pid (the snapshotted server's)")
    done += [what for what in (_own_directory(pgdata, "pg_wal"), _own_directory(pgdata, "pg_replslot")) if what]
    emptied = _empty(pgdata / "pg_wal")
    (pgdata / "pg_wal" / "archive_status").mkdir(mode=0o700, exist_ok=True)  # after: a link there was removed
    done.append(f"emptied pg_wal ({len(emptied)} file(s) from the snapshot; the archive has the WAL)")
    slots = pgdata / "pg_replslot"
    dropped = sorted(p.name for p in slots.iterdir())
    for name in dropped:
        slot = slots / name
        shutil.rmtree(slot) if slot.is_dir() and not slot.is_symlink() else slot.unlink()
    if dropped:
        done.append(f"removed the source's replication slot(s) {', '.join(dropped)} (they would hold WAL forever)")
    _write(pgdata, "backup_label", label.labelfile)
    done.append("wrote backup_label")
    if label.spcmapfile:
        _write(pgdata, "tablespace_map", label.spcmapfile)
        done.append("wrote tablespace_map")
    return done
