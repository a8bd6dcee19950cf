"""One measured operation in a fresh process; prints one JSON line on stdout.

    python -m bench.worker backup  --target NAME --slot ISO [--profile FILE]
    python -m bench.worker sink    --bytes N --key KEY
    python -m bench.worker restore --backup-id ID --database NAME --jobs N [--profile FILE]
    python -m bench.worker coldstart --mode boto3|boto3-client|boto3-clients|app|app-backup|app-api

The parent (bench.run) sets the environment exactly as the Lambda function sees it (LIFEBOAT_CONFIG,
LIFEBOAT_PG_ROOTS, LIFEBOAT_JOBS_TABLE, AWS_ENDPOINT_URL for moto, AWS_ENDPOINT_URL_S3 for SeaweedFS).
Services come from chalicelib.wiring, the handlers' own factory. Memory is this process's VmHWM
(peak RSS) from /proc/self/status; the PostgreSQL tool it ran (pg_dump, pg_restore) is reported apart
through RUSAGE_CHILDREN. `cpu_call` is this process's CPU time (time.process_time: every thread) during the
measured call alone, imports and client creation excluded: the Python CPU a backup costs.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import IO, Any


def vm_kib(field: str) -> int:
    """A kB field of /proc/self/status (VmHWM: peak RSS, VmRSS: current RSS)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


class ChildPeaks:
    """Peak RSS of this process's children (pg_dump, pg_restore), sampled from /proc/<pid>/status VmHWM.

    RUSAGE_CHILDREN cannot tell: a child started with vfork/posix_spawn, as subprocess does, inherits the
    parent's high-water mark at exec, so its ru_maxrss is at least this Python process's peak.
    """

    def __init__(self, interval: float = 0.02) -> None:
        self.interval = interval
        self.peaks: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _children(self) -> list[int]:
        pids: list[int] = []
        for tid in os.listdir("/proc/self/task"):
            try:
                pids += [int(p) for p in Path(f"/proc/self/task/{tid}/children").read_text().split()]
            except OSError:
                continue
        return pids

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            for pid in self._children():
                try:
                    status = Path(f"/proc/{pid}/status").read_text()
                except OSError:
                    continue
                fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
                name, hwm = fields.get("Name", "?").strip(), fields.get("VmHWM", "0 kB").split()
                if hwm:
                    self.peaks[name] = max(self.peaks.get(name, 0), int(hwm[0]))

    def __enter__(self) -> ChildPeaks:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


CALL_CPU: dict[str, float] = {"seconds": 0.0}


def _usage() -> dict[str, float]:
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {
        "cpu_self": me.ru_utime + me.ru_stime,
        "cpu_children": kids.ru_utime + kids.ru_stime,
        "cpu_call": CALL_CPU["seconds"],
    }


def _timed(fn: Callable[[], Any], profile: str | None) -> tuple[Any, float]:
    """Run fn, with pyinstrument around it when asked (the timing then includes the profiler's overhead).
    The CPU time of the call is left in CALL_CPU["seconds"]."""
    profiler = None
    if profile:
        from pyinstrument import Profiler

        profiler = Profiler(interval=0.001)
        profiler.start()
    t0, cpu0 = time.perf_counter(), time.process_time()
    result = fn()
    seconds = time.perf_counter() - t0
    CALL_CPU["seconds"] = time.process_time() - cpu0
    if profiler is not None and profile:
        profiler.stop()
        Path(profile).write_text(profiler.output_text(unicode=True, color=False, show_all=False))
    return result, seconds


def _warm_imports() -> None:
    """What a warm Lambda container has already imported; cold start is measured on its own."""
    import psycopg  # noqa: F401
    from aws_lambda_powertools.utilities import parameters  # noqa: F401
    from aws_lambda_powertools.utilities.parameters import SecretsProvider  # noqa: F401


def backup(args: argparse.Namespace) -> dict[str, Any]:
    from chalicelib import wiring
    from chalicelib.logical.dump import run_logical_backup

    svc = wiring.backup_services()
    _warm_imports()
    rss_before = vm_kib("VmRSS")
    hwm_before = vm_kib("VmHWM")
    slot = datetime.fromisoformat(args.slot)
    with ChildPeaks() as kids:
        outcome, seconds = _timed(lambda: run_logical_backup(svc, args.target, slot, trigger="bench"), args.profile)
    if outcome.status != "SUCCEEDED" or outcome.manifest is None:
        raise SystemExit(f"backup {outcome.backup_id} {outcome.status}: {outcome.reason}")
    dump = outcome.manifest.object("dump")
    return {
        "seconds": seconds,
        "backup_id": outcome.backup_id,
        "bytes": dump.size,
        "key": dump.key,
        "rss_before_kib": rss_before,
        "hwm_before_kib": hwm_before,
        "hwm_kib": vm_kib("VmHWM"),
        "pg_dump_hwm_kib": kids.peaks.get("pg_dump", 0),
        **_usage(),
    }


class FreeStream:
    """`n` bytes that cost nothing to produce: the same random buffer handed out again (no copy for a
    full-size read), so a put_stream of it measures the uploader and the S3 server alone."""

    def __init__(self, n: int, chunk: int) -> None:
        self.left = n
        self.buf = os.urandom(chunk)

    def read(self, size: int = -1) -> bytes:
        size = self.left if size < 0 else min(size, self.left)
        self.left -= size
        if size == len(self.buf):
            return self.buf
        out = bytearray()
        while len(out) < size:
            out += self.buf[: size - len(out)]
        return bytes(out)


def sink(args: argparse.Namespace) -> dict[str, Any]:
    from chalicelib import wiring

    store = wiring.store(wiring.load_config())
    stream = FreeStream(args.bytes, store.plan.size(1))
    if args.start_after:  # a parent waits for this file to go, then measures something else meanwhile
        ready = Path(args.start_after)
        deadline = time.monotonic() + 30
        while not ready.exists() and time.monotonic() < deadline:
            time.sleep(0.005)
        ready.unlink(missing_ok=True)
    hwm_before = vm_kib("VmHWM")
    fn = lambda: store.put_stream(args.key, stream, tags={"target": "sink"})  # type: ignore[arg-type]  # noqa: E731
    result, seconds = _timed(fn, args.profile)
    store.delete([args.key])
    return {
        "seconds": seconds,
        "bytes": result.size,
        "parts": result.parts,
        "hwm_before_kib": hwm_before,
        "hwm_kib": vm_kib("VmHWM"),
        **_usage(),
    }


def restore(args: argparse.Namespace) -> dict[str, Any]:
    from chalicelib import wiring
    from chalicelib.adapters.postgres import Login
    from chalicelib.logical.restore import RestoreOptions, restore_logical

    cfg = wiring.load_config()
    catalog = wiring.catalog(cfg)
    conn = cfg.targets[0].connection
    assert conn is not None
    # TLS verified as configured (devstack.local.target: verify-full against the devstack CA), as in production.
    login = Login(
        conn.host,
        conn.port,
        "postgres",
        os.environ["BENCH_PGUSER"],
        conn.sslmode,
        conn.sslrootcert,
        password=os.environ["BENCH_PGPASSWORD"],
    )
    _warm_imports()
    hwm_before = vm_kib("VmHWM")
    workdir = Path(args.workdir) if args.workdir else None
    with ChildPeaks() as kids:
        result, seconds = _timed(
            lambda: restore_logical(
                catalog.store,
                catalog,
                wiring.toolbox(),
                args.backup_id,
                login,
                args.database,
                RestoreOptions(jobs=args.jobs),
                workdir=workdir,
            ),
            args.profile,
        )
    return {
        "seconds": seconds,
        "bytes": result.bytes_restored,
        "verified": result.verified,
        "hwm_before_kib": hwm_before,
        "hwm_kib": vm_kib("VmHWM"),
        "pg_restore_hwm_kib": kids.peaks.get("pg_restore", 0),
        **_usage(),
    }


def coldstart(args: argparse.Namespace) -> dict[str, Any]:
    """In a fresh interpreter: `import app` (a function's init) alone, or with the clients and settings a handler
    builds on its first event; and the floors to compare them with."""
    t0 = time.perf_counter()
    if args.mode == "boto3":
        import boto3
    elif args.mode == "boto3-client":
        import boto3

        boto3.client("s3")
    elif args.mode == "boto3-clients":
        import boto3

        boto3.client("s3")
        boto3.client("dynamodb")
    elif args.mode in ("app", "app-backup", "app-api"):
        import app  # noqa: F401
        from chalicelib import wiring  # already imported by app: free

        if args.mode == "app-backup":
            wiring.backup_services()
        elif args.mode == "app-api":
            wiring.api_services()
    else:
        raise SystemExit(f"unknown mode {args.mode}")
    return {"seconds": time.perf_counter() - t0, "hwm_kib": vm_kib("VmHWM")}


def main(argv: list[str] | None = None, out: IO[str] = sys.stdout) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.worker")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("backup")
    p.add_argument("--target", required=True)
    p.add_argument("--slot", required=True)
    p.add_argument("--profile")
    p = sub.add_parser("sink")
    p.add_argument("--bytes", type=int, required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--start-after", help="wait for this file, remove it, then upload")
    p.add_argument("--profile")
    p = sub.add_parser("restore")
    p.add_argument("--backup-id", required=True)
    p.add_argument("--database", required=True)
    p.add_argument("--jobs", type=int, default=1)
    p.add_argument("--workdir")
    p.add_argument("--profile")
    p = sub.add_parser("coldstart")
    p.add_argument("--mode", required=True)
    args = parser.parse_args(argv)
    commands: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
        "backup": backup,
        "sink": sink,
        "restore": restore,
        "coldstart": coldstart,
    }
    result = commands[args.command](args)
    out.write(json.dumps(result) + "\n")
    out.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
