"""`lifeboat check [TARGET]`: the pre-flight an operator runs before the first night (like `pgbackrest check`).

One line per check, each failure with what to fix: the configuration loads; the bucket stores a tagged, encrypted
test object and its policy refuses what it should; its lifecycle rules are what the configuration implies (one
retention truth); the jobs table and the queues exist; and, per target, the secret resolves, the database accepts
the login over the configured TLS, a pg_dump suits the server's major and the role can read every table it dumps.
The services are the handlers' own (chalicelib.wiring). Exit code 0: all passed, 1: a check failed, 2: the
configuration (or the target asked for) is unusable, so nothing else was checked. The command line's runner is
chalicelib.cli.operations.run_check.
"""

from __future__ import annotations

from typing import Any

from chalicelib import wiring
from chalicelib.config import Config, Target
from chalicelib.errors import ConfigError, NotFoundError
from chalicelib.operator.check_database import check_target
from chalicelib.operator.check_model import CheckResult, CheckServices, Report, failed, passed, skipped
from chalicelib.operator.check_storage import (
    check_bucket,
    check_bucket_policy,
    check_jobs_table,
    check_keys,
    check_lifecycle,
    check_queues,
)

__all__ = ["CheckResult", "Report", "render_json", "render_text", "run_checks"]


def services_for(cfg: Config) -> CheckServices:
    """The handlers' services (chalicelib.wiring), and clients for the table and queues that are configured."""
    env = wiring.settings()
    queues = {
        "backup queue": ("LIFEBOAT_BACKUP_QUEUE_URL", env.backup_queue_url),
        "restore queue": ("LIFEBOAT_RESTORE_QUEUE_URL", env.restore_queue_url),
    }
    return CheckServices(
        config=cfg,
        s3=wiring.client("s3"),
        store=wiring.store(cfg),
        credentials=wiring.credentials(),
        toolbox=wiring.toolbox(),
        jobs_table=env.jobs_table,
        dynamodb=wiring.client("dynamodb") if env.jobs_table else None,
        queues=queues,
        sqs=wiring.client("sqs") if any(url for _, url in queues.values()) else None,
    )


def _load(target: str | None) -> tuple[Config, list[Target], CheckResult] | Report:
    """The configuration, the targets to check and the configuration's line; or the report saying why not."""
    try:
        source = wiring.settings().config
        cfg = wiring.load_config()
    except ConfigError as exc:
        fix = "correct it (`lifeboat validate` shows every problem), or point LIFEBOAT_CONFIG/--config at the right one"
        return Report([failed("configuration", str(exc), fix)], unusable=True)
    try:
        chosen = cfg.targets if target is None else [cfg.target(target)]
    except NotFoundError as exc:
        return Report([failed("target", str(exc), "name a target of the configuration, or none for all")], True)
    line = passed("configuration", f"{len(cfg.targets)} target(s) from {source}, bucket {cfg.settings.bucket}")
    return cfg, chosen, line


def run_checks(target: str | None = None, services: CheckServices | None = None) -> Report:
    """Every check, for one target (by name) or all of them. `services`: given by tests; else built from the
    configuration the environment (or the command line) names, with chalicelib.wiring."""
    loaded = _load(target)
    if isinstance(loaded, Report):
        return loaded
    cfg, targets, results = loaded[0], loaded[1], [loaded[2]]
    try:
        services = services or services_for(cfg)
    except ConfigError as exc:
        return Report([*results, failed("aws", str(exc), "set the region (and profile) the message names")], True)
    key, refusal_key = check_keys(services)
    bucket = check_bucket(services, key)
    results.append(bucket)
    if bucket.ok:
        results += [check_bucket_policy(services, refusal_key), check_lifecycle(services)]
    else:
        results += [skipped(name, "needs the bucket above") for name in ("bucket policy", "lifecycle")]
    results.append(check_jobs_table(services))
    results += check_queues(services)
    if not targets:
        results.append(failed("targets", "the configuration has no target", "add one (README, Configuration)"))
    for chosen in targets:
        results += check_target(chosen, services.credentials, services.toolbox)
    return Report(results)


# --- output --------------------------------------------------------------------------------------------------------


def render_text(report: Report) -> str:
    """One line per check (`ok`/`FAIL`/`skip`, name, detail), the fix on the next line, then a summary."""
    width = max((len(r.label) for r in report.results), default=0)
    lines = []
    for r in report.results:
        lines.append(f"{r.status:<4}  {r.label:<{width}}  {r.detail}")
        if not r.ok and r.fix:
            lines.append(f"{'':<4}  {'':<{width}}  fix: {r.fix}")
    failures = sum(not r.ok for r in report.results)
    ran = sum(not r.skipped for r in report.results)
    if report.unusable:
        lines.append("check: the configuration is unusable; nothing else was checked")
    elif failures:
        lines.append(f"check: {failures} of {ran} checks FAILED")
    else:
        lines.append(f"check: all {ran} checks passed" + _skips(report))
    return "\n".join(lines) + "\n"


def _skips(report: Report) -> str:
    count = sum(r.skipped for r in report.results)
    return f" ({count} skipped)" if count else ""


def render_json(report: Report) -> dict[str, Any]:
    """{"status": "OK"|"FAILED", "checks": [...]}; a failure also gets the common error object (schemas/cli.json)."""
    doc: dict[str, Any] = {
        "status": "OK" if report.ok else "FAILED",
        "checks": [r.to_json() for r in report.results],
    }
    if report.unusable:
        first = report.results[0]
        doc["error"] = {"code": ConfigError.code, "message": first.detail}
    elif not report.ok:
        bad = [r.label for r in report.results if not r.ok]
        doc["error"] = {"code": "check_failed", "message": f"{len(bad)} check(s) FAILED: {', '.join(bad)}"}
    return doc
