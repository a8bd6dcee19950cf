"""The measured sections of `make bench`: backup (and its memory, a slow S3, the --big run), restore,
compression, cold start. Mixed into bench.run.Bench, which owns the servers and the environment.

Every section measures in rounds (bench.stats.measuring_order): each dataset's variants once per round,
rotated, so drift over the run hits every variant alike and two variants of one round can be compared.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3

from bench import profiles
from bench.proc import REPO, Proc, log, proc_cpu, run_timed
from bench.report import parse_importtime
from bench.stats import measuring_order
from bench.throttle import ThrottledProxy
from chalicelib.config import Logical, Settings

if TYPE_CHECKING:
    from types_boto3_s3 import S3Client

    from bench.datasets import CachedPostgresServer, Dataset
    from bench.run import Options
    from bench.seaweed import SeaweedServer

# The product's defaults, read from its configuration model (the benchmark's targets do not set them).
COMPRESSION: str = Logical.model_fields["compression"].default
PART_BYTES: int = Settings.model_fields["part_size_mib"].default * 1024 * 1024  # smaller dumps: one PutObject
COMPRESSIONS = ("gzip:1", "gzip:6", "lz4", "zstd:1", "zstd:3", "zstd:9")
BUCKET = "lifeboat-bench"
FIRST_SLOT = datetime(2026, 1, 5, 3, 0, tzinfo=UTC)
NOCOUNT = "-nocount"
SERIAL_COUNT = "-serialcount"  # logical.row_counts_mode: serial (the default is parallel)
COMPRESSION_BUDGET = 40.0  # seconds: a (dataset, method) is repeated while its runs total less
FIXED = "tiny"  # the dataset whose runs are fixed costs, not throughput
COLDSTART_MODES = ("boto3", "boto3-client", "boto3-clients", "app", "app-backup", "app-api")


class Sections:
    opts: Options
    results: dict[str, Any]
    seaweed: SeaweedServer
    pg: CachedPostgresServer
    pg_bin: Path
    pg_env: dict[str, str]
    s3: S3Client
    backups: dict[str, list[dict[str, Any]]]
    slots: int

    # provided by bench.run.Bench, which owns the servers
    def worker(self, *args: str, env: dict[str, str] | None = None) -> tuple[dict[str, Any], Proc]:
        raise NotImplementedError

    def env_for(self, transport: str, endpoint: str | None = None) -> dict[str, str]:
        raise NotImplementedError

    def server_cpu(self) -> float:
        raise NotImplementedError

    def psql(self, sql: str, db: str = "postgres") -> str:
        raise NotImplementedError

    def next_slot(self) -> str:
        """A fresh slot per backup (one hour apart), so no two backups of a target share an id."""
        self.slots += 1
        return (FIRST_SLOT + timedelta(hours=self.slots)).isoformat()

    def pg_dump_cmd(self, db: str, compression: str = COMPRESSION) -> list[str]:
        # What chalicelib.logical.dump.pg_dump_args passes, less --snapshot (nothing to attach to here).
        return [
            str(self.pg_bin / "pg_dump"),
            "--format=custom",
            "--no-password",
            "--lock-wait-timeout=60000",
            f"--compress={compression}",
            f"--dbname={db}",
        ]

    def probe_payload_signing(self, transport: str) -> str:
        """x-amz-content-sha256 of an UploadPart sent by botocore over this transport ("UNSIGNED-PAYLOAD"
        or its streaming variant over HTTPS, as against AWS; a SHA-256 of the payload over HTTP)."""
        env = self.env_for(transport)
        client = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL_S3"], verify=env.get("AWS_CA_BUNDLE", True))
        seen: list[str] = []

        def record(request: Any, **_: Any) -> None:
            value = request.headers.get("x-amz-content-sha256", b"")
            seen.append(value.decode() if isinstance(value, bytes) else str(value))

        client.meta.events.register("before-send.s3.UploadPart", record)
        key = f"probe/{transport}"
        upload = client.create_multipart_upload(Bucket=BUCKET, Key=key)["UploadId"]
        client.upload_part(Bucket=BUCKET, Key=key, UploadId=upload, PartNumber=1, Body=b"probe")
        client.abort_multipart_upload(Bucket=BUCKET, Key=key, UploadId=upload)
        signing = seen[0] if seen else "?"
        return signing if "PAYLOAD" in signing else "SHA-256 of the payload"

    # --- backup: limit, peer, pg-lifeboat, sink, limit while S3 ingests ------------------------------

    @staticmethod
    def aws_cli() -> str | None:
        return shutil.which("aws", path=str(Path(sys.executable).parent)) or shutil.which("aws")

    def peer_command(self) -> tuple[list[str], str]:
        """How the peer uploads stdin (`aws s3 cp -`, or boto3's upload_fileobj when aws is missing), and its name."""
        aws = self.aws_cli()
        if aws:
            version = run_timed([aws, "--version"], self.env_for("plain")).stdout.strip() or "aws-cli/?"
            return [aws, "s3", "cp", "-", "{url}", "--sse", "AES256", "--only-show-errors"], version.split()[0]
        script = [sys.executable, "-m", "bench.peer_upload", BUCKET, "{key}"]
        return script, "boto3 upload_fileobj from stdin (bench/peer_upload.py: the aws CLI is not installed)"

    def backup_variants(self, ds: Dataset) -> list[str]:
        extra = [f"{v}_{t}" for t in self.opts.transports[1:] for v in ("peer", "lifeboat")]
        if ds.name == FIXED:
            return ["limit", "peer", "lifeboat", *extra]
        return [
            "limit",
            "peer",
            "lifeboat",
            "lifeboat_nocount",
            "lifeboat_serialcount",
            "sink",
            "limit_s3_busy",
            *extra,
        ]

    def backup_section(self) -> None:
        self.peer, self.results["options"]["peer"] = self.peer_command()
        datasets = self.opts.datasets()
        for ds in datasets:  # a warm-up backup, not measured: the dump's size, and a backup to restore
            log(f"backup {ds.name}: warm-up")
            mine, _ = self.worker("backup", "--target", ds.name, "--slot", self.next_slot())
            self.backups[ds.name] = [mine]
            self.results["backup"][ds.name] = {v: [] for v in self.backup_variants(ds)}
            self.results["backup"][ds.name]["dump_bytes"] = mine["bytes"]
        plan = measuring_order([(ds, self.backup_variants(ds)) for ds in datasets], self.opts.reps)
        for i, (rep, ds, variant) in enumerate(plan):
            log(f"backup {ds.name} {variant} round {rep + 1}/{self.opts.reps} ({i + 1}/{len(plan)})")
            result = self.measure_backup(ds, variant, rep)
            if result is not None:
                self.results["backup"][ds.name][variant].append(result)
        self.slow_s3_section()

    def measure_backup(self, ds: Dataset, variant: str, rep: int) -> dict[str, Any] | None:
        name, _, transport = variant.partition("_")
        transport = transport if transport in ("plain", "tls") else self.opts.transports[0]
        if variant == "limit":
            pg0 = self.server_cpu()
            with open(os.devnull, "wb") as null:
                p = run_timed(self.pg_dump_cmd(ds.name), self.pg_env, stdout=null)
            return {"seconds": p.seconds, "cpu": p.cpu, "maxrss_kib": p.maxrss_kib, "pg_cpu": self.server_cpu() - pg0}
        if name == "peer":
            return self.measure_peer(ds, rep, transport)
        if name == "lifeboat":
            target = ds.name + {"lifeboat_nocount": NOCOUNT, "lifeboat_serialcount": SERIAL_COUNT}.get(variant, "")
            weed0, pg0 = proc_cpu(self.seaweed.pid), self.server_cpu()
            env = self.env_for(transport)
            mine, proc = self.worker("backup", "--target", target, "--slot", self.next_slot(), env=env)
            mine.update(
                process_seconds=proc.seconds, s3_cpu=proc_cpu(self.seaweed.pid) - weed0, pg_cpu=self.server_cpu() - pg0
            )
            return mine
        dump_bytes = str(self.results["backup"][ds.name]["dump_bytes"])
        if variant == "sink":
            weed0 = proc_cpu(self.seaweed.pid)
            free, _ = self.worker("sink", "--bytes", dump_bytes, "--key", f"sink/{ds.name}/{rep}")
            return {**free, "s3_cpu": proc_cpu(self.seaweed.pid) - weed0}
        if variant == "limit_s3_busy":
            return self.measure_limit_while_s3_busy(ds, rep, dump_bytes)
        raise ValueError(f"unknown backup variant {variant!r}")

    def measure_peer(self, ds: Dataset, rep: int, transport: str) -> dict[str, Any]:
        key = f"peer/{ds.name}/{transport}/{rep}.dump"
        upload = " ".join(a.format(url=f"s3://{BUCKET}/{key}", key=key) for a in self.peer)
        script = f"set -o pipefail; {' '.join(self.pg_dump_cmd(ds.name))} | {upload}"
        weed0 = proc_cpu(self.seaweed.pid)
        peer = run_timed(["bash", "-c", script], self.peer_env(transport))
        size = int(self.s3.head_object(Bucket=BUCKET, Key=key)["ContentLength"])
        self.s3.delete_object(Bucket=BUCKET, Key=key)
        return {"seconds": peer.seconds, "cpu": peer.cpu, "bytes": size, "s3_cpu": proc_cpu(self.seaweed.pid) - weed0}

    def measure_limit_while_s3_busy(self, ds: Dataset, rep: int, dump_bytes: str) -> dict[str, Any] | None:
        """The limit again while the S3 server ingests the same bytes (the sink, in parallel): what the
        S3 server's CPU, on this machine's cores, costs pg_dump. Not for a dump of one PutObject."""
        if int(dump_bytes) < PART_BYTES:
            return None
        ready = self.opts.workdir / "sink.ready"
        cmd = [sys.executable, "-m", "bench.worker", "sink", "--bytes", dump_bytes, "--key", f"busy/{ds.name}/{rep}"]
        env = self.env_for(self.opts.transports[0])
        sink = subprocess.Popen([*cmd, "--start-after", str(ready)], env=env, cwd=REPO, stdout=subprocess.DEVNULL)
        try:
            ready.write_text("")  # the sink removes it once its imports are done and it starts uploading
            deadline = time.monotonic() + 30
            while ready.exists():
                if time.monotonic() > deadline:
                    raise RuntimeError("the parallel sink did not start")
                time.sleep(0.01)
            with open(os.devnull, "wb") as null:
                busy = run_timed(self.pg_dump_cmd(ds.name), self.pg_env, stdout=null)
        finally:
            sink.wait()
        return {"seconds": busy.seconds, "cpu": busy.cpu}

    def slow_s3_section(self) -> None:
        """The real backup of the hard-to-compress dataset through a proxy capping the upload bandwidth:
        S3 slower than pg_dump, so the in-flight budget fills (the local server never lets it)."""
        transport = self.opts.transports[0]
        upstream = self.seaweed.https_port if transport == "tls" else self.seaweed.s3_port
        scheme = "https" if transport == "tls" else "http"
        with ThrottledProxy(upstream, self.opts.slow_s3_mbps * 1e6) as proxy:
            env = self.env_for(transport, f"{scheme}://127.0.0.1:{proxy.port}")
            for rep in range(self.opts.reps):
                log(f"backup random with a slow S3 ({self.opts.slow_s3_mbps:g} MB/s) round {rep + 1}/{self.opts.reps}")
                mine, _ = self.worker("backup", "--target", "random", "--slot", self.next_slot(), env=env)
                self.results["slow_s3"].append(mine)

    def big_section(self) -> None:
        """--big: peak RSS of backups of ~200 MB and ~5 GB of hard-to-compress data, in rounds."""
        datasets = self.opts.big_datasets()
        for rep, ds, _ in measuring_order([(ds, ["lifeboat"]) for ds in datasets], self.opts.reps):
            log(f"big: backup {ds.name} round {rep + 1}/{self.opts.reps}")
            mine, _ = self.worker("backup", "--target", ds.name, "--slot", self.next_slot())
            self.results["big"].setdefault(ds.name, []).append(mine)

    # --- restore ---------------------------------------------------------------------------------------

    def restore_section(self) -> None:
        datasets = self.opts.datasets()
        for ds in datasets:
            if ds.name not in self.backups:  # the backup section did not run
                mine, _ = self.worker("backup", "--target", ds.name, "--slot", self.next_slot())
                self.backups[ds.name] = [mine]
            archive = self.opts.workdir / f"{ds.name}.dump"
            self.s3.download_file(BUCKET, self.backups[ds.name][0]["key"], str(archive))
            self.results["restore"][ds.name] = {"archive_bytes": archive.stat().st_size}
        jobs = str(self.opts.jobs)
        variants = [f"{v}_{n}" for v in ("limit", "peer", "lifeboat") for n in ("1", jobs)]
        for rep, ds, variant in measuring_order([(ds, variants) for ds in datasets], self.opts.reps):
            log(f"restore {ds.name} {variant} round {rep + 1}/{self.opts.reps}")
            self.results["restore"][ds.name].setdefault(variant, []).append(self.measure_restore(ds, variant))
        for ds in datasets:
            (self.opts.workdir / f"{ds.name}.dump").unlink(missing_ok=True)

    def measure_restore(self, ds: Dataset, variant: str) -> dict[str, Any]:
        db = f"restored_{ds.name.replace('-', '_')}"
        n = variant.rsplit("_", 1)[1]
        # the arguments chalicelib.logical.restore.pg_restore_args gives pg_restore
        pg_restore = [str(self.pg_bin / "pg_restore"), "--exit-on-error", "--no-password", f"--dbname={db}"]
        pg_restore += ["--single-transaction"] if n == "1" else [f"--jobs={n}"]
        try:
            if not variant.startswith("lifeboat"):  # pg-lifeboat creates its own database
                self.psql(f'CREATE DATABASE "{db}"')
            if variant.startswith("limit"):
                p = run_timed([*pg_restore, str(self.opts.workdir / f"{ds.name}.dump")], self.pg_env)
                return {"seconds": p.seconds, "cpu": p.cpu, "maxrss_kib": p.maxrss_kib}
            if variant.startswith("peer"):
                url = f"s3://{BUCKET}/{self.backups[ds.name][0]['key']}"
                script = self.peer_restore_script(url, pg_restore, n)
                p = run_timed(["bash", "-c", script], self.peer_env(self.opts.transports[0]))
                return {"seconds": p.seconds, "cpu": p.cpu}
            backup_id = self.backups[ds.name][0]["backup_id"]
            workdir = str(self.opts.workdir)
            args = ["--backup-id", backup_id, "--database", db, "--jobs", n, "--workdir", workdir]
            mine, _ = self.worker("restore", *args)
            return mine
        finally:
            self.psql(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
            self.psql("CHECKPOINT")

    def peer_restore_script(self, url: str, pg_restore: list[str], jobs: str) -> str:
        """The script users write instead: `aws s3 cp` piped into pg_restore (1 job), or to a local file that
        `pg_restore -j` then reads (a parallel restore needs a seekable archive)."""
        aws = self.aws_cli()
        if aws is None:
            raise RuntimeError("the restore peer is `aws s3 cp`: install the aws CLI (requirements-dev.txt, awscli)")
        if jobs == "1":
            download = shlex.join([aws, "s3", "cp", url, "-", "--only-show-errors"])
            return f"set -o pipefail; {download} | {shlex.join(pg_restore)}"
        local = str(self.opts.workdir / "peer-restore.dump")
        download = shlex.join([aws, "s3", "cp", url, local, "--only-show-errors"])
        return f"{download} && {shlex.join([*pg_restore, local])}; rc=$?; rm -f {shlex.quote(local)}; exit $rc"

    def peer_env(self, transport: str) -> dict[str, str]:
        """The peer scripts' environment: the S3 transport's and PostgreSQL's."""
        return {**self.env_for(transport), **self.pg_env}

    # --- compression -------------------------------------------------------------------------------------

    def compression_section(self) -> None:
        out = self.opts.workdir / "compression.dump"
        datasets = [ds for ds in self.opts.datasets() if ds.name != FIXED]
        for rep, ds, method in measuring_order([(ds, COMPRESSIONS) for ds in datasets], self.opts.reps):
            runs = self.results["compression"].setdefault(ds.name, {m: [] for m in COMPRESSIONS})[method]
            if runs and sum(x["seconds"] for x in runs) >= COMPRESSION_BUDGET:
                continue  # long runs vary little: two (or one) of them are enough
            log(f"compression {ds.name} {method} round {rep + 1}/{self.opts.reps}")
            with out.open("wb") as f:
                p = run_timed(self.pg_dump_cmd(ds.name, method), self.pg_env, stdout=f)
            runs.append({"seconds": p.seconds, "bytes": out.stat().st_size, "cpu": p.cpu})
            out.unlink()

    # --- cold start --------------------------------------------------------------------------------------

    def coldstart_section(self) -> None:
        reps = max(self.opts.reps, 5) if not self.opts.quick else self.opts.reps
        env = {**self.env_for(self.opts.transports[0]), "PYTHONDONTWRITEBYTECODE": "1"}
        for rep, _, mode in measuring_order([("coldstart", COLDSTART_MODES)], reps):
            log(f"cold start {mode} round {rep + 1}/{reps}")
            proc = run_timed([sys.executable, "-m", "bench.worker", "coldstart", "--mode", mode], env)
            result = dict(json.loads(proc.stdout.strip().splitlines()[-1]))
            result["process_seconds"] = proc.seconds
            self.results["coldstart"].setdefault(mode, []).append(result)
        code = "import app; from chalicelib import wiring; wiring.backup_services()"
        proc = run_timed([sys.executable, "-X", "importtime", "-c", code], env)
        self.results["coldstart"]["importtime"] = parse_importtime(proc.stderr)

    def profiles(self) -> None:
        profiles.run(self)
