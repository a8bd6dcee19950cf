"""`make demo`: the whole job on one machine, with real parts.

Starts moto (S3, Secrets Manager, DynamoDB, SQS) and a real PostgreSQL with a sample database, fires
the dispatcher schedule through the Lambda handler, lets the worker stream pg_dump into S3, lists the
catalog with the `lifeboat` command, verifies the backup (`lifeboat verify`: objects and the manifest's signature),
restores it into a new database and verifies that, then
stops everything it started.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
WORK = REPO / ".demo"


def step(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def restore_through_api(backup_id: str, restore_queue_url: str, server: Any) -> None:
    """POST /targets/shop/restores on `chalice local`, run the restore worker, GET the job."""
    import boto3

    import app as lambda_app
    from devstack.chalice_local import client
    from devstack.postgres import free_port

    port = free_port()
    step(f"chalice local on 127.0.0.1:{port}: POST /targets/shop/restores")
    proc = subprocess.Popen(
        [
            str(REPO / ".venv" / "bin" / "chalice"),
            "local",
            "--no-autoreload",
            "--stage",
            "local",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        cwd=REPO,
        env=dict(os.environ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(base + "/targets/shop/restores", timeout=2).read()
                break
            except urllib.error.HTTPError:
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        body = {"backup_id": backup_id, "into": {"target": "shop", "database": "shop_restored"}}
        request = urllib.request.Request(
            base + "/targets/shop/restores",
            data=json.dumps(body).encode(),
            method="POST",
            headers={"Content-Type": "application/json", "Idempotency-Key": "demo-1"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            job, location = json.loads(response.read()), response.headers["Location"]
            print(f"    {response.status} Location: {location}  status {job['status']}")
        step("the restore worker takes the job from the restore queue")
        sqs = boto3.client("sqs")
        with client(lambda_app.app, project_dir=str(REPO)) as chalice:
            for message in sqs.receive_message(QueueUrl=restore_queue_url).get("Messages", []):
                print(
                    "    "
                    + str(
                        chalice.lambda_.invoke(
                            "restore_worker",
                            chalice.events.generate_sqs_event(
                                message_bodies=[message["Body"]], queue_name="pg-lifeboat-restores"
                            ),
                        ).payload
                    )
                )
                sqs.delete_message(QueueUrl=restore_queue_url, ReceiptHandle=message["ReceiptHandle"])
        step(f"GET {job['restore_id']}")
        with urllib.request.urlopen(base + location, timeout=30) as response:
            done = json.loads(response.read())
        v = done["result"].get("verification", {})
        print(
            f"    status {done['status']}: {done['result'].get('database')} on {done['result'].get('host')},"
            f" {done['progress'].get('bytes_restored')} bytes, pg_restore {done['result'].get('pg_restore_version')}"
        )
        print(
            f"    verified: {v.get('tables_checked')} tables and {v.get('rows_checked')} rows match the manifest"
            if v.get("match")
            else f"    verification: {v}"
        )
        rows = server.psql("SELECT count(*) FROM sales.orders", dbname="shop_restored")
        print(f"    sales.orders in shop_restored: {rows} rows")
    finally:
        proc.terminate()
        proc.wait(timeout=10)


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
        import boto3

        boto3.client("rds").create_db_instance(
            DBInstanceIdentifier="shop-db",
            DBInstanceClass="db.t3.micro",
            Engine="postgres",
            AllocatedStorage=20,
            MasterUsername="admin",
            MasterUserPassword="demo-only-password",
        )
        shop = target("shop", server.port, stack.secret_arn, schedule="cron(0 3 * * ? *)", globals=True)
        # The same target is also an RDS instance (in the emulator): a nightly snapshot beside the dump.
        shop["physical"] = {"method": "rds_instance", "db_instance_id": "shop-db", "schedule": "cron(0 3 * * ? *)"}
        # Manifests signed with a KMS HMAC key, as the stack's SettingsJson output configures it.
        kms = boto3.client("kms")
        signing_key = kms.create_key(KeySpec="HMAC_256", KeyUsage="GENERATE_VERIFY_MAC")["KeyMetadata"]["Arn"]
        config = write_config(WORK / "lifeboat.json", stack.bucket, [shop], signing_key_id=signing_key)
        os.environ["LIFEBOAT_CONFIG"] = str(config)
        print(f"    configuration: {config.relative_to(REPO)}")

        slot = datetime.now(UTC).replace(hour=3, minute=0, second=0, microsecond=0)
        step(f"EventBridge fires the dispatcher for {slot:%Y-%m-%d %H:%M} UTC (cron(0 3 * * ? *) is due)")
        import app as lambda_app
        from devstack.chalice_local import client

        with client(lambda_app.app, project_dir=str(REPO)) as chalice:
            event = chalice.events.generate_cw_event(
                source="aws.events", detail_type="Scheduled Event", detail={}, resources=[]
            )
            event["time"] = slot.strftime("%Y-%m-%dT%H:%M:%SZ")
            dispatched = chalice.lambda_.invoke("dispatcher", event).payload
            print(f"    queued: {dispatched['dispatched']}")
            step(
                "the backup worker takes each message: pg_dump streams into S3 (manifest last);"
                " the RDS snapshot is started, not waited for"
            )
            sqs = boto3.client("sqs")
            for message in sqs.receive_message(QueueUrl=stack.queue_url, MaxNumberOfMessages=10).get("Messages", []):
                result = chalice.lambda_.invoke(
                    "backup_worker",
                    chalice.events.generate_sqs_event(
                        message_bodies=[message["Body"]], queue_name="pg-lifeboat-backups"
                    ),
                ).payload
                print(f"    {result}")
                sqs.delete_message(QueueUrl=stack.queue_url, ReceiptHandle=message["ReceiptHandle"])
                if result[0]["backup_id"].startswith("logical:"):
                    backup_id = result[0]["backup_id"]
            for obj in boto3.client("s3").list_objects_v2(Bucket=stack.bucket)["Contents"]:
                print(f"    s3://{stack.bucket}/{obj['Key']}  ({obj['Size']} bytes)")

        lifeboat = str(REPO / ".venv" / "bin" / "lifeboat")
        step("lifeboat list shop  (the dump and the snapshot, one catalog)")
        subprocess.run([lifeboat, "list", "shop"], check=True)

        step(f"lifeboat verify {backup_id}  (re-reads every object; checks sizes, SHA-256, the signature)")
        subprocess.run([lifeboat, "verify", backup_id], check=True)

        step(f"lifeboat restore {backup_id} --database shop_cli")
        subprocess.run([lifeboat, "restore", backup_id, "--database", "shop_cli"], check=True)

        step("a second delivery of the same schedule slot changes nothing")
        from chalicelib.entrypoints import backup_message

        again = backup_message(json.dumps({"target": "shop", "kind": "logical", "slot": slot.isoformat()}), None)
        print(f"    {again}")
        restore_through_api(backup_id, stack.restore_queue_url, server)
        print("\nDemo complete.")
        return 0
    finally:
        step("stopping PostgreSQL and the emulator")
        server.destroy()
        moto.stop()


if __name__ == "__main__":
    sys.exit(main())
