"""Local copies of what the deployed stack creates: bucket, secret, jobs table, backup queue."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3

from chalicelib.adapters.dynamo import GLOBAL_SECONDARY_INDEXES, INDEX_ATTRIBUTE_DEFINITIONS
from devstack.postgres import tls_certificates

JOBS_TABLE = "pg-lifeboat-jobs"
BACKUP_QUEUE = "pg-lifeboat-backups.fifo"
RESTORE_QUEUE = "pg-lifeboat-restores"


@dataclass
class LocalStack:
    bucket: str
    secret_arn: str
    jobs_table: str
    queue_url: str
    restore_queue_url: str = ""

    def env(self) -> dict[str, str]:
        return {
            "LIFEBOAT_JOBS_TABLE": self.jobs_table,
            "LIFEBOAT_BACKUP_QUEUE_URL": self.queue_url,
            "LIFEBOAT_RESTORE_QUEUE_URL": self.restore_queue_url,
        }


def provision(bucket: str, secret_name: str, password: str) -> LocalStack:
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket=bucket)
    secret = boto3.client("secretsmanager").create_secret(
        Name=secret_name, SecretString=json.dumps({"username": "lifeboat_backup", "password": password})
    )
    ddb = boto3.client("dynamodb")
    # The restore-job indexes as the stack creates them (chalicelib.adapters.dynamo).
    ddb.create_table(
        TableName=JOBS_TABLE,
        BillingMode="PAY_PER_REQUEST",
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}, *INDEX_ATTRIBUTE_DEFINITIONS],
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        GlobalSecondaryIndexes=GLOBAL_SECONDARY_INDEXES,
    )
    sqs = boto3.client("sqs")
    queue_url = sqs.create_queue(QueueName=BACKUP_QUEUE, Attributes={"FifoQueue": "true"})["QueueUrl"]
    restore_queue_url = sqs.create_queue(QueueName=RESTORE_QUEUE)["QueueUrl"]
    return LocalStack(bucket, secret["ARN"], JOBS_TABLE, queue_url, restore_queue_url)


def write_config(path: Path, bucket: str, targets: list[dict[str, Any]], **settings: Any) -> Path:
    path.write_text(json.dumps({"settings": {"bucket": bucket, **settings}, "targets": targets}, indent=2))
    return path


def target(
    name: str,
    port: int,
    secret: str,
    database: str = "shop",
    user: str = "lifeboat_backup",
    schedule: str | None = "cron(0 3 * * ? *)",
    sslrootcert: str | Path | None = None,
    **logical: Any,
) -> dict[str, Any]:
    """A target on a devstack PostgreSQL, configured as in production: sslmode verify-full against the CA of
    the devstack servers' certificate (devstack.postgres.tls_certificates; `sslrootcert` overrides it), and
    the stored password goes only by SCRAM with channel binding."""
    ca = sslrootcert or tls_certificates() / "ca.crt"
    return {
        "name": name,
        "connection": {
            "host": "127.0.0.1",
            "port": port,
            "database": database,
            "user": user,
            "password_secret": secret,
            "sslmode": "verify-full",
            "sslrootcert": str(ca),
        },
        "logical": {"schedule": schedule, **logical},
    }
