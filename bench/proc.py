"""Running and measuring child processes for the benchmark: wall time, CPU and peak RSS (wait4, /proc)."""

from __future__ import annotations

import os
import platform
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

REPO = Path(__file__).resolve().parent.parent


def log(text: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


@dataclass
class Proc:
    """A finished child: wall time, exit status, its own rusage (wait4) and what it printed."""

    seconds: float
    code: int
    cpu: float
    maxrss_kib: int
    stdout: str
    stderr: str


def run_timed(
    cmd: Sequence[str], env: dict[str, str], *, stdout: Any = subprocess.PIPE, cwd: Path = REPO, check: bool = True
) -> Proc:
    """Run a command; its wall time, and its rusage (with its waited-for children) from wait4."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(list(cmd), env=env, stdout=stdout, stderr=subprocess.PIPE, cwd=cwd)
    captured: dict[str, bytes] = {}

    def drain(name: str, stream: IO[bytes] | None) -> None:
        captured[name] = stream.read() if stream else b""

    readers = [
        threading.Thread(target=drain, args=("out", proc.stdout if stdout is subprocess.PIPE else None)),
        threading.Thread(target=drain, args=("err", proc.stderr)),
    ]
    for reader in readers:
        reader.start()
    for reader in readers:
        reader.join()
    # wait4 rather than Popen.wait: it also returns the child's rusage (CPU, peak RSS).
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    for stream in (proc.stdout, proc.stderr):
        if stream:
            stream.close()
    result = Proc(
        seconds,
        proc.returncode,
        usage.ru_utime + usage.ru_stime,
        usage.ru_maxrss,
        captured["out"].decode(errors="replace"),
        captured["err"].decode(errors="replace"),
    )
    if check and result.code != 0:
        raise RuntimeError(f"{' '.join(cmd[:3])}... exited {result.code}: {result.stderr[-2000:]}")
    return result


def proc_cpu(pid: int, children: bool = False) -> float:
    """utime+stime of a running process (seconds), e.g. the S3 server during one measurement; with
    `children`, also that of its exited, waited-for children (the postmaster's backends)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = sum(int(f) for f in fields[11 : 15 if children else 13])
    return ticks / os.sysconf("SC_CLK_TCK")


def machine() -> dict[str, Any]:
    cpu = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_kib = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kib = int(line.split()[1])
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "ram_gib": round(mem_kib / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": commit(),
        "max_rss_limit": resource.getrlimit(resource.RLIMIT_AS)[0],
    }


def commit() -> str:
    """The measured code: HEAD's short hash, "+changes" when the tree differs from it."""

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=False)
        except OSError:
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    head = git("rev-parse", "--short", "HEAD")
    if head is None:
        return "?"
    return head + ("+changes" if git("status", "--porcelain", "--", ".", ":!BENCHMARKS.md") else "")
