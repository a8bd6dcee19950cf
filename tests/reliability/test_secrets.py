"""No password, and no secret's value, anywhere the product writes, across failing and succeeding runs.

One run of backups (scheduled through the handlers, and direct) and restores (API, worker, CLI), some
succeeding and some failing at login, at connect, in the database, on a tampered object; passwords chosen
to be awkward (spaces, quotes, '=', '@', ':', '/'). Everything is captured: file descriptors 1 and 2
(capfd, which includes the child processes' output), the product's log lines, every S3 object but the
dumps (manifests, failed records, globals.sql), API response bodies, the DynamoDB items (jobs, claims,
idempotency records), and the argv and environment of every PostgreSQL client program started.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import pytest

from chalicelib import wiring
from chalicelib.errors import LifeboatError
from chalicelib.logical.dump import run_logical_backup
from devstack.local import LocalStack, target, write_config
from devstack.postgres import PostgresServer, free_port
from devstack.sample import BACKUP_PASSWORD
from tests.reliability import flows

NASTY_USER = "lifeboat_nasty"
NASTY = "p@ss w0rd='x' \"y\":z/@ password=hunter2"
WRONG = "Wr0ng pass=word@db:5432/x"
SLOT = datetime(2026, 11, 29, 3, tzinfo=UTC)
URI_WITH_PASSWORD = re.compile(r"postgres(?:ql)?://[^:/@\s]+:[^@\s*]+@", re.I)
PASSWORD_ASSIGNMENT = re.compile(r"password\s*=\s*(?!\*\*\*)['\"]?[^\s'\"*]", re.I)


@pytest.fixture(scope="module")
def nasty_role(pg: PostgresServer) -> Iterator[str]:
    literal = NASTY.replace("'", "''")
    pg.psql(f"CREATE ROLE {NASTY_USER} LOGIN CREATEDB PASSWORD '{literal}'; GRANT pg_read_all_data TO {NASTY_USER}")
    yield NASTY_USER
    pg.psql(f"DROP ROLE IF EXISTS {NASTY_USER}")


@pytest.fixture
def popen_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[list[str], dict[str, str]]]:
    """argv and environment of every PostgreSQL client program the product starts."""
    from chalicelib.adapters import pgtools

    calls: list[tuple[list[str], dict[str, str]]] = []
    real = pgtools.ChildProcess.start

    def recording(self: Any) -> Any:
        calls.append(([str(self.tool.path), *self.args], dict(self.env)))
        return real(self)

    monkeypatch.setattr(pgtools.ChildProcess, "start", recording)
    return calls


def setup(aws: LocalStack, pg: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    sm = boto3.client("secretsmanager")
    nasty_secret = json.dumps({"engine": "postgres", "host": "127.0.0.1", "username": NASTY_USER, "password": NASTY})
    nasty = sm.create_secret(Name="lifeboat/nasty", SecretString=nasty_secret)["ARN"]
    wrong = sm.create_secret(Name="lifeboat/wrong", SecretString=WRONG)["ARN"]
    shop = target("shop", pg.port, aws.secret_arn, globals=True)
    shop["restore_into"] = ["nasty", "wrongpw", "nodb"]
    nasty_target = target("nasty", pg.port, nasty, user=NASTY_USER, schedule=None, globals=True)
    nasty_target["restore_into"] = ["wrongpw", "refused"]  # the CLI's restores below go there (check_rules)
    targets = [
        shop,
        nasty_target,
        target("wrongpw", pg.port, wrong, schedule=None),
        target("nodb", pg.port, nasty, database="no_such_db", user=NASTY_USER, schedule=None),
        target("refused", free_port(), nasty, user=NASTY_USER, schedule=None),
    ]
    path = write_config(tmp_path / "lifeboat.json", aws.bucket, targets)
    monkeypatch.setenv("LIFEBOAT_CONFIG", str(path))
    return {"nasty": nasty, "wrong": wrong, "nasty_secret": nasty_secret}


def test_no_secret_reaches_any_output(
    aws: LocalStack,
    pg: PostgresServer,
    nasty_role: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    product_log: io.StringIO,
    popen_calls: list[tuple[list[str], dict[str, str]]],
    stray_databases: Callable[[], set[str]],
) -> None:
    from chalicelib.cli import main

    arns = setup(aws, pg, tmp_path, monkeypatch)
    bodies: list[str] = []
    errors: list[str] = []
    svc = wiring.backup_services()
    with flows.lambda_client() as c:
        assert [r["status"] for r in flows.run_schedule(c, SLOT)] == ["SUCCEEDED"]
        with pytest.raises(LifeboatError) as info:  # a worker invocation that fails: SQS would retry it
            flows.backup_worker(c, json.dumps({"target": "wrongpw", "kind": "logical", "slot": SLOT.isoformat()}))
        errors.append(str(info.value))
        assert run_logical_backup(svc, "nasty", SLOT).status == "SUCCEEDED"
        for name in ("wrongpw", "nodb", "refused"):
            with pytest.raises(LifeboatError) as info:
                run_logical_backup(svc, name, SLOT)
            errors.append(str(info.value))
        backup_id = "logical:shop:20261129T030000Z"
        requests = [
            {"backup_id": backup_id, "into": {"target": "shop", "database": "shop_secret_ok"}},
            {
                "backup_id": "logical:nasty:20261129T030000Z",
                "into": {"target": "nasty", "database": "nasty_ok"},
                "options": {"no_owner": True},
            },
            {"backup_id": backup_id, "into": {"target": "wrongpw", "database": "x1"}},
            {
                "backup_id": backup_id,
                "into": {
                    "database": "x2",
                    "connection": {
                        "host": "127.0.0.1",
                        "port": free_port(),
                        "user": NASTY_USER,
                        "password_secret": arns["nasty"],
                        "sslmode": "disable",
                    },
                },
            },
            {"backup_id": backup_id, "into": {"target": "nodb", "database": "x3"}},
        ]
        for request in requests:
            source = str(request["backup_id"]).split(":")[1]
            r = flows.post(c, f"/targets/{source}/restores", request, {"Idempotency-Key": f"k-{len(bodies)}"})
            bodies.append(r.body.decode() if isinstance(r.body, bytes) else str(r.body))
        assert [json.loads(b).get("status", json.loads(b).get("error")) for b in bodies] == [
            "PENDING",
            "PENDING",
            "database_unreachable",
            "bad_request",
            "database_unreachable",
        ]
        assert {r["status"] for r in flows.drain_restores(c)} == {"SUCCEEDED"}
        key = "logical/shop/2026/11/29/20261129T030000Z/database.dump"
        s3 = boto3.client("s3")
        data = bytearray(s3.get_object(Bucket=aws.bucket, Key=key)["Body"].read())
        data[len(data) // 2] ^= 0xFF
        s3.put_object(Bucket=aws.bucket, Key=key, Body=bytes(data))
        r = flows.post(
            c, "/targets/shop/restores", {"backup_id": backup_id, "into": {"target": "nasty", "database": "nasty_bad"}}
        )
        bodies.append(r.body.decode() if isinstance(r.body, bytes) else str(r.body))
        assert [r["status"] for r in flows.drain_restores(c)] == ["FAILED"]
        for path in (
            "/targets/shop/restores",
            "/targets/nasty/restores",
            "/targets/shop/backups",
            "/targets/nasty/backups",
        ):
            bodies.append(json.dumps(flows.get(c, path)[1]))
    out = io.StringIO()
    assert (
        main(["restore", "logical:nasty:20261129T030000Z", "--database", "nasty_cli", "--no-owner", "--json"], out=out)
        == 0
    )
    bodies.append(out.getvalue())
    assert main(["restore", "logical:nasty:20261129T030000Z", "--database", "x4", "--into-target", "wrongpw"]) == 1
    assert main(["restore", "logical:nasty:20261129T030000Z", "--database", "x5", "--into-target", "refused"]) == 1

    captured = capfd.readouterr()
    s3 = boto3.client("s3")
    objects = {
        o["Key"]: s3.get_object(Bucket=aws.bucket, Key=o["Key"])["Body"].read().decode()
        for o in s3.list_objects_v2(Bucket=aws.bucket).get("Contents", [])
        if not o["Key"].endswith(".dump")
    }
    assert any(k.startswith("failed/") for k in objects) and any(k.endswith("globals.sql") for k in objects)
    items = [
        json.dumps(i)
        for page in boto3.client("dynamodb").get_paginator("scan").paginate(TableName=aws.jobs_table)
        for i in page["Items"]
    ]
    assert items
    places = {
        "stdout": captured.out,
        "stderr": captured.err,
        "log": product_log.getvalue(),
        "errors": "\n".join(errors),
        **{f"s3://{k}": v for k, v in objects.items()},
        **{f"response {i}": b for i, b in enumerate(bodies)},
        **{f"dynamodb {i}": t for i, t in enumerate(items)},
    }
    assert "password authentication failed" in places["stderr"] + places["errors"]  # the failures did happen
    assert URI_WITH_PASSWORD.search("postgresql://u:pw@h/db") and PASSWORD_ASSIGNMENT.search("password='pw'")
    assert not PASSWORD_ASSIGNMENT.search("password=*** host=x")  # scrubbed is fine
    secrets = {
        "backup password": BACKUP_PASSWORD,
        "nasty password": NASTY,
        "wrong password": WRONG,
        "nasty secret": arns["nasty_secret"],
        "password JSON": json.dumps(NASTY)[1:-1],
    }
    leaks = [f"{what} in {where}" for where, text in places.items() for what, s in secrets.items() if s in text]
    leaks += [
        f"{where}: {m.group(0)!r}"
        for where, text in places.items()
        for rx in (URI_WITH_PASSWORD, PASSWORD_ASSIGNMENT)
        for m in rx.finditer(text)
    ]
    assert leaks == []

    assert popen_calls, "no PostgreSQL client program ran"
    for argv, env in popen_calls:
        for what, s in secrets.items():
            assert s not in " ".join(argv), f"{what} on the command line of {argv[0]}"
        assert [k for k, v in env.items() if any(s in v for s in secrets.values())] in ([], ["PGPASSWORD"])
        assert not [k for k in env if k.startswith("AWS_")], f"AWS variables passed to {argv[0]}"
    assert stray_databases() == {"shop_secret_ok", "nasty_ok", "nasty_cli"}
