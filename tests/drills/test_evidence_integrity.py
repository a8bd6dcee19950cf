"""Signed drill evidence (moto: a versioned bucket, the jobs table, a KMS HMAC key): a failed drill's evidence
overwritten with a "SUCCEEDED" version is still shown as FAILED (read at the recorded version); a table record that
also points at the forged version is shown UNVERIFIED, never SUCCEEDED; a record rewritten alone cannot turn the
signed document's FAILED into a success; the bucket copy is read at its first version."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3

from chalicelib import wiring
from chalicelib.config import Config
from chalicelib.drills.build import evidence_store
from chalicelib.drills.model import DrillRecord, new_drill_id
from chalicelib.drills.report import target_rows
from chalicelib.drills.views import list_drills
from devstack.local import LocalStack, target
from devstack.postgres import PostgresServer

SINCE = datetime(2026, 7, 1, tzinfo=UTC)
ALIAS = "alias/pg-lifeboat-test-evidence"


def signed_config(aws: LocalStack, pg: PostgresServer, write: Callable[..., Config]) -> Config:
    boto3.client("s3").put_bucket_versioning(Bucket=aws.bucket, VersioningConfiguration={"Status": "Enabled"})
    kms = boto3.client("kms")
    key = kms.create_key(KeySpec="HMAC_256", KeyUsage="GENERATE_VERIFY_MAC")["KeyMetadata"]["Arn"]
    kms.create_alias(AliasName=ALIAS, TargetKeyId=key)
    billing = target("billing", pg.port, aws.secret_arn)
    billing["restore_into"] = ["scratch"]
    billing["drill"] = {"schedule": "cron(0 6 ? * MON *)", "into": {"target": "scratch"}, "rto_seconds": 300}
    scratch = target("scratch", pg.port, aws.secret_arn, schedule=None)
    del scratch["logical"]
    return write([billing, scratch], signing_key_id=ALIAS)


def drill(rng: random.Random, week: int, failed: bool) -> DrillRecord:
    start = SINCE + timedelta(days=7 * week, hours=6)
    rec = DrillRecord(
        drill_id=new_drill_id(rng),
        target="billing",
        kind="logical",
        pick="latest",
        started_at=start,
        finished_at=start + timedelta(seconds=60),
        status="SUCCEEDED",
        recovery_seconds=60.0,
        rto_met=True,
    )
    return rec.failed("integrity_failed", "database.dump does not match its manifest's SHA-256") if failed else rec


def table_item(drill_id: str) -> dict[str, Any]:
    items = boto3.client("dynamodb").scan(TableName=str(wiring.settings().jobs_table))["Items"]
    return next(i for i in items if json.loads(i["doc"]["S"])["drill_id"] == drill_id)


def rewrite_record(drill_id: str, **changes: Any) -> None:
    """What any role with dynamodb:PutItem on the table can do."""
    item = table_item(drill_id)
    doc = json.loads(item["doc"]["S"]) | changes
    item["doc"] = {"S": json.dumps(doc)}
    item["status"] = {"S": doc["status"]}
    boto3.client("dynamodb").put_item(TableName=str(wiring.settings().jobs_table), Item=item)


def row(cfg: Config) -> dict[str, Any]:
    return target_rows(evidence_store(cfg).recent(since=SINCE), {"billing": 300}, SINCE)[0]


def test_forged_evidence_is_never_shown_as_a_success(
    aws: LocalStack, pg: PostgresServer, write_drill_config: Callable[..., Config]
) -> None:
    cfg = signed_config(aws, pg, write_drill_config)
    rng = random.Random(3)  # noqa: S311  # fixed ids
    evidence = evidence_store(cfg)
    ok = evidence.save(drill(rng, 0, failed=False))
    bad = evidence.save(drill(rng, 1, failed=True))
    assert bad.evidence_key and bad.evidence_version and ok.evidence_version
    document = json.loads(evidence.store.get_bytes(bad.evidence_key))
    assert document["signature"]["algorithm"] == "HMAC_SHA_256" and document["document"] == "drill-evidence"
    honest = row(cfg)
    assert (honest["succeeded"], honest["failed"], honest["unverified"]) == (1, 1, 0)

    # 1. The failed drill's evidence overwritten with a "SUCCEEDED" version (its signature block kept).
    forged = document | {"status": "SUCCEEDED", "error": None}
    put = evidence.store.put_bytes(bad.evidence_key, json.dumps(forged).encode(), content_type="application/json")
    assert (row(cfg)["succeeded"], row(cfg)["failed"]) == (1, 1)  # read at the recorded version: still FAILED
    from_bucket = {r.drill_id: r.status for r in evidence.from_bucket("billing")}
    assert from_bucket == {ok.drill_id: "SUCCEEDED", bad.drill_id: "FAILED"}  # its first version

    # 2. The record rewritten alone: the signed document still says FAILED.
    rewrite_record(bad.drill_id, status="SUCCEEDED", error=None)
    assert (row(cfg)["succeeded"], row(cfg)["failed"]) == (1, 1)

    # 3. The record pointed at the forged version: UNVERIFIED, listed with the failures, not the last success.
    rewrite_record(bad.drill_id, status="SUCCEEDED", error=None, evidence_version=put.version_id)
    shown = row(cfg)
    assert (shown["succeeded"], shown["failed"], shown["unverified"]) == (1, 0, 1)
    assert [f["code"] for f in shown["failures"]] == ["evidence_unverified"]
    assert "signature does not verify" in shown["failures"][0]["reason"]
    body = list_drills(cfg, evidence_store(cfg), "billing")
    assert body["last_success"]["drill_id"] == ok.drill_id
    assert [d["status"] for d in body["drills"]] == ["UNVERIFIED", "SUCCEEDED"]

    # 4. A record pointing at another drill's (valid, signed) evidence: UNVERIFIED too.
    rewrite_record(bad.drill_id, status="SUCCEEDED", evidence_key=ok.evidence_key, evidence_version=ok.evidence_version)
    assert row(cfg)["unverified"] == 1 and row(cfg)["succeeded"] == 1
