"""A slow S3: a TCP proxy in front of the S3 server that caps the upload bandwidth (client to server).

The local S3 server ingests faster than pg_dump produces, so the upload path's in-flight budget never
fills; behind this proxy it does, as against a distant region. The proxy forwards bytes untouched (TLS
included: the certificate is the server's, for 127.0.0.1), so the backup runs its real code path.

    with ThrottledProxy(upstream_port, bytes_per_second=30e6) as proxy:
        env["AWS_ENDPOINT_URL_S3"] = f"https://127.0.0.1:{proxy.port}"
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType

CHUNK = 64 * 1024


@dataclass
class TokenBucket:
    """At most `rate` bytes per second on average, bursts up to `burst` bytes (pure: the clock is passed in)."""

    rate: float
    burst: float
    tokens: float = 0.0
    stamp: float | None = None

    def delay(self, size: int, now: float) -> float:
        """Seconds to wait before sending `size` bytes at time `now`; the bytes are taken from the bucket."""
        if self.rate <= 0:
            raise ValueError(f"the rate must be positive, not {self.rate}")
        if self.stamp is None:
            self.stamp, self.tokens = now, self.burst
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        self.tokens -= size
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate


@dataclass
class ThrottledProxy:
    upstream_port: int
    bytes_per_second: float
    port: int = 0
    clock: Callable[[], float] = time.monotonic
    _listener: socket.socket | None = None
    _bucket: TokenBucket = field(init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _closed: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        # one bucket for all connections: the cap is the link's, however many parts are in flight
        self._bucket = TokenBucket(self.bytes_per_second, burst=self.bytes_per_second / 10)

    def start(self) -> ThrottledProxy:
        listener = socket.create_server(("127.0.0.1", self.port))
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def _accept(self) -> None:
        assert self._listener is not None
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, throttled: bool) -> None:
        try:
            while data := src.recv(CHUNK):
                if throttled:
                    with self._lock:
                        wait = self._bucket.delay(len(data), self.clock())
                    if wait > 0:
                        time.sleep(wait)
                dst.sendall(data)
        except OSError:
            pass  # the other side closed: close both below
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()

    def stop(self) -> None:
        self._closed.set()
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    def __enter__(self) -> ThrottledProxy:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
