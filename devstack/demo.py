"""`make demo`: the whole job on one machine, with real parts.

Starts moto (S3, Secrets Manager, DynamoDB, SQS) and a real PostgreSQL with a sample database, fires
the dispatcher schedule through the Lambda handler, lets the worker stream pg_dump into S3, lists the
catalog with the `lifeboat` command, restores the backup into a new database and verifies it, then
stops everything it started.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
WORK = REPO / ".demo"


def step(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def main() -> int:
    from devstack import pgbin
    from devstack.aws import MotoServer
    from devstack.local import provision, target, write_config
    from devstack.postgres import PostgresServer
    from devstack.sample import BACKUP_PASSWORD, create_sample

    WORK.mkdir(exist_ok=True)
    os.environ.setdefault("POWERTOOLS_METRICS_DISABLED", "true")
    os.environ.setdefault("POWERTOOLS_LOG_LEVEL", "WARNING")
    step("starting the local AWS emulator (moto, server mode on 127.0.0.1)")
    moto = MotoServer().start()
    os.environ.update(moto.env())
    print(f"    {moto.endpoint}")
    majors = pgbin.debian_majors()
    server = PostgresServer(pgbin.server_bin(majors[-1] if majors else 17))
    try:
        step("starting PostgreSQL and creating the sample database 'shop'")
        server.start()
        create_sample(server, "shop")
        print(f"    PostgreSQL {server.major} on 127.0.0.1:{server.port}")

        step("creating the bucket, the database secret, the jobs table and the backup queue")
        stack = provision("lifeboat-demo-backups", "lifeboat/shop", BACKUP_PASSWORD)
        os.environ.update(stack.env())
        config = write_config(WORK / "lifeboat.json", stack.bucket,
                              [target("shop", server.port, stack.secret_arn, schedule="cron(0 3 * * ? *)",
                                      globals=True)])
        os.environ["LIFEBOAT_CONFIG"] = str(config)
        print(f"    configuration: {config.relative_to(REPO)}")

        slot = datetime.now(UTC).replace(hour=3, minute=0, second=0, microsecond=0)
        step(f"EventBridge fires the dispatcher for {slot:%Y-%m-%d %H:%M} UTC (cron(0 3 * * ? *) is due)")
        import boto3

        import app as lambda_app
        from devstack.chalice_local import client

        with client(lambda_app.app, project_dir=str(REPO)) as chalice:
            event = chalice.events.generate_cw_event(source="aws.events", detail_type="Scheduled Event",
                                                     detail={}, resources=[])
            event["time"] = slot.strftime("%Y-%m-%dT%H:%M:%SZ")
            dispatched = chalice.lambda_.invoke("dispatcher", event).payload
            print(f"    queued: {dispatched['dispatched']}")
            step("the backup worker takes the message: pg_dump streams into S3, the manifest is written last")
            sqs = boto3.client("sqs")
            for message in sqs.receive_message(QueueUrl=stack.queue_url, MaxNumberOfMessages=10).get("Messages", []):
                result = chalice.lambda_.invoke("backup_worker", chalice.events.generate_sqs_event(
                    message_bodies=[message["Body"]], queue_name="pg-lifeboat-backups")).payload
                print(f"    {result}")
                sqs.delete_message(QueueUrl=stack.queue_url, ReceiptHandle=message["ReceiptHandle"])
                backup_id = result[0]["backup_id"]
            for obj in boto3.client("s3").list_objects_v2(Bucket=stack.bucket)["Contents"]:
                print(f"    s3://{stack.bucket}/{obj['Key']}  ({obj['Size']} bytes)")

        lifeboat = str(REPO / ".venv" / "bin" / "lifeboat")
        step("lifeboat list shop")
        subprocess.run([lifeboat, "list", "shop"], check=True)

        step(f"lifeboat restore {backup_id} --database shop_restored")
        subprocess.run([lifeboat, "restore", backup_id, "--database", "shop_restored"], check=True)
        rows = server.psql("SELECT count(*) FROM sales.orders", dbname="shop_restored")
        print(f"    sales.orders in the restored database: {rows} rows")

        step("a second delivery of the same schedule slot changes nothing")
        from chalicelib.handlers import backup_message

        again = backup_message(json.dumps({"target": "shop", "kind": "logical", "slot": slot.isoformat()}), None)
        print(f"    {again}")
        print("\nDemo complete.")
        return 0
    finally:
        step("stopping PostgreSQL and the emulator")
        server.destroy()
        moto.stop()


if __name__ == "__main__":
    sys.exit(main())
