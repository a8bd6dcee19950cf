"""The report's tables, one function per section: Markdown lines from the raw results of bench.run.

Every timing cell is a median with its min-max over the rounds (bench.stats.Spread); ratios are the
median of the per-round ratios (the two runs of a round are close in time) with their min-max.
"""

from __future__ import annotations

import math
from typing import Any

from bench.stats import Spread, cpu_ms_per_mb, net_throughput, paired_ratios, rss_flatness, spread

MB = 1_000_000
MiB = 1024 * 1024
FIXED = "tiny"  # bench.sections.FIXED: the near-empty dataset whose runs are fixed costs
TARGETS = {
    "backup_vs_limit": 0.95,
    "backup_vs_peer": 1.0,
    "rss_mb": 150,
    "rss_ratio": 1.1,
    "restore_vs_limit": 0.90,
    "restore_vs_peer": 1.0,
    "coldstart_ratio": 2.0,
}


def values(runs: list[dict[str, Any]], key: str = "seconds") -> list[float]:
    return [float(r[key]) for r in runs if r.get(key) is not None]


def sp(runs: list[dict[str, Any]], key: str = "seconds") -> Spread:
    return spread(values(runs, key))


def med(runs: list[dict[str, Any]], key: str = "seconds") -> float:
    return sp(runs, key).median


def mb(n: float) -> str:
    return f"{n / MB:,.1f}"


def verdict(ok: bool) -> str:
    return "met" if ok else "**missed**"


def ratio_of(row: dict[str, Any], slower: str, faster: str) -> Spread:
    """How fast `faster` runs relative to `slower`, per round: time(slower) / time(faster)."""
    return spread(paired_ratios(values(row.get(slower, [])), values(row.get(faster, []))))


def timing(runs: list[dict[str, Any]], db_bytes: float, fixed: float) -> str:
    """ "3.12 s (2.90-3.40, n=5), 385 MB/s, net 410 MB/s": median time, database MB/s, and MB/s once the
    fixed cost of the same variant (its median on the near-empty database) is taken off."""
    s = sp(runs)
    if s.n == 0:
        return "n/a"
    net = net_throughput(db_bytes, s.median, fixed) / MB
    net_text = f", net {net:,.0f} MB/s" if not math.isnan(net) else ""
    return f"{s.text(unit=' s')}, {db_bytes / MB / s.median:,.0f} MB/s{net_text}"


def fixed_cost(r: dict[str, Any], section: str, variant: str) -> float:
    return med(r[section].get(FIXED, {}).get(variant, []))


def measured(r: dict[str, Any], section: str) -> dict[str, dict[str, Any]]:
    """A section's rows without the fixed-cost dataset's."""
    return {k: v for k, v in r[section].items() if k != FIXED}


def fixed_rows(r: dict[str, Any]) -> list[str]:
    """What a run costs before its first byte: the near-empty database, each variant's median."""
    b, rs = r["backup"].get(FIXED, {}), r["restore"].get(FIXED, {})
    jobs = r["options"]["jobs"]
    lines = [
        "| what | pg_dump / pg_restore alone | pg-lifeboat | pg-lifeboat's own fixed cost |",
        "|---|---:|---:|---:|",
    ]
    pairs = [("backup", b, "limit", "lifeboat"), ("restore, 1 job", rs, "limit_1", "lifeboat_1")]
    pairs.append((f"restore, {jobs} jobs", rs, f"limit_{jobs}", f"lifeboat_{jobs}"))
    for label, row, limit, mine in pairs:
        if row.get(limit) and row.get(mine):
            extra = med(row[mine]) - med(row[limit])
            lines.append(
                f"| {label} | {sp(row[limit]).text(unit=' s')} | {sp(row[mine]).text(unit=' s')} | {extra:+.2f} s |"
            )
    if b.get("peer"):
        lines.append(f"| `pg_dump \\| upload` (peer) | {sp(b['peer']).text(unit=' s')} | | |")
    return lines


def backup_rows(r: dict[str, Any]) -> tuple[list[str], dict[str, dict[str, Spread]]]:
    lines = [
        "| dataset | DB MB | dump MB | pg_dump → /dev/null (limit) | peer: `pg_dump \\| upload` | pg-lifeboat |"
        " vs limit | vs peer |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    more = [
        "| dataset | pg-lifeboat, `row_counts: false` | vs limit | pg-lifeboat, `row_counts_mode: serial` |"
        " vs limit | limit while the S3 server ingests the same bytes | S3 sink ceiling: same bytes, free stream |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    stats: dict[str, dict[str, Spread]] = {}
    for name, row in measured(r, "backup").items():
        db, dump = r["datasets"][name]["bytes"], med(row["lifeboat"], "bytes")
        vs_limit, vs_peer = ratio_of(row, "limit", "lifeboat"), ratio_of(row, "peer", "lifeboat")
        nocount = ratio_of(row, "limit", "lifeboat_nocount")
        serial = ratio_of(row, "limit", "lifeboat_serialcount")
        stats[name] = {"vs_limit": vs_limit, "vs_peer": vs_peer, "nocount": nocount, "serial": serial}
        cells = [timing(row[v], db, fixed_cost(r, "backup", v)) for v in ("limit", "peer", "lifeboat")]
        lines.append(
            f"| {name} | {mb(db)} | {mb(dump)} | {' | '.join(cells)} |"
            f" {vs_limit.text(unit='x')} {verdict(vs_limit.median >= TARGETS['backup_vs_limit'])} |"
            f" {vs_peer.text(unit='x')} {verdict(vs_peer.median >= TARGETS['backup_vs_peer'])} |"
        )
        busy = row.get("limit_s3_busy", [])
        busy_cell = f"{sp(busy).text(unit=' s')}" if busy else "not measured (one PutObject)"
        sink = sp(row.get("sink", []))
        sink_cell = f"{sink.text(unit=' s')}, {dump / MB / sink.median:,.0f} MB/s of dump" if sink.n else "n/a"
        more.append(
            f"| {name} | {sp(row.get('lifeboat_nocount', [])).text(unit=' s')} | {nocount.text(unit='x')} |"
            f" {sp(row.get('lifeboat_serialcount', [])).text(unit=' s')} | {serial.text(unit='x')} |"
            f" {busy_cell} | {sink_cell} |"
        )
    return [*lines, "", "What the gap is made of:", "", *more], stats


def transport_rows(r: dict[str, Any]) -> list[str]:
    """--transport both: the same backups over HTTP and HTTPS (the main tables are the first transport's)."""
    others = r["options"]["transports"][1:]
    if not others:
        return []
    main = r["options"]["transports"][0]
    signing = r["options"].get("payload_signing", {})
    lines = [
        f"| dataset | transport | UploadPart payload | peer | pg-lifeboat | Python CPU per dump MB | vs {main} |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for name, row in measured(r, "backup").items():
        for t, suffix in [(main, ""), *((o, f"_{o}") for o in others)]:
            mine = row.get("lifeboat" + suffix, [])
            cpu = cpu_ms_per_mb(med(mine, "cpu_call"), med(mine, "bytes"))
            vs = ratio_of(row, "lifeboat" + suffix, "lifeboat").text(unit="x") if suffix else ""
            lines.append(
                f"| {name} | {t} | {signing.get(t, '?')} | {sp(row.get('peer' + suffix, [])).text(unit=' s')} |"
                f" {sp(mine).text(unit=' s')} | {cpu:.1f} ms | {vs} |"
            )
    return lines


def cpu_rows(r: dict[str, Any]) -> tuple[list[str], dict[str, float]]:
    lines = [
        "| dataset | dump MB | Python CPU of the backup call | per dump MB | net of the fixed CPU, per dump MB |"
        " limit: pg_dump + server CPU | pg-lifeboat: pg_dump + server | S3 server | cores busy (pg-lifeboat) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    per_mb: dict[str, float] = {}
    fixed_cpu = med(r["backup"].get(FIXED, {}).get("lifeboat", []), "cpu_call")
    for name, row in measured(r, "backup").items():
        lim, mine = row["limit"], row["lifeboat"]
        call, dump = sp(mine, "cpu_call"), med(mine, "bytes")
        # the fixed part (claims, connections, row counts, manifest) would swamp a small dump's per-MB cost
        per_mb[name] = cpu_ms_per_mb(call.median - fixed_cpu, dump)
        total = med(mine, "cpu_children") + med(mine, "pg_cpu") + call.median + med(mine, "s3_cpu")
        lines.append(
            f"| {name} | {mb(dump)} | {call.text(unit=' s')} | {cpu_ms_per_mb(call.median, dump):.1f} ms |"
            f" {per_mb[name]:.1f} ms |"
            f" {med(lim, 'cpu'):.2f} + {med(lim, 'pg_cpu'):.2f} s | {med(mine, 'cpu_children'):.2f} +"
            f" {med(mine, 'pg_cpu'):.2f} s | {med(mine, 's3_cpu'):.2f} s | {total / med(mine):.2f} |"
        )
    return lines, per_mb


def memory_rows(r: dict[str, Any]) -> tuple[list[str], float]:
    """Peak RSS of the backup process per dataset, and with a slow S3; the worst of them in MB."""
    part = r["options"]["part_mib"] * MiB
    lines = [
        "| run | dump MB | S3 requests | RSS before the backup | peak RSS (median, min-max) | pg_dump peak RSS |"
        " ≤ 150 MB |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    rows = {name: row["lifeboat"] for name, row in measured(r, "backup").items()}
    if r.get("slow_s3"):
        rows[f"random, slow S3 ({r['options']['slow_s3_mbps']:g} MB/s)"] = r["slow_s3"]
    worst = 0.0
    for name, runs in rows.items():
        dump = med(runs, "bytes")
        parts = "1 PUT" if dump < part else f"~{math.ceil(dump / part)} parts"
        peak = spread([v / 1024 for v in values(runs, "hwm_kib")])
        worst = max(worst, peak.high * MiB / MB)
        lines.append(
            f"| {name} | {mb(dump)} | {parts} | {med(runs, 'rss_before_kib') / 1024:.0f} MiB |"
            f" {peak.text('{:.0f}', ' MiB')} | {med(runs, 'pg_dump_hwm_kib') / 1024:.0f} MiB |"
            f" {verdict(peak.high * MiB / MB <= TARGETS['rss_mb'])} |"
        )
    return lines, worst


def big_rows(r: dict[str, Any]) -> tuple[list[str], float]:
    """--big: peak RSS of the ~5 GB backup over that of the ~200 MB one (the worst run of each)."""
    big = r.get("big") or {}
    if len(big) < 2:
        return [], math.nan
    (base_name, base), (big_name, top) = list(big.items())[:2]
    lines = ["| dataset | dump MB | time | peak RSS (median, min-max) |", "|---|---:|---:|---:|"]
    for name, runs in ((base_name, base), (big_name, top)):
        peak = spread([v / 1024 for v in values(runs, "hwm_kib")])
        lines.append(
            f"| {name} | {mb(med(runs, 'bytes'))} | {sp(runs).text(unit=' s')} | {peak.text('{:.0f}', ' MiB')} |"
        )
    flat = rss_flatness(max(values(top, "hwm_kib")), max(values(base, "hwm_kib")))
    return lines, flat


def compression_rows(r: dict[str, Any]) -> list[str]:
    names = list(r["compression"])
    head = "| method | " + " | ".join(f"{n}: time | {n}: size | {n}: DB/dump" for n in names) + " |"
    lines = [head, "|---|" + "---:|---:|---:|" * len(names)]
    methods = list(next(iter(r["compression"].values()))) if names else []
    for method in methods:
        cells = []
        for n in names:
            runs = r["compression"][n][method]
            size = med(runs, "bytes")
            cells.append(f"{sp(runs).text(unit=' s')} | {mb(size)} MB | {r['datasets'][n]['bytes'] / size:,.1f}")
        label = f"**{method}** (default)" if method == r["options"].get("compression") else method
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def restore_rows(r: dict[str, Any]) -> tuple[list[str], dict[str, Spread], dict[str, Spread]]:
    """One row per dataset and job count: pg_restore from a local file (the limit), the peer script (`aws s3 cp`
    into pg_restore), pg-lifeboat; and the ratios against the limit and against the peer."""
    jobs = r["options"]["jobs"]
    lines = [
        "| dataset | archive MB | jobs | pg_restore from a file (limit) | peer: `aws s3 cp` + `pg_restore` |"
        " pg-lifeboat | vs limit | vs peer |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    vs_limit: dict[str, Spread] = {}
    vs_peer: dict[str, Spread] = {}
    for name, row in measured(r, "restore").items():
        db = r["datasets"][name]["bytes"]
        for n in ("1", str(jobs)):
            limit, peer, mine = f"limit_{n}", f"peer_{n}", f"lifeboat_{n}"
            rl = vs_limit[f"{name} j{n}"] = ratio_of(row, limit, mine)
            rp = vs_peer[f"{name} j{n}"] = ratio_of(row, peer, mine)
            cells = [timing(row.get(v, []), db, fixed_cost(r, "restore", v)) for v in (limit, peer, mine)]
            lines.append(
                f"| {name} | {mb(row['archive_bytes'])} | {n} | {' | '.join(cells)} |"
                f" {rl.text(unit='x')} {verdict(rl.median >= TARGETS['restore_vs_limit'])} |"
                f" {rp.text(unit='x')} {verdict(rp.median >= TARGETS['restore_vs_peer'])} |"
            )
    return lines, vs_limit, vs_peer


def coldstart_rows(r: dict[str, Any]) -> tuple[list[str], dict[str, float]]:
    """The table, and the ratios the targets name: `import app` (every function's init) against `import boto3`,
    and each handler's first call against a handler that builds the same clients and nothing else."""
    cs = r["coldstart"]
    labels = {
        "boto3": ("`import boto3` (baseline)", "boto3"),
        "boto3-client": ("`import boto3; boto3.client('s3')`", "boto3"),
        "boto3-clients": ("`import boto3` + S3 and DynamoDB clients (a bare handler's first call)", "boto3"),
        "app": ("`import app` (init: what every function pays before its first event)", "boto3"),
        "app-backup": ("`import app` + `wiring.backup_services()` (the backup handler's first call)", "boto3-clients"),
        "app-api": ("`import app` + `wiring.api_services()` (the API handler's first call)", "boto3-clients"),
    }
    lines = [
        "| what | in-process time (median, min-max) | process wall time | vs | ratio | peak RSS |",
        "|---|---:|---:|---|---:|---:|",
    ]
    ratios: dict[str, float] = {}
    for mode, (label, against) in labels.items():
        runs = cs.get(mode)
        if not runs:
            continue
        ms = spread([v * 1000 for v in values(runs)])
        ratios[mode] = med(runs) / med(cs[against])
        lines.append(
            f"| {label} | {ms.text('{:.0f}', ' ms')} | {med(runs, 'process_seconds') * 1000:.0f} ms |"
            f" {'`import boto3`' if against == 'boto3' else 'bare handler'} | {ratios[mode]:.2f}x |"
            f" {med(runs, 'hwm_kib') / 1024:.0f} MiB |"
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
        for i in range(max(len(it["first_level"]), len(it["packages"]))):
            a = it["first_level"][i] if i < len(it["first_level"]) else ("", None)
            b = it["packages"][i] if i < len(it["packages"]) else ("", None)
            a_ms = f"{a[1]:.0f} ms" if a[1] is not None else ""
            b_ms = f"{b[1]:.0f} ms" if b[1] is not None else ""
            lines.append(f"| {('`' + a[0] + '`') if a[0] else ''} | {a_ms} | | {b[0]} | {b_ms} |")
    return lines, ratios
