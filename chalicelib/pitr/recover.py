"""`lifeboat recover TARGET --time T | --lsn L | --latest --pgdata DIR`, on the machine that will run the server.

Picks the newest base backup that finished before the target (`choose_base`), checks the WAL it needs is archived
and no recorded gap nor unrecorded hole (WAL pruned after a restore point's end) lies between it and the target
(`wal_problems`), downloads it while checking its SHA-256 and
unpacking it (a mismatch removes what was unpacked), runs pg_verifybackup against PostgreSQL's own backup_manifest,
then writes recovery.signal and the recovery settings into postgresql.auto.conf (`recovery_settings`): PostgreSQL
fetches each segment with `lifeboat wal-fetch`, replays up to the target and promotes. Physical recovery is
same-major only: a base of another major than the server that will start it is refused before anything is written.
"""

from __future__ import annotations

import shutil
import tarfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any, cast

import zstandard

from chalicelib.adapters.pgtools import ChildProcess, Toolbox, minimal_env
from chalicelib.adapters.s3 import BackupStore
from chalicelib.errors import (
    BadRequestError,
    ConflictError,
    IntegrityError,
    NotFoundError,
    PgToolError,
    RestoreError,
)
from chalicelib.logical.digests import PartVerifier
from chalicelib.pitr.basebackup import BaseBackup, BaseObject
from chalicelib.pitr.chains import restorable
from chalicelib.pitr.walarchive import WalEntry
from chalicelib.pitr.walnames import Segment, format_lsn, parse_lsn


@dataclass(frozen=True)
class RecoveryTarget:
    time: datetime | None = None
    lsn: str | None = None

    @property
    def latest(self) -> bool:
        return self.time is None and self.lsn is None

    def describe(self) -> str:
        return f"time {self.time.isoformat()}" if self.time else f"LSN {self.lsn}" if self.lsn else "the latest WAL"


def choose_base(bases: Sequence[BaseBackup], target: RecoveryTarget) -> BaseBackup:
    """The newest base that was complete (consistent) before the target; an incremental one only with its whole
    chain (chains.restorable). Pure."""
    bases, unusable = restorable(bases)
    if target.time is not None:
        when = target.time
        fits = [b for b in bases if b.finished_at <= when]
    elif target.lsn is not None:
        lsn = parse_lsn(target.lsn)
        fits = [b for b in bases if parse_lsn(b.end_lsn) <= lsn]
    else:
        fits = list(bases)
    if not fits:
        oldest = min((b.finished_at for b in bases), default=None)
        raise NotFoundError(
            f"no base backup finished before {target.describe()}"
            + (
                f" (the oldest finished at {oldest.isoformat()})"
                if oldest
                else " (there is none: run lifeboat base-backup)"
            )
            + "".join(f"; {why}" for why in unusable.values())
        )
    return max(fits, key=lambda b: b.started_at)


def gap_affects(base: BaseBackup, gap: dict[str, Any]) -> bool:
    """Whether a recorded gap lies in the WAL recovery from `base` replays: its `after` segment is at or past the
    base's start, and it was detected after the base started (a base taken once a gap was seen starts after it,
    also when the stream went backwards: a restored server's segment numbers can be lower than the gap's). Pure."""
    after = gap.get("after")
    if after is None or Segment.parse(after, base.segment_size).number < base.start_segment.number:
        return False
    return datetime.fromisoformat(str(gap["detected_at"])) > base.started_at


def wal_problems(
    base: BaseBackup, entries: Sequence[WalEntry], gaps: Sequence[dict[str, Any]], target: RecoveryTarget
) -> list[str]:
    """Why the archive cannot take `base` to `target` (empty: it can, as far as the archive shows). Pure."""
    have = {(e.segment.number, e.segment.timeline) for e in entries if e.segment is not None}
    problems = []
    start, end = base.start_segment, base.end_segment
    missing = [
        Segment(base.timeline, n, base.segment_size).name
        for n in range(start.number, end.number + 1)
        if (n, base.timeline) not in have
    ]
    if missing:
        problems.append(
            f"base {base.backup_id} needs WAL {start.name} to {end.name} to be consistent, but {', '.join(missing[:5])}"
            " are not in the archive (was wal-stream running during the base backup?)"
        )
    for gap in gaps:
        if not gap_affects(base, gap):
            continue
        after = gap.get("after")
        detected = datetime.fromisoformat(str(gap["detected_at"]))
        if target.latest or (target.time is not None and target.time >= detected) or target.lsn is not None:
            problems.append(
                f"WAL after {after} up to {gap['before']} is missing ({gap['reason']}; recorded"
                f" {detected.isoformat()}): recovery from base {base.backup_id} cannot pass it; choose a time before"
                " it, or a base backup taken after it"
            )
    hole = hole_problem(base, entries, gaps, target)
    return [*problems, hole] if hole else problems


def _uploaded(entries: Sequence[WalEntry], number: int) -> datetime | None:
    """The newest upload time of segment `number` (any timeline, .partial included; None: the listing has none)."""
    times = [e.info.last_modified for e in entries if e.segment is not None and e.segment.number == number]
    return max((t for t in times if t is not None), default=None)


def hole_problem(
    base: BaseBackup, entries: Sequence[WalEntry], gaps: Sequence[dict[str, Any]], target: RecoveryTarget
) -> str | None:
    """Why WAL missing after the base's end with no gap record for it (pruned outside wal.pitr_days, or deleted)
    stops recovery before `target`, naming what is restorable; None when it does not. Without this PostgreSQL
    starts, replays to the hole and dies ("recovery ended before configured recovery target was reached"), or with
    --latest promotes at the hole without a word. The bounds are the window's (chalicelib.pitr.window). Pure."""
    numbers = {e.segment.number for e in entries if e.segment is not None}
    newest = max((e.segment for e in entries if e.segment is not None), key=lambda s: s.position, default=None)
    last = base.end_segment.number
    while newest is not None and last < newest.number and last + 1 in numbers:
        last += 1
    explained = any(gap_affects(base, g) and _gap_after(g, base) == last for g in gaps)  # wal_problems says it
    if newest is None or last >= newest.number or explained:
        return None
    restore_point = last == base.end_segment.number
    until = base.finished_at if restore_point else max(_uploaded(entries, last) or base.finished_at, base.finished_at)
    if target.lsn is not None:
        reached = Segment.containing(parse_lsn(target.lsn), base.timeline, base.segment_size).number <= last
    else:
        reached = target.time is not None and target.time <= until
    if reached:
        return None
    missing = Segment(base.timeline, last + 1, base.segment_size).name
    if restore_point:
        return (
            f"base {base.backup_id} is a restore point: the WAL after its end ({missing} on) is not in the archive"
            f" (pruned: wal.pitr_days keeps only its own WAL), so recovery from it cannot go past its end; recover"
            f" to its end with --lsn {base.end_lsn} (consistent at {base.finished_at.isoformat()}), or choose a"
            " time inside the recoverable window (lifeboat wal-window TARGET)"
        )
    return (
        f"WAL {missing} is not in the archive and no gap was recorded for it (pruned or deleted): recovery from base"
        f" {base.backup_id} reaches {base.finished_at.isoformat()} .. {until.isoformat()}, not {target.describe()};"
        " choose a time in that range, or one inside the recoverable window (lifeboat wal-window TARGET)"
    )


def _gap_after(gap: dict[str, Any], base: BaseBackup) -> int | None:
    after = gap.get("after")
    return Segment.parse(str(after), base.segment_size).number if after else None


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def recovery_settings(target: RecoveryTarget, restore_command: str) -> dict[str, str]:
    """The lines for postgresql.auto.conf (values quoted). Pure."""
    settings = {"restore_command": restore_command, "recovery_target_timeline": "latest"}
    if target.time is not None:
        settings["recovery_target_time"] = target.time.isoformat(sep=" ")
    elif target.lsn is not None:
        settings["recovery_target_lsn"] = format_lsn(parse_lsn(target.lsn))
    if not target.latest:
        settings["recovery_target_action"] = "promote"
        settings["recovery_target_inclusive"] = "on"
    return {k: _quote(v) for k, v in settings.items()}


def fetch_command(command: str, target: str, config: str | None, region: str | None) -> str:
    """restore_command: `<command> [--config C] [--region R] wal-fetch --target T %f %p`."""
    parts = [command]
    if config:
        parts += ["--config", _shell_quote(config)]
    if region:
        parts += ["--region", _shell_quote(region)]
    return " ".join([*parts, "wal-fetch", "--target", _shell_quote(target), "%f", '"%p"'])


def _shell_quote(text: str) -> str:
    if text and all(c.isalnum() or c in "/._-:=@" for c in text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$").replace("`", "\\`") + '"'


class _Hashing:
    """A reader that verifies what passes through it against the manifest (per part when it records parts)."""

    def __init__(self, source: IO[bytes], recorded: BaseObject) -> None:
        self.source, self.verifier = source, PartVerifier(recorded)

    def read(self, size: int = -1) -> bytes:
        data = self.source.read(size)
        self.verifier.update(data)
        return data


def unpack_base(store: BackupStore, base: BaseBackup, pgdata: Path) -> None:
    """Download, decompress and unpack the base into `pgdata` (absent or empty), checking its SHA-256 and size on
    the way; on a mismatch everything unpacked is removed and IntegrityError raised."""
    if pgdata.exists() and any(pgdata.iterdir()):
        raise ConflictError(f"{pgdata} is not empty: recover into a new (or empty) data directory")
    pgdata.mkdir(parents=True, exist_ok=True)
    pgdata.chmod(0o700)
    data = base.object("data")
    body, _ = store.open_stream(data.key, data.version_id)  # the version the (signed) manifest recorded
    hashing = _Hashing(body, data)
    try:
        with body, zstandard.ZstdDecompressor().stream_reader(cast(IO[bytes], hashing)) as tar_stream:
            with tarfile.open(fileobj=tar_stream, mode="r|") as tar:
                tar.extractall(pgdata, filter="tar")
            while hashing.read(1024 * 1024):  # the frame's end, if tar stopped reading before it
                pass
        try:
            hashing.verifier.finish()
        except IntegrityError as exc:
            raise IntegrityError(f"base {base.backup_id}: s3://{store.bucket}/{exc}: refusing it") from None
    except (zstandard.ZstdError, tarfile.TarError, IntegrityError) as exc:
        _empty(pgdata)
        if isinstance(exc, IntegrityError):
            raise
        raise IntegrityError(f"base {base.backup_id} is damaged: {exc}; nothing was left in {pgdata}") from None
    (pgdata / "pg_wal").mkdir(exist_ok=True)


def _empty(pgdata: Path) -> None:
    for path in pgdata.iterdir():
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


def verify_files(toolbox: Toolbox, base: BaseBackup, pgdata: Path) -> None:
    """pg_verifybackup -n: every file against PostgreSQL's backup_manifest (the WAL comes later, from the archive)."""
    tool = toolbox.pick("pg_verifybackup", base.major, f"checking base {base.backup_id}")
    child = ChildProcess(tool, ["-n", str(pgdata)], minimal_env({}), capture_stdout=False)
    with child:
        try:
            child.check()
        except PgToolError as exc:
            raise IntegrityError(f"pg_verifybackup rejected base {base.backup_id} in {pgdata}: {exc}") from None


def check_major(base: BaseBackup, server_major: int) -> None:
    if server_major != base.major:
        raise BadRequestError(
            f"base {base.backup_id} is PostgreSQL {base.major}, the server here is PostgreSQL {server_major}: physical"
            f" recovery works only with the same major; install PostgreSQL {base.major} to recover, then upgrade,"
            " or restore a logical backup (lifeboat restore) into the newer server"
        )


def write_recovery(pgdata: Path, settings: dict[str, str]) -> None:
    with open(pgdata / "postgresql.auto.conf", "a") as f:
        f.write("\n# lifeboat recover\n")
        for key, value in settings.items():
            f.write(f"{key} = {value}\n")
    (pgdata / "recovery.signal").write_text("")


@dataclass(frozen=True)
class RecoveryPlan:
    base: BaseBackup
    first_segment: str
    last_segment: str | None
    settings: dict[str, str]


def plan(
    bases: Sequence[BaseBackup],
    entries: Sequence[WalEntry],
    gaps: Sequence[dict[str, Any]],
    target: RecoveryTarget,
    restore_command: str,
    server_major: Callable[[int], int],
) -> RecoveryPlan:
    """Everything decided before anything is written; raises the refusal that says what to do instead."""
    return plan_for_base(choose_base(bases, target), entries, gaps, target, restore_command, server_major)


def plan_for_base(
    base: BaseBackup,
    entries: Sequence[WalEntry],
    gaps: Sequence[dict[str, Any]],
    target: RecoveryTarget,
    restore_command: str,
    server_major: Callable[[int], int],
) -> RecoveryPlan:
    """The plan once the base is known (chosen by `plan`, or an app-consistent snapshot set's label as a base:
    chalicelib.pitr.snapshotbase.as_base): same major, and the WAL it needs archived without a gap."""
    check_major(base, server_major(base.major))
    problems = wal_problems(base, entries, gaps, target)
    if problems:
        raise RestoreError("; ".join(problems))
    segments = [e.segment for e in entries if e.segment is not None]
    last = max(segments, key=lambda s: s.position).name if segments else None
    return RecoveryPlan(base, base.start_segment.name, last, recovery_settings(target, restore_command))
