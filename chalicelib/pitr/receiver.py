"""`lifeboat wal-stream TARGET`: pg_receivewal with a physical slot into a local spool, every file into S3.

The loop, like Barman's receive-wal (pg_receivewal into a spool, the archiver moving finished files) but with the
bucket as the archive and nothing kept on the host that matters:
- Before pg_receivewal starts, the spool is seeded with the newest segment the archive holds (finished, or the
  `.partial` as last uploaded): pg_receivewal resumes from the files it finds, so a task restarted with an empty
  disk (Fargate) streams from where the *archive* ends, not from where the server is now. The slot keeps that WAL
  on the server meanwhile. Without --synchronous pg_receivewal confirms a segment only once it is finished, so the
  slot holds the open segment until then.
- A finished segment is uploaded (locked) as soon as it appears, the open `.partial` every flush_seconds when it
  changed, history files (timeline switches) as they appear. The spool keeps only the newest finished segment and
  the open one.
- Every segment is checked against the newest one archived (walnames.continuity): one that skips WAL, or a stream
  that went backwards, is recorded as a gap (walarchive.record_gap) and logged as an error: recovery cannot cross
  it, and a new base backup is needed. When the server says the WAL to resume from is gone ("has already been
  removed": the slot was lost), the spool is emptied and pg_receivewal starts again from the slot, which records
  the gap.
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
from chalicelib.errors import DatabaseConnectionError, LifeboatError
from chalicelib.observability import logger, record
from chalicelib.pitr.slot import create_slot, slot_state
from chalicelib.pitr.walarchive import WalArchive
from chalicelib.pitr.walnames import PARTIAL, Segment, continuity, history_timeline, is_segment_name

REMOVED_WAL = "has already been removed"
RESTART_BACKOFF_SECONDS = 5.0
SLOT_BUSY_WAIT_SECONDS = 60.0


@dataclass
class ReceiverSetup:
    target: str
    archive: WalArchive
    pg_receivewal: PgTool
    login: Login  # the replication login
    slot: str
    spool: Path
    segment_size: int
    server_major: int
    flush_seconds: float = 60
    poll_seconds: float = 0.5
    clock: Callable[[], float] = time.monotonic
    on_gap: Callable[[str], None] | None = None  # called with the gap record's key (BaseAfterGap)


@dataclass
class WalReceiver:
    setup: ReceiverSetup
    newest: Segment | None = None  # the newest segment archived (finished or partial)
    done: set[str] = field(default_factory=set)  # finished segments and history files already in the archive
    partial_sha: dict[str, str] = field(default_factory=dict)  # last uploaded content of each .partial
    last_flush: float = 0.0
    gaps: list[str] = field(default_factory=list)  # keys of the gaps recorded by this run

    def prepare(self) -> None:
        """Check (or create) the slot, then seed the spool from the archive's newest segment."""
        s = self.setup
        s.spool.mkdir(parents=True, exist_ok=True)
        newest = s.archive.newest(s.segment_size)
        self._ensure_slot(had_archive=newest is not None)
        if newest is None or newest.segment is None:
            logger.info("archive empty: streaming from the slot", extra={"target": s.target})
            return
        name = s.archive.download_to(newest, s.spool)
        self.newest = newest.segment
        if newest.kind == "segment":
            self.done.add(name)
        else:
            self.partial_sha[name] = hashlib.sha256((s.spool / name).read_bytes()).hexdigest()
        logger.info("resuming from the archive", extra={"target": s.target, "from": name})

    def _ensure_slot(self, had_archive: bool) -> None:
        s = self.setup
        deadline = s.clock() + SLOT_BUSY_WAIT_SECONDS
        state = slot_state(s.login, s.slot, s.server_major)
        while state is not None and state.active and s.clock() < deadline:  # a killed receiver's old connection
            time.sleep(1)
            state = slot_state(s.login, s.slot, s.server_major)
        if state is None:
            if had_archive:
                logger.error(
                    "the replication slot is gone although the archive holds WAL: if the server removed WAL since,"
                    " a gap is recorded",
                    extra={"target": s.target, "slot": s.slot},
                )
            create_slot(s.login, s.slot, s.target)
        elif state.active:
            raise DatabaseConnectionError(
                f"replication slot {s.slot} is in use by process {state.active_pid} on {s.login.host}: another"
                " wal-stream for this target is running; stop it (one receiver per target)"
            )
        elif state.wal_status == "lost":
            logger.error("the replication slot lost WAL (wal_status lost)", extra={"target": s.target})

    def tick(self, force_flush: bool = False) -> None:
        """Upload what the spool holds that the archive lacks (see the module's docstring)."""
        s = self.setup
        names = sorted(p.name for p in s.spool.iterdir())
        for name in names:
            timeline = history_timeline(name)
            if timeline is not None and name not in self.done:
                s.archive.put_history(timeline, (s.spool / name).read_bytes())
                self.done.add(name)
        finished = [n for n in names if is_segment_name(n)]
        for name in finished:
            if name not in self.done:
                segment = Segment.parse(name, s.segment_size)
                self._check(segment)
                s.archive.put_segment(segment, (s.spool / name).read_bytes())
                self.done.add(name)
                self.partial_sha.pop(name + PARTIAL, None)
                record("WalSegmentsArchived", 1, "Count", s.target)
        for name in finished[:-1]:  # pg_receivewal resumes after the newest finished one: keep only that
            (s.spool / name).unlink(missing_ok=True)
        if force_flush or s.clock() - self.last_flush >= s.flush_seconds:
            self.last_flush = s.clock()
            if not force_flush:  # pg_receivewal ran a whole flush interval: the stack's "not streaming" alarm
                record("WalStreamHeartbeat", 1, "Count", s.target)
            for name in (n for n in names if n.endswith(PARTIAL) and is_segment_name(n.removesuffix(PARTIAL))):
                self._flush_partial(name)

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
            key = self.setup.archive.record_gap(gap)
            self.gaps.append(key)
            record("WalGaps", 1, "Count", self.setup.target)
            if self.setup.on_gap is not None:
                self.setup.on_gap(key)
        if self.newest is None or segment.position > self.newest.position:
            self.newest = segment

    def run(self, stop: threading.Event) -> None:
        """Stream until `stop` is set: pg_receivewal restarted after each exit (after RESTART_BACKOFF_SECONDS);
        on stop, the open segment is uploaded one last time."""
        s = self.setup
        args = ["-D", str(s.spool), f"--slot={s.slot}", "--no-loop", "--no-password", "--status-interval=10"]
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
            for path in self.setup.spool.iterdir():
                path.unlink()
            self.done.clear()
            self.partial_sha.clear()
            return
        try:
            child.check()
        except LifeboatError as exc:
            logger.error("pg_receivewal stopped; restarting", extra={"target": self.setup.target, "error": str(exc)})


@dataclass
class BaseAfterGap:
    """A base backup in a thread of the receiver, one at a time: what makes the window whole again after a gap.

    Why the receiver and not the dispatcher: it is the one process that sees the gap the moment it is recorded,
    it already holds the replication login and the tools, and a base backup is only usable while the WAL stream
    runs (recover needs its WAL from start to end), which is exactly while the receiver runs. A gap recorded while
    a base backup is running asks for one more: that one started before the gap and cannot cross it. A failure is
    logged (and the window stays broken, which wal-window and recover report); the receiver keeps streaming.
    """

    target: str
    take: Callable[[], object]  # one base backup (basebackup.run_base_backup with the target's BaseRun)
    thread: threading.Thread | None = None
    again: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)
    taken: int = 0

    def __call__(self, reason: str) -> None:
        with self.lock:
            if self.thread is not None and self.thread.is_alive():
                self.again = True
                return
            logger.warning(
                "taking a base backup: the WAL archive has a gap, times after it need a newer base",
                extra={"target": self.target, "reason": reason},
            )
            self.thread = threading.Thread(target=self._loop, name=f"base-after-gap-{self.target}", daemon=True)
            self.thread.start()

    def _loop(self) -> None:
        while True:
            try:
                self.take()
                self.taken += 1
            except LifeboatError as exc:
                logger.error("base backup after a gap failed", extra={"target": self.target, "error": str(exc)})
            with self.lock:
                if not self.again:
                    return
                self.again = False

    def wait(self, timeout: float | None = None) -> None:
        if self.thread is not None:
            self.thread.join(timeout)
