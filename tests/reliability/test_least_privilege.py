"""Least privilege, checked: the AWS operations each handler performs against the IAM policy it deploys with.

A module fixture drives every handler the way AWS does (configuration from SSM Parameter Store, as in a
deployed stage): the dispatcher ticks; the backup worker runs a backup with globals, a duplicate delivery
and a multipart backup that S3 refuses halfway (the clean-up path); the API serves every route, with and
without an Idempotency-Key; the restore worker runs a restore that succeeds and one that fails. A botocore
`before-call` handler on every client records (handler, service, operation), mapped to IAM actions.

Each function's grants are .chalice/policy-<stage>-<function>.json plus, where stack/policies.py says the
function needs `database`, the template-side DatabaseAccessPolicy (secretsmanager:GetSecretValue).
- missing actions (used, not granted) fail the test: the function would fail in AWS;
- unused actions are reported as warnings, split into what these tests exercise (S3, DynamoDB, SQS, SSM,
  Secrets Manager) and what they do not (RDS, EC2 and KMS for physical backups: tests/physical); the
  Lambda runtime's (logs:*) and the SQS event source's (sqs:ReceiveMessage, DeleteMessage,
  GetQueueAttributes) are needed without any call in the code, and kms:GenerateDataKey/Decrypt by S3 for
  SSE-KMS buckets.
"""

from __future__ import annotations

import fnmatch
import json
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import pytest

from chalicelib import wiring
from devstack.aws import MotoServer
from devstack.local import LocalStack, provision, target
from devstack.postgres import PostgresServer
from devstack.sample import BACKUP_PASSWORD
from tests.reliability import flows
from tests.reliability.support import OperationRecorder

REPO = Path(__file__).resolve().parents[2]
CHALICE = REPO / ".chalice"
FUNCTIONS = ("dispatcher", "backup_worker", "restore_worker", "api_handler")
STAGES = ("dev", "prod")
TICK = datetime(2026, 11, 29, 3, 0, tzinfo=UTC)
RUNTIME_ACTIONS = {"logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents"}
EVENT_SOURCE_ACTIONS = {"sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes"}
SQS_TRIGGERED = {"backup_worker", "restore_worker"}
SSE_KMS_ACTIONS = {"kms:GenerateDataKey", "kms:Decrypt"}
EXERCISED_SERVICES = ("s3:", "dynamodb:", "sqs:", "ssm:", "secretsmanager:")


def _inject_403_on_part(client: Any, number: int) -> Any:
    from botocore.awsrequest import AWSResponse

    class _Raw:
        def stream(self, **_: object) -> Iterator[bytes]:
            yield b"<Error><Code>AccessDenied</Code><Message>denied</Message></Error>"

    def handler(request: Any, **_: object) -> AWSResponse | None:
        if f"partNumber={number}&" in request.url or request.url.endswith(f"partNumber={number}"):
            return AWSResponse(request.url, 403, {}, _Raw())  # type: ignore[arg-type]
        return None

    client.meta.events.register("before-send.s3.UploadPart", handler)
    return handler


def _cold(recorder: OperationRecorder, function: str) -> Any:
    """Each function runs in its own Lambda container: nothing cached by another may hide a call. Powertools
    caches secrets per process, and chalicelib.wiring keeps one SSMProvider per region and profile (its
    five-minute cache of the configuration outlives an invocation, as intended in a container):
    wiring.client.cache_clear() drops it with the clients (new ones get the recorder too)."""
    from aws_lambda_powertools.utilities import parameters
    from aws_lambda_powertools.utilities.parameters.constants import DEFAULT_PROVIDERS

    DEFAULT_PROVIDERS.clear()
    parameters.clear_caches()  # type: ignore[no-untyped-call]
    wiring.client.cache_clear()
    return recorder.handler(function)


def _exercise(recorder: OperationRecorder, stack: LocalStack, pg: PostgresServer) -> None:
    from chalicelib.errors import StorageError

    with flows.lambda_client() as c:
        with _cold(recorder, "dispatcher"):
            assert flows.tick(c, TICK)["dispatched"]
        bodies = flows.receive_all(stack.queue_url)
        assert bodies
        with _cold(recorder, "backup_worker"):
            for body in bodies:
                assert {r["status"] for r in flows.backup_worker(c, body)} == {"SUCCEEDED"}
            assert flows.backup_worker(c, bodies[0])[0]["status"] == "SKIPPED"  # a duplicate delivery
            handler = _inject_403_on_part(wiring.client("s3"), 2)
            try:
                with pytest.raises(StorageError, match="access denied"):
                    flows.backup_worker(c, json.dumps({"target": "big", "kind": "logical", "slot": TICK.isoformat()}))
            finally:
                wiring.client("s3").meta.events.unregister("before-send.s3.UploadPart", handler)
        backup_id = "logical:shop:20261129T030000Z"
        with _cold(recorder, "api_handler"):
            assert flows.get(c, "/targets/shop/backups")[0] == 200
            assert flows.post(c, "/targets/shop/backups", {"kind": "logical"}).status_code == 202
            r = flows.post(
                c,
                "/targets/shop/restores",
                {"backup_id": backup_id, "into": {"target": "shop", "database": "lp_ok"}},
                {"Idempotency-Key": "least-privilege-1"},
            )
            assert r.status_code == 202, r.body
            restore_id = json.loads(r.body)["restore_id"]
            assert flows.get(c, "/targets/shop/restores")[0] == 200
            assert flows.get(c, f"/targets/shop/restores/{restore_id}")[0] == 200
            assert (
                flows.post(
                    c,
                    "/targets/shop/restores",
                    {"backup_id": backup_id, "into": {"target": "shop", "database": "shop"}},
                ).status_code
                == 409
            )
        bodies = flows.receive_all(stack.restore_queue_url)  # the event source's work, not the function's
        with _cold(recorder, "restore_worker"):
            assert [r for b in bodies for r in flows.restore_worker(c, b)] == [
                {"restore_id": restore_id, "status": "SUCCEEDED"}
            ]
        s3 = boto3.client("s3")
        key = "logical/shop/2026/11/29/20261129T030000Z/database.dump"
        data = bytearray(s3.get_object(Bucket=stack.bucket, Key=key)["Body"].read())
        data[len(data) // 2] ^= 0xFF
        s3.put_object(Bucket=stack.bucket, Key=key, Body=bytes(data))
        with _cold(recorder, "api_handler"):
            r = flows.post(
                c, "/targets/shop/restores", {"backup_id": backup_id, "into": {"target": "shop", "database": "lp_bad"}}
            )
            assert r.status_code == 202, r.body
        bodies = flows.receive_all(stack.restore_queue_url)
        with _cold(recorder, "restore_worker"):
            assert [r["status"] for b in bodies for r in flows.restore_worker(c, b)] == ["FAILED"]
    for db in ("lp_ok", "lp_bad"):
        pg.psql(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")


@pytest.fixture(scope="module")
def observed(moto_server: MotoServer, pg: PostgresServer, pg_roots: Path, big_db: str) -> Iterator[OperationRecorder]:
    import botocore.session
    from aws_lambda_powertools.utilities import parameters
    from aws_lambda_powertools.utilities.parameters.constants import DEFAULT_PROVIDERS

    recorder = OperationRecorder()
    original = botocore.session.Session.create_client

    def create_client(self: Any, *args: Any, **kwargs: Any) -> Any:
        client = original(self, *args, **kwargs)
        client.meta.events.register("before-call", recorder.on_call)
        return client

    with pytest.MonkeyPatch.context() as mp:
        moto_server.reset()
        stack = provision("lifeboat-lp-backups", "lifeboat/shop", BACKUP_PASSWORD)
        for key, value in stack.env().items():
            mp.setenv(key, value)
        mp.setenv("LIFEBOAT_PG_ROOTS", str(pg_roots))
        ssm = boto3.client("ssm")
        # Manifests signed as the stack configures it: the backup worker calls kms:GenerateMac, restores VerifyMac.
        signing_key = boto3.client("kms").create_key(KeySpec="HMAC_256", KeyUsage="GENERATE_VERIFY_MAC")
        settings = {"bucket": stack.bucket, "part_size_mib": 6, "upload_memory_mib": 16}
        settings["signing_key_id"] = signing_key["KeyMetadata"]["Arn"]
        ssm.put_parameter(Name="/pg-lifeboat/dev/settings", Type="String", Value=json.dumps(settings))
        for name, database in (("shop", "shop"), ("big", big_db)):
            spec = target(
                name,
                pg.port,
                stack.secret_arn,
                database=database,
                schedule="rate(1 minute)",
                globals=name == "shop",
                compression="gzip:1",
            )
            if name == "big":
                spec["logical"]["schedule"] = None
            ssm.put_parameter(Name=f"/pg-lifeboat/dev/targets/{name}", Type="String", Value=json.dumps(spec))
        mp.setenv("LIFEBOAT_CONFIG", "ssm:/pg-lifeboat/dev")
        mp.setattr(botocore.session.Session, "create_client", create_client)
        DEFAULT_PROVIDERS.clear()
        parameters.clear_caches()  # type: ignore[no-untyped-call]
        wiring.client.cache_clear()
        try:
            _exercise(recorder, stack, pg)
        finally:
            wiring.client.cache_clear()
            DEFAULT_PROVIDERS.clear()
            parameters.clear_caches()  # type: ignore[no-untyped-call]
    yield recorder


def granted(stage: str, function: str) -> tuple[list[str], str]:
    """(actions allowed to the function, where they come from)."""
    path = CHALICE / f"policy-{stage}-{function}.json"
    if not path.exists():
        pytest.skip(f"{path.relative_to(REPO)} does not exist (yet): nothing to compare the operations with")
    doc = json.loads(path.read_text())
    actions: list[str] = []
    for statement in doc.get("Statement", []):
        if statement.get("Effect") == "Allow":
            listed = statement.get("Action", [])
            actions.extend([listed] if isinstance(listed, str) else listed)
    source = path.name
    try:
        from stack import policies
    except ImportError:
        return actions, source
    if hasattr(policies, "needs") and hasattr(policies, "database_policy") and policies.needs(function, "database"):
        for statement in policies.database_policy()["Statement"]:
            if isinstance(statement, dict) and statement.get("Effect") == "Allow":
                listed = statement.get("Action", [])
                actions.extend([listed] if isinstance(listed, str) else listed)
        source += " + stack/policies.py database_policy()"
    return actions, source


def allows(actions: list[str], action: str) -> bool:
    return any(fnmatch.fnmatchcase(action.lower(), pattern.lower()) for pattern in actions)


def test_every_handler_was_exercised(observed: OperationRecorder) -> None:
    assert set(observed.actions) == set(FUNCTIONS)
    for function in FUNCTIONS:  # each reads the configuration itself: a cache shared between them hides it
        assert "ssm:GetParametersByPath" in observed.actions[function], function
    assert {
        "s3:PutObject",
        "s3:PutObjectTagging",
        "s3:AbortMultipartUpload",
        "s3:DeleteObject",
        "secretsmanager:GetSecretValue",
        "ssm:GetParametersByPath",
    } <= observed.actions["backup_worker"]
    assert {"sqs:SendMessage", "dynamodb:PutItem"} <= observed.actions["dispatcher"]


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("function", FUNCTIONS)
def test_policy_grants_every_action_the_handler_uses(observed: OperationRecorder, stage: str, function: str) -> None:
    actions, source = granted(stage, function)
    used = observed.actions[function]
    missing = sorted(a for a in used if not allows(actions, a))
    calls = sorted(f"{s}:{op}" for s, op in observed.calls[function])
    assert missing == [], f"{function} ({stage}) uses {missing} but {source} does not allow them; calls: {calls}"
    expected_without_calls = (
        RUNTIME_ACTIONS | SSE_KMS_ACTIONS | (EVENT_SOURCE_ACTIONS if function in SQS_TRIGGERED else set())
    )
    unused = sorted({a for a in actions if "*" not in a and a not in used and a not in expected_without_calls})
    exercised = [a for a in unused if a.startswith(EXERCISED_SERVICES)]
    other = [a for a in unused if not a.startswith(EXERCISED_SERVICES)]
    if exercised:
        warnings.warn(f"{function} ({stage}): granted but not used in the exercised paths: {exercised}", stacklevel=1)
    if other:
        warnings.warn(f"{function} ({stage}): granted for paths these tests do not exercise: {other}", stacklevel=1)
