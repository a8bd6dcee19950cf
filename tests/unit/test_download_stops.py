"""download_objects stops at the first failure, in a worker or on the calling thread (Ctrl-C, a deadline): at most
the pieces under way make a request after it, the queued ones never start."""

from __future__ import annotations

import hashlib
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import pytest

from chalicelib.logical.catalog import ManifestObject
from chalicelib.logical.download import download_objects

DATA = bytes(range(40))
WORKERS = 2


class Interrupted(BaseException):
    """Stands for KeyboardInterrupt on the calling thread (not an Exception)."""


class SlowStore:
    """Ranged GETs that take a little while; the first one triggers `on_first` (a failure, or a signal)."""

    def __init__(self, on_first: str) -> None:
        self.on_first = on_first
        self.calls: list[float] = []  # when each GET began
        self.lock = threading.Lock()

    def get_range(self, key: str, version_id: str | None, start: int, end: int) -> bytes:
        with self.lock:
            first = not self.calls
            self.calls.append(time.monotonic())
        if first and self.on_first == "fail":
            raise OSError("injected: connection reset")
        if first and self.on_first == "interrupt":
            time.sleep(0.2)  # the calling thread has queued all 40 pieces by then (it takes a millisecond)
            main = threading.main_thread().ident
            assert main is not None
            signal.pthread_kill(main, signal.SIGUSR1)  # Ctrl-C's way in: a signal handled on the calling thread
        time.sleep(0.01)
        return DATA[start:end]


@pytest.fixture
def interrupt_when_signalled() -> Iterator[list[float]]:
    """SIGUSR1 raises Interrupted on the main thread; the list gets the time it was raised."""
    raised: list[float] = []

    def handler(signum: int, frame: FrameType | None) -> None:
        raised.append(time.monotonic())
        raise Interrupted()

    previous = signal.signal(signal.SIGUSR1, handler)
    yield raised
    signal.signal(signal.SIGUSR1, previous)


def one_object(tmp_path: Path) -> list[tuple[ManifestObject, Path]]:
    obj = ManifestObject(role="dump", key="k", size=len(DATA), sha256=hashlib.sha256(DATA).hexdigest())
    return [(obj, tmp_path / "dump")]


def test_an_interrupt_on_the_calling_thread_stops_the_queued_pieces(
    tmp_path: Path, interrupt_when_signalled: list[float]
) -> None:
    store = SlowStore("interrupt")
    with pytest.raises(Interrupted):
        download_objects(store, one_object(tmp_path), workers=WORKERS, range_size=1)  # type: ignore[arg-type]
    after = [began for began in store.calls if began >= interrupt_when_signalled[0]]
    assert len(after) <= WORKERS, f"{len(after)} GETs after the interrupt"  # before: the other 39 pieces ran


def test_a_failed_first_piece_stops_the_rest(tmp_path: Path) -> None:
    store = SlowStore("fail")
    with pytest.raises(OSError, match="injected"):
        download_objects(store, one_object(tmp_path), workers=WORKERS, range_size=1)  # type: ignore[arg-type]
    assert len(store.calls) <= 1 + WORKERS
