"""`make devstack`: the sandbox starts, prints exports that make `lifeboat` work against it, and Ctrl-C (SIGINT)
stops everything it started and removes what it wrote."""

from __future__ import annotations

import json
import queue
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

from devstack.postgres import real_clock_env
from devstack.sandbox import READY

REPO = Path(__file__).resolve().parents[2]
LIFEBOAT = str(Path(sys.executable).parent / "lifeboat")


def listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def read_until_ready(proc: subprocess.Popen[str], timeout: float = 120) -> tuple[dict[str, str], str]:
    lines: queue.Queue[str] = queue.Queue()
    assert proc.stdout is not None
    stdout = proc.stdout

    def pump() -> None:
        for line in stdout:
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    exports: dict[str, str] = {}
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=1)
        except queue.Empty:
            assert proc.poll() is None, "".join(seen)
            continue
        seen.append(line)
        if line.startswith("export "):
            name, _, value = line.removeprefix("export ").strip().partition("=")
            exports[name] = shlex.split(value)[0]
        if line.startswith(READY):
            return exports, "".join(seen)
    raise AssertionError(f"no {READY!r} line within {timeout}s:\n{''.join(seen)}")


def run(command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False)


def sandbox(work: Path, env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "devstack.sandbox", "--dir", str(work), *args]
    return subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_up_use_and_ctrl_c(tmp_path: Path) -> None:
    work = tmp_path / "devstack"
    # The shell of an operator: nothing pointing at AWS or lifeboat yet (and the real clock for PostgreSQL).
    env = {k: v for k, v in real_clock_env().items() if not k.startswith(("AWS_", "LIFEBOAT_", "MOTO_", "POWERTOOLS_"))}
    proc = sandbox(work, env, "--aws-port", "0", "--pg-port", "0")
    try:
        exports, printed = read_until_ready(proc)
        assert {"AWS_ENDPOINT_URL", "LIFEBOAT_CONFIG", "LIFEBOAT_JOBS_TABLE", "LIFEBOAT_PG_ROOTS"} <= exports.keys()
        assert (work / "env").read_text().splitlines() == [
            line for line in printed.splitlines() if line.startswith("export ")
        ]
        operator = {**env, **exports}
        done = run([LIFEBOAT, "validate"], operator)
        assert done.returncode == 0 and "configuration OK: 1 target(s)" in done.stdout, done.stderr
        done = run([LIFEBOAT, "backup", "shop"], operator)
        assert done.returncode == 0 and done.stdout.startswith("logical:shop:"), done.stderr
        again = sandbox(work, env)  # the same directory: refused while the first runs
        assert again.wait(60) == 2 and "already running" in (again.stdout.read() if again.stdout else "")

        aws_port = urlparse(exports["AWS_ENDPOINT_URL"]).port or 0
        pg_port = json.loads(Path(exports["LIFEBOAT_CONFIG"]).read_text())["targets"][0]["connection"]["port"]
        assert listening(aws_port) and listening(pg_port)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0
        assert not listening(aws_port) and not listening(pg_port)
        assert sorted(p.name for p in work.iterdir()) == []  # no configuration left pointing at a stopped port
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
    down = run([sys.executable, "-m", "devstack.sandbox", "--down", "--dir", str(work)], env)
    assert down.returncode == 0 and "none running" in down.stdout
