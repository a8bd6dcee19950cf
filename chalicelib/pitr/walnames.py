"""WAL file names, LSNs, where each file lives in the bucket, and whether a stream is continuous. Pure.

A segment's name is `TTTTTTTTXXXXXXXXYYYYYYYY`: its timeline and its number (`XXXXXXXX * segments per 4 GiB +
YYYYYYYY`), in hex. In the bucket (under settings.prefix):

    wal/<target>/<timeline>/<segment>            a finished segment (zstd; SHA-256 of the segment in its metadata)
    wal/<target>/<timeline>/<segment>.partial    the open segment as last uploaded (zero-padded to full size)
    wal/<target>/<timeline>/<timeline>.history   a timeline's history file
    wal/<target>/gaps/<after>-<before>.json      a recorded break in the stream (the slot was lost, a new server)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from chalicelib.errors import BadRequestError

MiB = 1024 * 1024
DEFAULT_SEGMENT_SIZE = 16 * MiB
PARTIAL = ".partial"
SEGMENT_NAME = re.compile(r"^([0-9A-F]{8})([0-9A-F]{8})([0-9A-F]{8})$")
HISTORY_NAME = re.compile(r"^([0-9A-F]{8})\.history$")
LSN_TEXT = re.compile(r"^([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})$")

Kind = Literal["segment", "partial", "history"]


def parse_lsn(text: str) -> int:
    """`16/B374D848` as an integer; a BadRequestError saying the format otherwise."""
    found = LSN_TEXT.fullmatch(text.strip())
    if not found:
        raise BadRequestError(f"{text!r} is not an LSN: write it as PostgreSQL prints it, e.g. 0/3000148")
    return (int(found.group(1), 16) << 32) | int(found.group(2), 16)


def format_lsn(lsn: int) -> str:
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def segments_per_id(segment_size: int) -> int:
    return 0x100000000 // segment_size


@dataclass(frozen=True)
class Segment:
    """One WAL segment: its timeline and its number (segno) for a given segment size."""

    timeline: int
    number: int
    segment_size: int = DEFAULT_SEGMENT_SIZE

    @property
    def name(self) -> str:
        per = segments_per_id(self.segment_size)
        return f"{self.timeline:08X}{self.number // per:08X}{self.number % per:08X}"

    @property
    def start_lsn(self) -> int:
        return self.number * self.segment_size

    @property
    def position(self) -> tuple[int, int]:
        """Sort key: later WAL first by number, then by timeline (a timeline switch reuses the number)."""
        return (self.number, self.timeline)

    def following(self) -> Segment:
        return Segment(self.timeline, self.number + 1, self.segment_size)

    @classmethod
    def parse(cls, name: str, segment_size: int = DEFAULT_SEGMENT_SIZE) -> Segment:
        found = SEGMENT_NAME.fullmatch(name)
        if not found:
            raise BadRequestError(f"{name!r} is not a WAL segment name (24 hex digits, e.g. 000000010000000000000003)")
        per = segments_per_id(segment_size)
        high, low = int(found.group(2), 16), int(found.group(3), 16)
        if low >= per:
            raise BadRequestError(f"{name!r} is not a segment of {segment_size // MiB} MiB WAL")
        return cls(int(found.group(1), 16), high * per + low, segment_size)

    @classmethod
    def containing(cls, lsn: int, timeline: int, segment_size: int = DEFAULT_SEGMENT_SIZE) -> Segment:
        return cls(timeline, lsn // segment_size, segment_size)


def is_segment_name(name: str) -> bool:
    return SEGMENT_NAME.fullmatch(name) is not None


def history_timeline(name: str) -> int | None:
    """The timeline of a history file's name (`00000002.history`), None for any other name."""
    found = HISTORY_NAME.fullmatch(name)
    return int(found.group(1), 16) if found else None


@dataclass(frozen=True)
class WalLayout:
    """Keys of one target's WAL under the settings' prefix."""

    prefix: str
    target: str

    @property
    def root(self) -> str:
        return f"{self.prefix}wal/{self.target}/"

    @property
    def gaps_prefix(self) -> str:
        return f"{self.root}gaps/"

    def segment_key(self, segment: Segment) -> str:
        return f"{self.root}{segment.timeline:08X}/{segment.name}"

    def partial_key(self, segment: Segment) -> str:
        return self.segment_key(segment) + PARTIAL

    def history_key(self, timeline: int) -> str:
        return f"{self.root}{timeline:08X}/{timeline:08X}.history"

    def gap_key(self, gap: Gap) -> str:
        return f"{self.gaps_prefix}{gap.after or 'start'}-{gap.before}.json"

    def parse_key(self, key: str, segment_size: int = DEFAULT_SEGMENT_SIZE) -> tuple[Kind, Segment | int] | None:
        """What a key under `root` holds: ("segment" | "partial", Segment) or ("history", timeline); None for
        anything else (gap records, foreign objects)."""
        if not key.startswith(self.root):
            return None
        folder, _, name = key[len(self.root) :].partition("/")
        if not re.fullmatch(r"[0-9A-F]{8}", folder):
            return None
        timeline = history_timeline(name)
        if timeline is not None:
            return "history", timeline
        kind: Kind = "partial" if name.endswith(PARTIAL) else "segment"
        base = name.removesuffix(PARTIAL)
        if not is_segment_name(base) or base[:8] != folder:
            return None
        return kind, Segment.parse(base, segment_size)


@dataclass(frozen=True)
class Gap:
    """WAL that will never be in the archive: between segment `after` (None: before anything) and `before`."""

    after: str | None
    before: str
    reason: str


def continuity(previous: Segment | None, following: Segment) -> Gap | None:
    """Whether `following` may come after `previous` (the newest segment archived) without losing WAL: the same
    segment again (the open one, re-sent after a restart), the next one, or the same number on a later timeline
    (a timeline switch inside a segment). Anything else is a Gap that says why."""
    if previous is None:
        return None
    if following.timeline < previous.timeline or following.number < previous.number:
        return Gap(
            previous.name,
            following.name,
            "the stream went backwards: the server was restored, replaced or re-initialised",
        )
    if following.number > previous.number + 1:
        return Gap(
            previous.name,
            following.name,
            f"{following.number - previous.number - 1} segment(s) between them were never received: the slot was"
            " lost or dropped, or the server removed the WAL before the receiver read it",
        )
    return None
