"""`lifeboat wal-stream TARGET`: pg_receivewal into a local spool, every file into S3, a slot holding the rest.

The loop, like Barman's receive-wal (pg_receivewal into a spool, the archiver moving finished files) but with the
bucket as the archive and nothing kept on the host that matters:
- pg_receivewal runs *without* --slot: with one it would confirm each segment to the server as soon as it is on the
  local disk, and a task that died before the upload (Fargate's disk is lost with it) would leave the server free
  to recycle WAL that never reached S3. The slot is kept by the receiver's own SQL session (slot.SlotKeeper),
  which advances it to the end of each finished segment only after that segment's PUT (and lock) succeeded: the
  server keeps everything the archive lacks, whatever happens to the task. The session also holds the slot's
  advisory lock for the receiver's lifetime: a second receiver for the target refuses to start.
- Before pg_receivewal starts, the spool is seeded with the newest segment the archive holds (finished, or the
  `.partial` as last uploaded): pg_receivewal resumes from the files it finds, so a task restarted with an empty
  disk streams from where the *archive* ends, not from where the server is now. With an empty archive, an empty
  `.partial` of the segment holding the slot's restart_lsn makes it start there (pg_receivewal has no start option;
  on a standby it starts at the server's position).
- A finished segment is uploaded (locked) as soon as it appears, the open `.partial` every flush_seconds when it
  changed, history files (timeline switches) as they appear. A failed upload is retried (the files stay in the
  spool; the slot does not move). The spool keeps the newest uploaded finished segment and everything not uploaded.
- Every flush_seconds the slot's retained WAL is recorded (WalSlotRetainedBytes: it grows while uploads fail). An
  invalidated slot (max_slot_wal_keep_size) is dropped and created again (WalSlotInvalidated); WAL the server
  removed and the archive lacks is found when the stream resumes, as below.
- Every segment is checked against the newest one archived (walnames.continuity): one that skips WAL, or a stream
  that went backwards, is recorded as a gap (walarchive.record_gap) and logged as an error: recovery cannot cross
  it, and a new base backup is needed. When the server says the WAL to resume from is gone ("has already been
  removed"), the spool is emptied and pg_receivewal starts again from the slot, which records the gap.
- Base backups are taken by the receiver too (chalicelib.pitr.basesched, which says why): `on_gap` asks for one after
  a gap, `on_flush` (every flush interval) takes the one `wal.base_schedule` says is due; in a thread of their own.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from chalicelib.adapters.pgtools import ChildProcess, PgTool, minimal_env
from chalicelib.adapters.postgres import Login
from chalicelib.errors import DatabaseConnectionError, LifeboatError, StorageError
from chalicelib.observability import logger, record
from chalicelib.pitr.slot import SlotKeeper, SlotState, SlotTaken, create_slot
from chalicelib.pitr.walarchive import SegmentConflict, WalArchive
from chalicelib.pitr.walnames import PARTIAL, Gap, Segment, continuity, history_timeline, is_segment_name, parse_lsn

REMOVED_WAL = "has already been removed"
RESTART_BACKOFF_SECONDS = 5.0
SLOT_BUSY_WAIT_SECONDS = 60.0
LOCK_WAIT_SECONDS = 90.0  # a vanished task's session ends when the server's keepalives notice (about a minute)
UPLOAD_RETRY_SECONDS = 10.0
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


@dataclass
class ReceiverSetup:
    target: str
    archive: WalArchive
    pg_receivewal: PgTool
    login: Login  # the replication login, on the target's database (the slot's SQL session uses it too)
    slot: str
    spool: Path
    segment_size: int
    server_major: int
    flush_seconds: float = 60
    poll_seconds: float = 0.5
    clock: Callable[[], float] = time.monotonic
    on_gap: Callable[[str], None] | None = None  # called with the gap record's key (basesched.BaseScheduler)
    on_flush: Callable[[], object] | None = None  # every flush interval while streaming (BaseScheduler.poll)


@dataclass
class WalReceiver:
    setup: ReceiverSetup
    newest: Segment | None = None  # the newest segment archived (finished or partial)
    done: set[str] = field(default_factory=set)  # finished segments and history files already in the archive
    partial_sha: dict[str, str] = field(default_factory=dict)  # last uploaded content of each .partial
    last_flush: float = 0.0
    gaps: list[str] = field(default_factory=list)  # keys of the gaps recorded by this run
    keeper: SlotKeeper | None = None
    retry_at: float = 0.0  # after a failed upload, the next attempt

    def prepare(self) -> None:
        """Take the slot's lock, check (or create) the slot, then seed the spool from the archive's newest segment
        (or, with an empty archive, from the slot)."""
        s = self.setup
        s.spool.mkdir(parents=True, exist_ok=True)
        self.keeper = SlotKeeper(s.login, s.slot, s.server_major, s.target)
        self.keeper.acquire(LOCK_WAIT_SECONDS, s.clock)
        newest = s.archive.newest(s.segment_size)
        self._ensure_slot(had_archive=newest is not None)
        if newest is None or newest.segment is None:
            logger.info("archive empty: streaming from the slot", extra={"target": s.target})
            self._seed_from_slot()
            return
        name = s.archive.download_to(newest, s.spool)
        self.newest = newest.segment
        # No advance from what the archive says: it may be ahead of this server (a replaced server, a planted name);
        # the slot moves only after this receiver's own uploads (a crash between an upload and its advance only
        # keeps a little more WAL on the server until the next one).
        if newest.kind == "segment":
            self.done.add(name)
        else:
            self.partial_sha[name] = hashlib.sha256((s.spool / name).read_bytes()).hexdigest()
        logger.info("resuming from the archive", extra={"target": s.target, "from": name})

    def _ensure_slot(self, had_archive: bool) -> None:
        s = self.setup
        assert self.keeper is not None
        deadline = s.clock() + SLOT_BUSY_WAIT_SECONDS
        state = self.keeper.state()
        while state is not None and state.streaming and s.clock() < deadline:  # a killed older receiver's walsender
            time.sleep(1)
            state = self.keeper.state()
        if state is None:
            if had_archive:
                logger.error(
                    "the replication slot is gone although the archive holds WAL: if the server removed WAL since,"
                    " a gap is recorded",
                    extra={"target": s.target, "slot": s.slot},
                )
            create_slot(s.login, s.slot, s.target)
        elif state.streaming:
            raise DatabaseConnectionError(
                f"replication slot {s.slot} is in use by process {state.active_pid} on {s.login.host}: a standby or"
                " an older wal-stream streams from it; stop it (wal-stream advances the slot itself)"
            )
        elif state.invalidated:
            self._slot_invalidated(state)

    def _slot_invalidated(self, state: SlotState) -> None:
        """The server removed WAL the slot held: drop and create it, so WAL is held again from now on. Whether the
        archive lacks any of it shows when the stream resumes (REMOVED_WAL, then a gap): WAL already in the spool
        is not lost, so no gap is recorded here."""
        logger.error(
            "the replication slot was invalidated (max_slot_wal_keep_size): the server no longer holds WAL for it;"
            " creating it again (if the archive lacks WAL the server removed, a gap is recorded when it is found)",
            extra={"target": self.setup.target, "slot": state.name, "wal_status": state.wal_status},
        )
        record("WalSlotInvalidated", 1, "Count", self.setup.target)
        assert self.keeper is not None
        self.keeper.recreate()

    def _seed_from_slot(self) -> None:
        """An empty spool: an empty `.partial` of the slot's restart_lsn segment makes pg_receivewal start there
        (it starts at the segment of its newest file; without one, at the server's current position)."""
        assert self.keeper is not None
        state, timeline = self.keeper.state(), self.keeper.timeline()
        if state is None or state.restart_lsn is None or timeline is None:
            return
        segment = Segment(timeline, parse_lsn(state.restart_lsn) // self.setup.segment_size, self.setup.segment_size)
        name = segment.name + PARTIAL
        (self.setup.spool / name).touch()
        self.partial_sha[name] = EMPTY_SHA256  # nothing to upload until pg_receivewal writes into it
        logger.info("starting at the slot's restart_lsn", extra={"target": self.setup.target, "from": name})

    def _advance(self, upto: Segment) -> None:
        """Let the server recycle the WAL before `upto` (the archive holds it). A failure is logged: the next
        segment's advance covers this one, and the next flush checks the slot."""
        assert self.keeper is not None
        try:
            self.keeper.advance(upto.start_lsn)
        except SlotTaken:
            raise
        except DatabaseConnectionError as exc:
            logger.warning(
                "cannot advance the replication slot now", extra={"target": self.setup.target, "error": str(exc)}
            )

    def tick(self, force_flush: bool = False) -> None:
        """Upload what the spool holds that the archive lacks (see the module's docstring)."""
        s = self.setup
        uploaded = self._upload_finished()
        if not force_flush and s.clock() - self.last_flush < s.flush_seconds:
            return
        self.last_flush = s.clock()
        self._watch_slot()
        if s.on_flush is not None and not force_flush:  # not on the last ticks of a stop
            s.on_flush()
        if not uploaded:
            return
        if not force_flush:  # pg_receivewal ran and uploads went through for a whole flush interval: the stack's
            record("WalStreamHeartbeat", 1, "Count", s.target)  # "not streaming" alarm
        names = sorted(p.name for p in s.spool.iterdir())
        try:
            for name in (n for n in names if n.endswith(PARTIAL) and is_segment_name(n.removesuffix(PARTIAL))):
                self._flush_partial(name)
        except StorageError as exc:
            self._upload_failed(exc)

    def _upload_finished(self) -> bool:
        """History files and finished segments, oldest first, each segment's upload followed by the slot's advance;
        False when an upload failed (the rest waits for the next attempt, after UPLOAD_RETRY_SECONDS)."""
        s = self.setup
        if s.clock() < self.retry_at:
            return False
        names = sorted(p.name for p in s.spool.iterdir())
        finished = [n for n in names if is_segment_name(n)]
        try:
            for name in names:
                timeline = history_timeline(name)
                if timeline is not None and name not in self.done:
                    try:
                        s.archive.put_history(timeline, (s.spool / name).read_bytes())
                    except SegmentConflict as exc:  # the first is kept; recovery follows that one
                        logger.error("a different history file is archived", extra={"error": str(exc)})
                    self.done.add(name)
            for name in finished:
                if name not in self.done:
                    segment = Segment.parse(name, s.segment_size)
                    self._check(segment)
                    self._put_segment(segment)
                    self.done.add(name)
                    self.partial_sha.pop(name + PARTIAL, None)
                    record("WalSegmentsArchived", 1, "Count", s.target)
                    self._advance(segment.following())
        except StorageError as exc:
            self._upload_failed(exc)
            return False
        finally:  # pg_receivewal resumes after the newest finished one: keep that and whatever is not uploaded
            for name in finished[:-1]:
                if name in self.done:
                    (s.spool / name).unlink(missing_ok=True)
        return True

    def _upload_failed(self, exc: StorageError) -> None:
        """S3 refused or is unreachable: the files stay in the spool and the slot where the archive ends, so the
        server keeps the WAL (WalSlotRetainedBytes grows) until an upload succeeds."""
        self.retry_at = self.setup.clock() + min(self.setup.flush_seconds, UPLOAD_RETRY_SECONDS)
        record("WalUploadFailures", 1, "Count", self.setup.target)
        logger.error(
            "uploading WAL failed; retrying (the slot keeps the WAL on the server meanwhile)",
            extra={"target": self.setup.target, "error": str(exc)},
        )

    def _watch_slot(self) -> None:
        """Record the WAL the slot makes the server keep; create the slot again when it was invalidated."""
        assert self.keeper is not None
        try:
            state = self.keeper.state()
            if state is None or state.invalidated:
                if state is None:
                    logger.error(
                        "the replication slot was dropped: creating it again", extra={"target": self.setup.target}
                    )
                    create_slot(self.setup.login, self.setup.slot, self.setup.target)
                else:
                    self._slot_invalidated(state)
                return
        except SlotTaken:
            raise
        except DatabaseConnectionError as exc:
            logger.warning(
                "cannot read the replication slot now", extra={"target": self.setup.target, "error": str(exc)}
            )
            return
        if state.retained_bytes is not None:
            record("WalSlotRetainedBytes", state.retained_bytes, "Bytes", self.setup.target)
        if state.wal_status in ("extended", "unreserved"):
            logger.warning(
                "the replication slot holds more WAL than max_wal_size: uploads are failing or slow; at"
                " max_slot_wal_keep_size the server invalidates it",
                extra={"target": self.setup.target, "wal_status": state.wal_status, "bytes": state.retained_bytes},
            )

    def _flush_partial(self, name: str) -> None:
        s = self.setup
        try:
            data = (s.spool / name).read_bytes()
        except FileNotFoundError:  # renamed to the finished segment meanwhile: the next tick uploads that
            return
        digest = hashlib.sha256(data).hexdigest()
        if self.partial_sha.get(name) == digest:
            return
        segment = Segment.parse(name.removesuffix(PARTIAL), s.segment_size)
        if name.removesuffix(PARTIAL) in self.done:
            return
        self._check(segment)
        s.archive.put_partial(segment, data)
        self.partial_sha[name] = digest

    def _check(self, segment: Segment) -> None:
        gap = continuity(self.newest, segment)
        if gap is not None:
            self._record_gap(gap)
        if self.newest is None or segment.position > self.newest.position:
            self.newest = segment

    def _record_gap(self, gap: Gap) -> None:
        key = self.setup.archive.record_gap(gap)
        self.gaps.append(key)
        record("WalGaps", 1, "Count", self.setup.target)
        if self.setup.on_gap is not None:
            self.setup.on_gap(key)

    def _put_segment(self, segment: Segment) -> None:
        """Upload a finished segment. One archived before under its name with other bytes is kept (recovery
        follows it) and this WAL is a gap; the stream's own bytes are kept too, under conflicts/, before the caller
        advances the slot (a StorageError there: the file stays in the spool, the slot where it is)."""
        data = (self.setup.spool / segment.name).read_bytes()
        try:
            self.setup.archive.put_segment(segment, data)
        except SegmentConflict as exc:
            kept = self.setup.archive.put_conflict(segment, data)
            logger.error("a different segment is archived under this name", extra={"kept": kept, "error": str(exc)})
            before = Segment(segment.timeline, max(segment.number - 1, 0), segment.segment_size)
            self._record_gap(Gap(before.name, segment.following().name, str(exc)))

    def run(self, stop: threading.Event) -> None:
        """Stream until `stop` is set: pg_receivewal restarted after each exit (after RESTART_BACKOFF_SECONDS);
        on stop, the open segment is uploaded one last time."""
        try:
            self._stream(stop)
        finally:
            if self.keeper is not None:
                self.keeper.close()

    def _stream(self, stop: threading.Event) -> None:
        s = self.setup
        args = ["-D", str(s.spool), "--no-loop", "--no-password", "--status-interval=10"]  # no --slot: see above
        while not stop.is_set():
            child = ChildProcess(
                s.pg_receivewal,
                args,
                minimal_env(s.login.env()),
                s.login.secrets,
                s.login.context,
                capture_stdout=False,
            )
            with child:
                while child.poll() is None and not stop.is_set():
                    self.tick()
                    stop.wait(s.poll_seconds)
                self.tick(force_flush=True)
                if stop.is_set():
                    child.stop("wal-stream is stopping")
                    child.wait()
                    self.tick(force_flush=True)
                    return
                self._after_exit(child)
            stop.wait(RESTART_BACKOFF_SECONDS)

    def _after_exit(self, child: ChildProcess) -> None:
        tail = "\n".join(child.stderr_tail())
        if REMOVED_WAL in tail:
            logger.error(
                "the server no longer has the WAL to resume from: restarting from the slot (a gap is recorded)",
                extra={"target": self.setup.target, "detail": tail[-500:]},
            )
            self.retry_at = 0.0
            # What the spool holds and the archive lacks goes up before the spool is emptied: it may be the only copy
            # left (uploads failed until the slot was invalidated). If it cannot, the spool stays and the next exit
            # tries again (pg_receivewal exits at once on the same error).
            self.tick(force_flush=True)
            if self.retry_at > 0.0:
                logger.error("spool kept: its WAL is not archived yet", extra={"target": self.setup.target})
                return
            for path in self.setup.spool.iterdir():
                path.unlink()
            self.done.clear()
            self.partial_sha.clear()
            try:
                self._ensure_slot(had_archive=True)
                self._seed_from_slot()
            except SlotTaken:
                raise
            except DatabaseConnectionError as exc:  # the server's position then: a larger gap, never a silent one
                logger.error("cannot read the replication slot", extra={"target": self.setup.target, "error": str(exc)})
            return
        try:
            child.check()
        except LifeboatError as exc:
            logger.error("pg_receivewal stopped; restarting", extra={"target": self.setup.target, "error": str(exc)})
