"""`make bench` at a tiny size, once: every section runs and the report holds every table.

The real run (`make bench`, ~1 GB, three repetitions) is not part of `make test`; this keeps its code
from rotting. It starts its own PostgreSQL 17, SeaweedFS and moto, like the benchmark does.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BUDGET_SECONDS = 60


def test_bench_runs_end_to_end_at_a_tiny_size(tmp_path: Path) -> None:
    out, raw = tmp_path / "BENCHMARKS.md", tmp_path / "bench.json"
    t0 = time.monotonic()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.run",
            "--small-mb",
            "5",
            "--large-mb",
            "10",
            "--random-mb",
            "5",
            "--reps",
            "1",
            "--out",
            str(out),
            "--json",
            str(raw),
            "--workdir",
            str(tmp_path / "work"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=BUDGET_SECONDS * 2,
        check=False,
    )
    elapsed = time.monotonic() - t0
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert elapsed < BUDGET_SECONDS, f"the smoke run took {elapsed:.0f} s"

    text = out.read_text()
    for heading in (
        "## Targets",
        "## 1. Datasets",
        "## 2. Backup throughput",
        "## 3. Memory of the backup process",
        "## 4. Compression",
        "## 5. Restore throughput",
        "## 6. Cold start",
        "## Method",
    ):
        assert heading in text, heading
    for dataset in ("pgbench-small", "pgbench-large", "random"):
        assert f"| {dataset} |" in text
    assert "cores (" in text and "GiB RAM" in text  # the machine it ran on
    assert text.strip() in proc.stdout  # printed and written alike

    results = json.loads(raw.read_text())
    for name, row in results["backup"].items():
        mine = row["lifeboat"][0]
        assert mine["bytes"] > 0 and mine["seconds"] > 0, name
        assert row["peer"][0]["bytes"] > 0, name  # the aws s3 cp peer really uploaded
        assert row["sink"][0]["bytes"] == mine["bytes"], name
    for name, row in results["restore"].items():
        assert all(run["verified"] for run in row["lifeboat_1"]), name
    assert set(results["compression"]["random"]) == {"gzip:1", "gzip:6", "lz4", "zstd:1", "zstd:3", "zstd:9"}
