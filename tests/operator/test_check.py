"""`lifeboat check` against moto (server mode) and a real PostgreSQL: a healthy setup passes every check, and each
broken piece (port, password, secret, bucket, host, database, an unreadable table, the lifecycle) is its own failed
line with a fix, the checks that need it skipped rather than failed again."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import boto3
import pytest

from chalicelib.cli import main
from chalicelib.config import Settings
from chalicelib.logical.catalog import Layout
from chalicelib.operator.check_storage import REFUSAL_SUFFIX, lifecycle_drift
from chalicelib.scheduling.retention import lifecycle_rules
from devstack.local import LocalStack, target, write_config
from devstack.postgres import PostgresServer, free_port
from devstack.sample import BACKUP_PASSWORD

READER = "check_reader"
READER_PASSWORD = "Check-reader-pw-1"
READER_DB = "checkdb"


def check(*argv: str) -> tuple[int, Any]:
    """`lifeboat check ARGV` (chalicelib.cli.main); the JSON document with --json, else the text."""
    out = io.StringIO()
    code = main(["check", *argv], out=out)
    return code, json.loads(out.getvalue()) if "--json" in argv else out.getvalue()


def by_line(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {(f"{c['target']}: " if c["target"] else "") + c["name"]: c for c in doc["checks"]}


def failures(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {line: c for line, c in by_line(doc).items() if c["status"] == "FAIL"}


def apply_lifecycle(bucket: str, **settings: Any) -> None:
    s = Settings(bucket=bucket, **settings)
    rules: Any = lifecycle_rules(s, Layout(s.prefix).failed_prefix)
    boto3.client("s3").put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={"Rules": rules})


def configure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bucket: str, targets: list[dict[str, Any]], **settings: Any
) -> None:
    path = write_config(tmp_path / "lifeboat.json", bucket, targets, **settings)
    monkeypatch.setenv("LIFEBOAT_CONFIG", str(path))


def shop(pg: PostgresServer, aws: LocalStack, **connection: Any) -> dict[str, Any]:
    t = target("shop", pg.port, aws.secret_arn, globals=True)
    t["connection"].update(connection)
    return t


def test_a_healthy_setup_passes_every_check(
    aws: LocalStack, pg: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = boto3.client("kms").create_key()["KeyMetadata"]["Arn"]
    s3 = boto3.client("s3")
    # The stack's statement refuses puts naming another encryption (the condition); moto ignores conditions, so the
    # statement is scoped to the probe's key to let it refuse only that put, as AWS would.
    deny = {
        "Effect": "Deny",
        "Principal": "*",
        "Action": "s3:PutObject",
        "Resource": f"arn:aws:s3:::{aws.bucket}/*{REFUSAL_SUFFIX}",
        "Condition": {"StringNotEquals": {"s3:x-amz-server-side-encryption": "aws:kms"}},
    }
    s3.put_bucket_policy(Bucket=aws.bucket, Policy=json.dumps({"Version": "2012-10-17", "Statement": [deny]}))
    apply_lifecycle(aws.bucket, kms_key_id=key, prefix="pg/")
    configure(tmp_path, monkeypatch, aws.bucket, [shop(pg, aws)], kms_key_id=key, prefix="pg/")

    code, doc = check("--json")

    assert (code, doc["status"], failures(doc)) == (0, "OK", {})
    lines = by_line(doc)
    expected = {"configuration", "bucket", "bucket policy", "lifecycle", "jobs table", "backup queue", "restore queue"}
    expected |= {f"shop: {n}" for n in ("secret", "login", "pg_dump", "pg_dumpall", "table privileges")}
    assert set(lines) == expected
    assert {c["status"] for c in doc["checks"]} == {"ok"}  # nothing skipped: every piece is there
    assert "aws:kms" in lines["bucket"]["detail"] and lines["bucket"]["detail"].endswith("deleted")
    assert "over TLS" in lines["shop: login"]["detail"] and "certificate checked" in lines["shop: login"]["detail"]
    assert f"PostgreSQL {pg.major}" in lines["shop: login"]["detail"]
    assert "can read all" in lines["shop: table privileges"]["detail"]
    assert "refused" in lines["bucket policy"]["detail"]
    assert "Contents" not in s3.list_objects_v2(Bucket=aws.bucket, Prefix="pg/check/")  # the test objects are gone

    code, text = check("shop")  # the human form: one line per check, all ok
    assert code == 0
    assert [line.split()[0] for line in text.splitlines()[:-1]] == ["ok"] * len(expected)
    assert text.splitlines()[-1] == f"check: all {len(expected)} checks passed"


def broken_port(pg: PostgresServer, aws: LocalStack) -> dict[str, Any]:
    return shop(pg, aws, port=free_port())


def broken_password(pg: PostgresServer, aws: LocalStack) -> dict[str, Any]:
    arn = boto3.client("secretsmanager").create_secret(Name="lifeboat/wrong", SecretString="not-the-password")["ARN"]
    return shop(pg, aws, password_secret=arn)


def missing_secret(pg: PostgresServer, aws: LocalStack) -> dict[str, Any]:
    return shop(pg, aws, password_secret="lifeboat/nope")


def unknown_host(pg: PostgresServer, aws: LocalStack) -> dict[str, Any]:
    return shop(pg, aws, host="db.lifeboat-check.invalid")


def missing_database(pg: PostgresServer, aws: LocalStack) -> dict[str, Any]:
    return shop(pg, aws, database="nosuchdb")


@pytest.mark.parametrize(
    ("broken", "line", "detail", "fix"),
    [
        (broken_port, "shop: login", "nothing accepts connections at 127.0.0.1:", "check connection.port"),
        (broken_password, "shop: login", "refused the credentials for user lifeboat_backup", "'s password in"),
        (missing_secret, "shop: secret", "secret 'lifeboat/nope' does not exist", "create-secret --name lifeboat/nope"),
        (unknown_host, "shop: login", "unknown host db.lifeboat-check.invalid", "check connection.host"),
        (missing_database, "shop: login", "database nosuchdb does not exist", "set connection.database"),
    ],
    ids=["wrong-port", "wrong-password", "missing-secret", "unknown-host", "missing-database"],
)
def test_each_broken_connection_is_its_own_failed_line(
    aws: LocalStack,
    pg: PostgresServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    broken: Any,
    line: str,
    detail: str,
    fix: str,
) -> None:
    apply_lifecycle(aws.bucket)
    configure(tmp_path, monkeypatch, aws.bucket, [broken(pg, aws)])

    code, doc = check("--json")

    assert (code, doc["status"]) == (1, "FAILED")
    assert list(failures(doc)) == [line]
    failure = failures(doc)[line]
    assert detail in failure["detail"] and fix in failure["fix"]
    assert BACKUP_PASSWORD not in json.dumps(doc)
    later = ["pg_dump", "pg_dumpall", "table privileges", *(["login"] if line == "shop: secret" else [])]
    assert all(by_line(doc)[f"shop: {n}"]["status"] == "skip" for n in later)  # not failed a second time
    assert by_line(doc)["bucket"]["status"] == "ok"

    code, text = check()
    assert code == 1
    [fail_line] = [n for n, row in enumerate(text.splitlines()) if row.startswith("FAIL")]
    assert line in text.splitlines()[fail_line]
    assert text.splitlines()[fail_line + 1].strip() == f"fix: {failure['fix']}"


def test_a_missing_bucket(aws: LocalStack, pg: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    configure(tmp_path, monkeypatch, "lifeboat-no-such-bucket", [shop(pg, aws)])

    code, doc = check("--json")

    assert code == 1
    assert list(failures(doc)) == ["bucket"]
    assert "lifeboat-no-such-bucket does not exist" in failures(doc)["bucket"]["detail"]
    assert "settings.bucket" in failures(doc)["bucket"]["fix"]
    assert by_line(doc)["lifecycle"]["status"] == "skip"
    assert by_line(doc)["shop: login"]["status"] == "ok"  # the database side is checked all the same


def test_a_lifecycle_that_differs_from_the_configuration(
    aws: LocalStack, pg: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    apply_lifecycle(aws.bucket)  # the default policy: daily backups kept 7 days
    policies = {"default": {"daily_days": 14}}
    configure(tmp_path, monkeypatch, aws.bucket, [shop(pg, aws)], retention_policies=policies)

    code, doc = check("--json")

    assert code == 1
    assert list(failures(doc)) == ["lifecycle"]
    failure = failures(doc)["lifecycle"]
    assert (
        'lifeboat-default-daily differs: Expiration {"Days": 7} on the bucket, {"Days": 14} configured'
        in (failure["detail"])
    )
    assert "`lifeboat lifecycle --apply`" in failure["fix"] and "change settings.retention_policies" in failure["fix"]

    apply_lifecycle(aws.bucket, retention_policies=policies)  # what `lifeboat lifecycle --apply` does
    assert check("--json")[0] == 0


def test_no_lifecycle_at_all_and_a_missing_queue(
    aws: LocalStack, pg: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    configure(tmp_path, monkeypatch, aws.bucket, [shop(pg, aws)])
    monkeypatch.setenv("LIFEBOAT_BACKUP_QUEUE_URL", aws.queue_url.replace("backups", "nope"))

    code, doc = check("--json")

    assert code == 1
    assert set(failures(doc)) == {"lifecycle", "backup queue"}
    assert "missing on the bucket: lifeboat-abort-incomplete-uploads" in failures(doc)["lifecycle"]["detail"]
    assert "LIFEBOAT_BACKUP_QUEUE_URL" in failures(doc)["backup queue"]["fix"]


def test_a_test_object_it_may_not_delete_is_left_to_the_lifecycle(
    aws: LocalStack, pg: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    deny = {"Effect": "Deny", "Principal": "*", "Action": "s3:DeleteObject", "Resource": f"arn:aws:s3:::{aws.bucket}/*"}
    boto3.client("s3").put_bucket_policy(
        Bucket=aws.bucket, Policy=json.dumps({"Version": "2012-10-17", "Statement": [deny]})
    )
    apply_lifecycle(aws.bucket)
    configure(tmp_path, monkeypatch, aws.bucket, [shop(pg, aws)])

    code, doc = check("--json")

    bucket = by_line(doc)["bucket"]
    assert (code, bucket["status"]) == (0, "ok")
    assert "not deleted" in bucket["detail"]
    assert "lifecycle rule lifeboat-default-ondemand expires it after 7 days" in bucket["detail"]
    [stored] = boto3.client("s3").list_objects_v2(Bucket=aws.bucket, Prefix="check/")["Contents"]
    tags = boto3.client("s3").get_object_tagging(Bucket=aws.bucket, Key=stored["Key"])["TagSet"]
    assert {"Key": "retention", "Value": "ondemand"} in tags  # what the lifecycle rule matches
    assert by_line(doc)["bucket policy"]["status"] == "skip"  # SSE-S3 configured: nothing for it to refuse


def test_a_bucket_policy_that_lets_other_encryption_through(
    aws: LocalStack, pg: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = boto3.client("kms").create_key()["KeyMetadata"]["Arn"]
    allow = {"Effect": "Allow", "Principal": "*", "Action": "s3:GetObject", "Resource": f"arn:aws:s3:::{aws.bucket}/*"}
    s3 = boto3.client("s3")
    s3.put_bucket_policy(Bucket=aws.bucket, Policy=json.dumps({"Version": "2012-10-17", "Statement": [allow]}))
    apply_lifecycle(aws.bucket, kms_key_id=key)
    configure(tmp_path, monkeypatch, aws.bucket, [shop(pg, aws)], kms_key_id=key)

    code, doc = check("--json")

    assert code == 1
    assert list(failures(doc)) == ["bucket policy"]
    assert "accepted" in failures(doc)["bucket policy"]["detail"]
    assert "DenyNonKmsEncryption" in failures(doc)["bucket policy"]["fix"]
    assert "Contents" not in s3.list_objects_v2(Bucket=aws.bucket, Prefix="check/")  # the accepted probe removed


# --- a role that cannot read everything -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def reader_db(pg: PostgresServer) -> str:
    """checkdb: one table the reader may read, one it may not, one in a schema it may not use, one under RLS."""
    if pg.psql(f"SELECT 1 FROM pg_roles WHERE rolname = '{READER}'") != "1":
        pg.psql(f"CREATE ROLE {READER} LOGIN PASSWORD '{READER_PASSWORD}'")
    if pg.psql(f"SELECT 1 FROM pg_database WHERE datname = '{READER_DB}'") != "1":
        pg.psql(f"CREATE DATABASE {READER_DB}")
        pg.psql(
            f"""
            CREATE TABLE public.open_t (i int); GRANT SELECT ON public.open_t TO {READER};
            CREATE TABLE public.closed_t (i int);
            CREATE SCHEMA hidden; CREATE TABLE hidden.t (i int); GRANT SELECT ON hidden.t TO {READER};
            CREATE TABLE public.rls_t (i int); ALTER TABLE public.rls_t ENABLE ROW LEVEL SECURITY;
            GRANT SELECT ON public.rls_t TO {READER};
            """,
            dbname=READER_DB,
        )
    return READER_DB


def test_tables_the_role_cannot_read_are_listed(
    aws: LocalStack, pg: PostgresServer, reader_db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = boto3.client("secretsmanager").create_secret(Name="lifeboat/reader", SecretString=READER_PASSWORD)
    t = target("reader", pg.port, secret["ARN"], database=reader_db, user=READER)
    apply_lifecycle(aws.bucket)
    configure(tmp_path, monkeypatch, aws.bucket, [t])

    code, doc = check("reader", "--json")

    assert code == 1
    assert list(failures(doc)) == ["reader: table privileges"]
    failure = failures(doc)["reader: table privileges"]
    assert (
        f"{READER} cannot read 2 of 4 tables to dump: hidden.t (no USAGE on schema hidden), public.closed_t"
        in (failure["detail"])
    )
    assert "row-level security hides rows of 1" in failure["detail"] and "public.rls_t" in failure["detail"]
    assert f"GRANT pg_read_all_data TO {READER}" in failure["fix"] and "exclude_tables" in failure["fix"]

    # Leaving them out of the selection (as pg_dump would) makes the check pass.
    t["logical"].update(exclude_tables=["closed_t", "rls_t"], exclude_schemas=["hidden"])
    configure(tmp_path, monkeypatch, aws.bucket, [t])
    code, doc = check("reader", "--json")
    assert code == 0, failures(doc)
    assert "can read all 1 tables" in by_line(doc)["reader: table privileges"]["detail"]


# --- an unusable configuration ------------------------------------------------------------------------------------


def test_an_unusable_configuration_exits_2(aws: LocalStack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIFEBOAT_CONFIG", str(tmp_path / "missing.json"))

    code, doc = check("--json")

    assert (code, doc["status"], doc["error"]["code"]) == (2, "FAILED", "invalid_config")
    assert [c["name"] for c in doc["checks"]] == ["configuration"]
    assert "missing.json" in doc["checks"][0]["detail"] and doc["checks"][0]["fix"]


def test_an_unknown_target_exits_2(
    aws: LocalStack, pg: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    configure(tmp_path, monkeypatch, aws.bucket, [shop(pg, aws)])

    code, text = check("nope")

    assert code == 2
    assert text.splitlines()[0].startswith("FAIL  target  unknown target 'nope' (known: shop)")


# --- the lifecycle comparison (pure) --------------------------------------------------------------------------------


def test_lifecycle_drift_ignores_the_forms_s3_may_return() -> None:
    expected = lifecycle_rules(Settings(bucket="b-bucket"), "failed/")
    returned = []
    for rule in reversed(expected):  # another order, keys reordered, tags reversed, empty prefixes dropped
        r = json.loads(json.dumps(rule))
        f = r["Filter"].get("And", r["Filter"])
        if f.get("Prefix") == "":
            del f["Prefix"]
        if "Tags" in f:
            f["Tags"].reverse()
        returned.append(dict(reversed(list(r.items()))))
    assert lifecycle_drift(expected, returned) == []
    assert lifecycle_drift(expected, []) == [f"missing on the bucket: {', '.join(sorted(r['ID'] for r in expected))}"]
    foreign = {"ID": "expire-everything", "Status": "Enabled", "Filter": {}, "Expiration": {"Days": 1}}
    assert lifecycle_drift(expected, [*expected, foreign]) == [
        "on the bucket but not in the configuration: expire-everything"
    ]


def test_a_whole_server_target_is_checked_in_every_database(
    aws: LocalStack, pg: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    others = [d for d in pg.psql("SELECT datname FROM pg_database").split() if d not in ("shop", "postgres")]
    t = target("server", pg.port, aws.secret_arn, database="postgres", all_databases=True, exclude_databases=others)
    apply_lifecycle(aws.bucket)
    configure(tmp_path, monkeypatch, aws.bucket, [t])

    code, doc = check("--json")

    assert code == 0, failures(doc)
    assert by_line(doc)["server: table privileges"]["detail"].endswith("the selection dumps in 2 databases")
    assert by_line(doc)["server: pg_dumpall"]["status"] == "ok"  # a whole-server run dumps the globals
