"""A data directory restored from an app-consistent snapshot set: whether it is fit to recover from the set's label
(`read_facts`, then the pure `data_dir_problems`), and preparing it (`prepare`). See chalicelib.pitr.snapshotbase.

What an operator can get wrong, each refused with what to do instead: DIR is not the data directory (the volume
mounted one level up, or not at all); the volumes come from another set or another server (pg_control's timeline
or latest checkpoint outside the label's range); the server was started on them after the restore (pg_control
says shut down, or pg_control/postmaster.pid were written after the backup ended, or backup_label.old is this
label), in which case its data no longer matches the archived WAL; recover ran already (recovery.signal,
backup_label); a tablespace's volume is not mounted where tablespace_map says; pg_wal is a symlink to nothing.
"""

from __future__ import annotations

import os
import shutil
import struct
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

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
    pg_wal_dangling: bool = False
    missing_tablespaces: tuple[str, ...] = ()


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


def read_facts(pgdata: Path, label: SnapshotLabel) -> DirFacts:
    if not pgdata.is_dir():
        return DirFacts(str(pgdata), False)
    control_file = pgdata / "global" / "pg_control"
    control = parse_control(control_file.read_bytes()) if control_file.is_file() else None
    wal = pgdata / "pg_wal"
    pid_lines = (_read_text(pgdata / "postmaster.pid") or "").splitlines()
    return DirFacts(
        path=str(pgdata),
        is_dir=True,
        pg_version=(_read_text(pgdata / "PG_VERSION") or "").strip() or None,
        control=control,
        # a standby's snapshot carries its standby.signal: prepare removes it (the restored server promotes)
        markers=tuple(m for m in MARKERS if (pgdata / m).exists() and not (label.from_standby and m == STANDBY)),
        backup_label_old=_read_text(pgdata / "backup_label.old"),
        postmaster_started=_postmaster_started(pid_lines),
        running_pid=_running_pid(pid_lines, pgdata),
        pg_wal_dangling=wal.is_symlink() and not wal.exists(),
        missing_tablespaces=tuple(p for _, p in tablespace_paths(label.spcmapfile) if not Path(p).is_dir()),
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
    if facts.pg_wal_dangling:
        fixable.append("its pg_wal is a symlink to nothing: mount the set's WAL volume where it points")
    for path in facts.missing_tablespaces:
        fixable.append(f"tablespace directory {path} (tablespace_map) is missing: mount its volume from the set there")
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
    """Remove every file under `folder` (keeping the folders of pg_wal, e.g. archive_status); the names removed."""
    removed = []
    for path in sorted(folder.rglob("*"), reverse=True):
        if path.is_symlink() or path.is_file():
            path.unlink()
            removed.append(str(path.relative_to(folder)))
    return removed


def _write(pgdata: Path, name: str, text: str) -> None:
    """A file of the data directory, owned like the directory (recover may run as root for the postgres account)."""
    path = pgdata / name
    path.write_text(text)
    path.chmod(0o600)
    owner = pgdata.stat()
    if os.geteuid() == 0 and (owner.st_uid, owner.st_gid) != (0, 0):
        os.chown(path, owner.st_uid, owner.st_gid)


def prepare(pgdata: Path, label: SnapshotLabel) -> list[str]:
    """Make a checked DIR start from the set's label (recovery.signal and the settings come after); what was done."""
    done = []
    if label.from_standby and (pgdata / STANDBY).exists():
        (pgdata / STANDBY).unlink()
        done.append("removed standby.signal (the snapshotted standby's; the restored server promotes at the target)")
    if (pgdata / "postmaster.pid").exists():
        (pgdata / "postmaster.pid").unlink()
        done.append("removed postmaster.pid (the snapshotted server's)")
    wal = pgdata / "pg_wal"
    wal.mkdir(mode=0o700, exist_ok=True)
    done.append(f"emptied pg_wal ({len(_empty(wal))} file(s) from the snapshot; the archive has the WAL)")
    slots = pgdata / "pg_replslot"
    dropped = sorted(p.name for p in slots.iterdir()) if slots.is_dir() else []
    for name in dropped:
        shutil.rmtree(slots / name) if (slots / name).is_dir() else (slots / name).unlink()
    if dropped:
        done.append(f"removed the source's replication slot(s) {', '.join(dropped)} (they would hold WAL forever)")
    _write(pgdata, "backup_label", label.labelfile)
    done.append("wrote backup_label")
    if label.spcmapfile:
        _write(pgdata, "tablespace_map", label.spcmapfile)
        done.append("wrote tablespace_map")
    return done
