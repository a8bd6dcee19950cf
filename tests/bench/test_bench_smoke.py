"""`make bench --quick`, once: every section runs over both transports and the report holds every table;
and the harness's pure parts (measuring order, statistics, the slow-S3 proxy's bucket, TLS settings).

The real run (`make bench`, datasets of seconds each, five rounds) is not part of `make test`; this keeps
its code from rotting. It starts its own PostgreSQL 17, SeaweedFS (HTTP and HTTPS) and moto, like the
benchmark does.
"""

from __future__ import annotations

import json
import math
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from bench.run import TINY, parse_args
from bench.seaweed import SeaweedServer
from bench.stats import interleave, measuring_order, net_throughput, paired_ratios, rotated, rss_flatness, spread
from bench.throttle import ThrottledProxy, TokenBucket
from chalicelib.config import Logical

REPO = Path(__file__).resolve().parents[2]
BUDGET_SECONDS = 240


def test_rounds_interleave_the_variants_and_rotate_their_order() -> None:
    assert interleave("ABC", 3) == [
        (0, "A"),
        (0, "B"),
        (0, "C"),
        (1, "B"),
        (1, "C"),
        (1, "A"),
        (2, "C"),
        (2, "A"),
        (2, "B"),
    ]
    assert [v for _, v in interleave("AB", 2, rotate=False)] == ["A", "B", "A", "B"]  # never AA BB
    assert rotated("ABC", 4) == ["B", "C", "A"]
    order = measuring_order([("small", "AB"), ("large", "AB")], 2)
    assert order == [
        (0, "small", "A"),
        (0, "small", "B"),
        (0, "large", "A"),
        (0, "large", "B"),
        (1, "small", "B"),
        (1, "small", "A"),
        (1, "large", "B"),
        (1, "large", "A"),
    ]
    with pytest.raises(ValueError, match="at least 1"):
        interleave("AB", 0)


def test_rows_report_the_median_with_its_spread() -> None:
    s = spread([3.0, 1.0, 2.0, 10.0, 2.5])
    assert (s.n, s.median, s.low, s.high) == (5, 2.5, 1.0, 10.0)
    assert (s.q1, s.q3) == (2.0, 3.0)
    assert s.text(unit=" s") == "2.50 s (1.00-10.00, n=5)"
    assert spread([4.0]).text() == "4.00 (n=1)"
    assert spread([]).text() == "n/a" and spread([math.nan]).n == 0
    assert paired_ratios([2.0, 3.0], [1.0, 0.0]) == [2.0]  # per round; a zero time is skipped


def test_fixed_costs_come_off_throughput_and_rss_flatness_is_a_ratio() -> None:
    assert net_throughput(300e6, 4.0, 1.0) == 100e6
    assert math.isnan(net_throughput(300e6, 1.05, 1.0))  # mostly fixed cost: no throughput to speak of
    assert rss_flatness(110 * 1024, 100 * 1024) == pytest.approx(1.1)


def test_the_slow_s3_bucket_spaces_bytes_at_its_rate() -> None:
    bucket = TokenBucket(rate=1000, burst=100)
    assert bucket.delay(100, now=0.0) == 0  # the burst
    assert bucket.delay(500, now=0.0) == pytest.approx(0.5)
    # 1 s refills the 500 owed and the burst (capped at 100): the next 500 wait for 400 more
    assert bucket.delay(500, now=1.0) == pytest.approx(0.4)
    with pytest.raises(ValueError, match="positive"):
        TokenBucket(rate=0, burst=1).delay(1, now=0.0)


def test_the_throttling_proxy_caps_what_is_sent_through_it() -> None:
    received = bytearray()
    server = socket.create_server(("127.0.0.1", 0))

    def sink() -> None:
        conn, _ = server.accept()
        while data := conn.recv(65536):
            received.extend(data)
        conn.close()

    thread = threading.Thread(target=sink, daemon=True)
    thread.start()
    with ThrottledProxy(server.getsockname()[1], bytes_per_second=2_000_000) as proxy:
        t0 = time.monotonic()
        with socket.create_connection(("127.0.0.1", proxy.port)) as client:
            client.sendall(b"x" * 1_200_000)  # 0.2 MB of burst, then 1 MB at 2 MB/s
            client.shutdown(socket.SHUT_WR)
            thread.join(timeout=10)
        elapsed = time.monotonic() - t0
    server.close()
    assert len(received) == 1_200_000
    assert 0.45 < elapsed < 3, elapsed


def test_seaweed_serves_https_with_the_local_ca_when_given_one(tmp_path: Path) -> None:
    weed = SeaweedServer(base_dir=tmp_path, tls_dir=tmp_path / "certs")
    flags = weed.command()
    assert f"-s3.port.https={weed.https_port}" in flags
    assert f"-s3.cert.file={tmp_path / 'certs' / 'server.crt'}" in flags
    assert weed.env("tls") == {
        "AWS_ENDPOINT_URL_S3": f"https://127.0.0.1:{weed.https_port}",
        "AWS_CA_BUNDLE": str(tmp_path / "certs" / "ca.crt"),
    }
    assert weed.env("plain") == {"AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{weed.s3_port}"}
    with pytest.raises(ValueError, match="plain or tls"):
        weed.env("https")
    plain = SeaweedServer(base_dir=tmp_path / "plain")
    assert not any(flag.startswith("-s3.port.https") for flag in plain.command())
    with pytest.raises(RuntimeError, match="without tls_dir"):
        plain.env("tls")


def test_options_default_to_tls_and_five_rounds_and_quick_shrinks_everything(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("BENCH_SMALL_MB", "BENCH_LARGE_MB", "BENCH_RANDOM_MB", "BENCH_REPS"):
        monkeypatch.delenv(name, raising=False)
    opts = parse_args([])
    assert (opts.transports, opts.reps, opts.big) == (("tls",), 5, False)
    assert opts.datasets()[0] == TINY
    quick = parse_args(["--quick", "--transport", "both", "--reps", "9"])
    assert quick.transports == ("tls", "plain") and quick.reps == 2
    assert max(ds.target_mb for ds in quick.datasets() + quick.big_datasets()) < 50
    assert opts.pg_cache is not None and parse_args(["--pg-cache", "none"]).pg_cache is None


def test_bench_runs_end_to_end_at_a_tiny_size(tmp_path: Path) -> None:
    out, raw = tmp_path / "BENCHMARKS.md", tmp_path / "bench.json"
    t0 = time.monotonic()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.run",
            "--quick",
            "--reps",
            "1",
            "--transport",
            "both",
            "--out",
            str(out),
            "--json",
            str(raw),
            "--workdir",
            str(tmp_path / "work"),
            "--pg-cache",
            "none",  # a throwaway server: the server's account cannot read pytest's private tmp_path
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=290,  # under pytest-timeout (300 s): a hung run fails with its output
        check=False,
    )
    elapsed = time.monotonic() - t0
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert elapsed < BUDGET_SECONDS, f"the smoke run took {elapsed:.0f} s"

    text = out.read_text()
    for heading in (
        "## Targets",
        "## 1. Datasets",
        "## 2. Fixed costs",
        "## 3. Backup throughput",
        "Plain HTTP against HTTPS",
        "## 4. Memory of the backup process",
        "## 5. Compression",
        "## 6. Restore throughput",
        "## 7. Cold start",
        "## Method",
    ):
        assert heading in text, heading
    for dataset in ("pgbench-small", "pgbench-large", "random", "random, slow S3"):
        assert f"| {dataset}" in text, dataset
    assert "cores (" in text and "GiB RAM" in text  # the machine it ran on
    assert f"`--compress={Logical.model_fields['compression'].default}`" in text  # the product's real default
    assert "--quick" in text  # says its numbers mean nothing
    assert text.strip() in proc.stdout  # printed and written alike

    results = json.loads(raw.read_text())
    assert {"boto3", "boto3-clients", "app", "app-backup", "app-api"} <= set(results["coldstart"])
    assert "| first call (init + the handler's settings and clients) vs a bare handler's |" in text
    signing = results["options"]["payload_signing"]
    assert "UNSIGNED-PAYLOAD" in signing["tls"], signing  # as against AWS
    assert "UNSIGNED" not in signing["plain"], signing
    for name, row in results["backup"].items():
        mine = row["lifeboat"][0]
        assert mine["bytes"] > 0 and mine["seconds"] > 0 and mine["cpu_call"] > 0, name
        assert row["lifeboat_plain"][0]["bytes"] > 0, name  # the plain transport really backed up too
        assert row["peer"][0]["bytes"] > 0, name  # the peer really uploaded
        if name != TINY.name:
            assert row["sink"][0]["bytes"] == mine["bytes"], name
    assert results["slow_s3"] and results["slow_s3"][0]["hwm_kib"] > 0
    for name, row in results["restore"].items():
        assert all(run["verified"] for run in row["lifeboat_1"]), name
    assert set(results["compression"]["random"]) == {"gzip:1", "gzip:6", "lz4", "zstd:1", "zstd:3", "zstd:9"}


def test_reuse_takes_the_sections_not_measured_now_and_says_from_when() -> None:
    from bench.run import reuse_sections

    now = {
        "machine": {"date": "new", "commit": "b"},
        "options": {},
        "datasets": {"tiny": 1},
        "coldstart": {"app": 2},
        "backup": {},
        "slow_s3": [],
        "compression": {},
        "restore": {},
        "big": {},
    }
    earlier = {
        "machine": {"date": "old", "commit": "a"},
        "options": {"peer": "aws"},
        "datasets": {"big": 9},
        "coldstart": {"app": 1},
        "backup": {"x": 1},
        "slow_s3": [1],
        "restore": {},
        "big": {"y": 2},
    }
    merged = reuse_sections(now, earlier, {"coldstart"})
    assert merged["coldstart"] == {"app": 2} and merged["backup"] == {"x": 1} and merged["slow_s3"] == [1]
    assert merged["big"] == {"y": 2} and merged["datasets"] == {"big": 9, "tiny": 1}
    assert merged["reused"] == {"backup": {"date": "old", "commit": "a"}, "big": {"date": "old", "commit": "a"}}
    assert merged["options"]["peer"] == "aws"
