"""The integrity features' IAM (signed WAL, base manifests and drill evidence read at their first version), checked
against the calls the code really makes: chalicelib.pitr and chalicelib.drills run against moto (a versioned Object
Lock bucket named as the stack names it, a KMS HMAC key), each call recorded with its IAM action, resource and
request keys (s3:prefix, the lock's mode and days), then evaluated per role with the evaluator of
tests/reliability/test_restore_iam.py:

- the WAL stream task of `shop` (stack/recovery_capabilities.py): its stream, a base backup and the lock pass;
- the operator (the template's OperatorRecoveryPolicy): `recover` (plan, unpack), `wal-fetch`, `wal-prune`;
- the snapshot pruner: its daily wal-prune of every streaming target (chalicelib.pitr.prune_runs, target `billing`);
- the snapshot sweeper and the backup worker write evidence; the sweeper and the API read and verify it.

Each role may make its own calls, and the same calls are refused to roles without the capability, for another
target's prefix, on another key, or beyond the lock bounds."""

from __future__ import annotations

import contextlib
import io
import math
import random
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest

from chalicelib import wiring
from chalicelib.adapters.kms import KmsMacKey
from chalicelib.adapters.s3 import S3Store
from chalicelib.config import Config, RetentionPolicy, parse_config
from chalicelib.drills.evidence import EvidenceStore
from chalicelib.drills.model import DrillRecord, new_drill_id
from chalicelib.pitr import recover
from chalicelib.pitr.basebackup import BaseBackup, BaseLayout, BaseObject, list_bases, read_bases, write_manifest
from chalicelib.pitr.protect import protect_bases, wal_lock_days
from chalicelib.pitr.prune import prune_wal
from chalicelib.pitr.prune_runs import prune_archives
from chalicelib.pitr.sealing import Sealer
from chalicelib.pitr.walarchive import WalArchive, compress
from chalicelib.pitr.walnames import Segment, WalLayout, format_lsn
from devstack.aws import MotoServer
from stack import names, policies
from stack.capabilities import MAX_LOCK_DAYS
from stack.template.operators import operator_recovery_document, operator_resources
from tests.reliability.support import iam_actions
from tests.reliability.test_restore_iam import ACCOUNT, REGION, STAGES, Resource, authorized, policy

SIZE = 1024 * 1024
NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
POLICY = RetentionPolicy.model_validate(
    {"daily_days": 3, "weekly_weeks": 3, "monthly_months": 2, "yearly_years": 0, "keep_last": 1}
)
MODE = "GOVERNANCE"
BUCKET_OPS = ("ListObjectsV2", "ListObjectVersions", "ListMultipartUploads")
OTHER_FUNCTIONS = ("dispatcher", "restore_worker", "restore_sweeper")  # no access to the archive nor evidence


@dataclass(frozen=True)
class Call:
    action: str
    resource: str
    context: tuple[tuple[str, str], ...] = ()

    def moved(self, old: str, new: str) -> Call:
        """The same call on another key or prefix (old → new in the resource and s3:prefix)."""
        context = tuple((k, v.replace(old, new) if k == "s3:prefix" else v) for k, v in self.context)
        return Call(self.action, self.resource.replace(old, new), context)


@dataclass
class CallRecorder:
    """Every S3 and KMS call made while a role is set, with its IAM action, resource ARN and request keys."""

    current: str | None = None
    calls: dict[str, set[Call]] = field(default_factory=dict)

    def on_params(self, params: dict[str, Any], model: Any, **_: Any) -> None:
        if self.current is None:
            return
        service, op = model.service_model.endpoint_prefix, model.name
        found = self._kms(op, params) if service == "kms" else self._s3(op, params)
        self.calls.setdefault(self.current, set()).update(found)

    @staticmethod
    def _kms(op: str, params: dict[str, Any]) -> list[Call]:
        return [Call(f"kms:{op}", str(params["KeyId"]))]

    @staticmethod
    def _s3(op: str, params: dict[str, Any]) -> list[Call]:
        bucket = f"arn:aws:s3:::{params['Bucket']}"
        if op in BUCKET_OPS:
            prefix = (("s3:prefix", str(params.get("Prefix", ""))),)
            return [Call(a, bucket, prefix) for a in iam_actions("s3", op, {})]
        if op == "DeleteObjects":
            return [
                Call(
                    next(iter(iam_actions("s3", "DeleteObject", {}, bool(o.get("VersionId"))))), f"{bucket}/{o['Key']}"
                )
                for o in params["Delete"]["Objects"]
            ]
        headers = {"x-amz-tagging": params.get("Tagging", ""), "x-amz-object-lock-mode": params.get("ObjectLockMode")}
        context: tuple[tuple[str, str], ...] = ()
        if op == "PutObjectRetention":
            retention = params["Retention"]
            days = math.ceil((retention["RetainUntilDate"] - NOW) / timedelta(days=1))
            context = (
                ("s3:object-lock-mode", retention["Mode"]),
                ("s3:object-lock-remaining-retention-days", str(days)),
            )
        actions = iam_actions("s3", op, {k: v for k, v in headers.items() if v}, bool(params.get("VersionId")))
        return [Call(a, f"{bucket}/{params['Key']}", context) for a in actions]


def allowed(doc: dict[str, Any], call: Call, alias: str | None = None) -> bool:
    """`call` authorized by `doc`; KMS calls on a key carrying `alias` (kms:ResourceAliases)."""
    context = dict(call.context)
    if call.action.startswith("kms:") and alias:
        context["kms:ResourceAliases"] = alias
    return authorized(doc, call.action, [Resource(call.resource, account=ACCOUNT)], None, **context)


def resolved(doc: dict[str, Any], mode: str) -> dict[str, Any]:
    """A template policy with the stack's ObjectLockMode parameter set to `mode`."""

    def sub(value: Any) -> Any:
        if value == {"Ref": "ObjectLockMode"}:
            return mode
        if isinstance(value, dict):
            return {k: sub(v) for k, v in value.items()}
        return [sub(v) for v in value] if isinstance(value, list) else value

    return dict(sub(doc))


def seg(number: int) -> Segment:
    return Segment(1, number, SIZE)


def put_base(store: S3Store, sealer: Sealer | None, started: datetime, first: int, target: str = "shop") -> BaseBackup:
    """A base backup of `target` (segments first .. first+1) as run_base_backup writes it: tar, then signed manifest."""
    layout = BaseLayout("", target)
    bid = started.strftime("%Y%m%dT%H%M%SZ")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("PG_VERSION")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"15\n"))
    data = store.put_bytes(layout.folder(bid) + "base.tar.zst", compress(buf.getvalue()), tags={"kind": "base"})
    base = BaseBackup(
        target=target,
        backup_id=bid,
        started_at=started,
        finished_at=started + timedelta(minutes=5),
        server_version_num=150000,
        timeline=1,
        start_lsn=format_lsn(seg(first).start_lsn + 40),
        end_lsn=format_lsn(seg(first + 1).start_lsn + 40),
        segment_size=SIZE,
        tar_size=0,
        tar_sha256="0" * 64,
        objects=[BaseObject(role="data", key=data.key, size=data.size, sha256=data.sha256, version_id=data.version_id)],
        backup_label="",
    )
    return write_manifest(store, layout, base, {"kind": "base"}, sealer)


def finished_drill(seed: int) -> DrillRecord:
    started = NOW - timedelta(hours=1)
    return DrillRecord(
        drill_id=new_drill_id(random.Random(seed)),  # noqa: S311 (a fixed id for the test)
        target="shop",
        kind="logical",
        pick="latest",
        started_at=started,
        status="SUCCEEDED",
        finished_at=NOW,
    )


def _wal_task(store: S3Store, sealer: Sealer) -> None:
    """`lifeboat wal-stream shop` and `base-backup shop`: segments, a partial, a history file, a base, the lock pass."""
    archive = WalArchive(
        store, WalLayout("", "shop"), lock_mode=MODE, lock_days=wal_lock_days(POLICY), clock=lambda: NOW, sealer=sealer
    )
    archive.put_partial(seg(3), b"\x03" * SIZE)
    for number in (3, 4):
        archive.put_segment(seg(number), bytes([number]) * SIZE)
    archive.put_history(2, b"1\t0/4000000\tno recovery target specified\n")
    newest = archive.newest(SIZE)
    assert newest is not None
    put_base(store, sealer, NOW - timedelta(days=1), 3)
    bases = read_bases(store, BaseLayout("", "shop"), sealer)[0]
    assert len(bases) == 2  # the fixture's old one too
    assert protect_bases(store, "", "shop", POLICY, MODE, NOW, bases)


def _operator(store: S3Store, sealer: Sealer, pgdata: Path) -> None:
    """`wal-fetch`, `recover --latest` (plan and unpack) and `wal-prune` of `shop`."""
    archive = WalArchive(store, WalLayout("", "shop"), sealer=sealer)
    assert archive.fetch(seg(3).name) is not None
    bases = list_bases(store, BaseLayout("", "shop"), sealer)
    plan = recover.plan(bases, archive.entries(SIZE), archive.gaps(), recover.RecoveryTarget(), "x", lambda m: m)
    recover.unpack_base(store, plan.base, pgdata)
    report = prune_wal(store, "", "shop", POLICY, NOW, sealer=sealer)
    assert report.deleted_bases and report.deleted_wal and not report.errors, report
    later = NOW + timedelta(days=10)  # a pass ten days on extends the newest base's keep lock (and its WAL's)
    assert protect_bases(store, "", "shop", POLICY, MODE, later, list_bases(store, BaseLayout("", "shop"), sealer))


def pruner_config(bucket: str, key: str) -> Config:
    """The deployed configuration's shape: one streaming target, `billing`, manifests signed with `key`."""
    connection = {"host": "db.internal", "port": 5432, "database": "billing", "user": "lifeboat_backup"}
    connection["password_secret"] = f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:lifeboat/billing-AbCdEf"
    return parse_config(
        {
            "settings": {
                "bucket": bucket,
                "signing_key_id": key,
                "retention_policies": {"default": POLICY.model_dump()},
            },
            "targets": [{"name": "billing", "connection": connection, "wal": {}}],
        }
    )


def _pruner(recorder: CallRecorder, store: S3Store, sealer: Sealer, cfg: Config) -> None:
    """The snapshot pruner's daily pass over `billing`: an old base the policy drops and its WAL go, through the
    clients the Lambda function builds (chalicelib.wiring)."""
    archive = WalArchive(store, WalLayout("", "billing"), sealer=sealer)
    put_base(store, sealer, NOW - timedelta(days=200), 1, "billing")
    put_base(store, sealer, NOW - timedelta(days=1), 3, "billing")
    for number in (1, 3, 4):
        archive.put_segment(seg(number), bytes([number]) * SIZE)
    clients = (wiring.client("s3"), wiring.client.get("kms"))
    for client in clients:
        client.meta.events.register("before-parameter-build", recorder.on_params)
    try:
        with _as(recorder, "snapshot_pruner"):
            outcome = prune_archives(cfg, NOW)
    finally:
        for client in clients:
            client.meta.events.unregister("before-parameter-build", recorder.on_params)
    assert not outcome.failures, outcome
    assert outcome.reports["billing"]["deleted_bases"] and outcome.reports["billing"]["deleted_wal"], outcome


def _drills(recorder: CallRecorder, store: S3Store, sealer: Sealer) -> None:
    evidence = EvidenceStore(None, store, "", MODE, sealer=sealer)
    with _as(recorder, "backup_worker"):  # a logical drill finishes in the worker
        evidence.save(finished_drill(1))
    with _as(recorder, "snapshot_sweeper"):  # a snapshot drill finishes in the sweeper, which checks overdue ones
        saved = evidence.save(finished_drill(2))
        unnamed = saved.model_copy(update={"evidence_version": None})  # the first version is found by listing
        assert [r.status for r in evidence.verified([saved, unnamed])] == ["SUCCEEDED", "SUCCEEDED"]
    with _as(recorder, "api_handler"):  # GET /targets/shop/drills
        assert [r.status for r in evidence.verified([saved, unnamed])] == ["SUCCEEDED", "SUCCEEDED"]


@contextlib.contextmanager
def _as(recorder: CallRecorder, role: str) -> Iterator[None]:
    previous, recorder.current = recorder.current, role
    try:
        yield
    finally:
        recorder.current = previous


def lock_keys(mode: str, days: int) -> tuple[tuple[str, str], ...]:
    return (("s3:object-lock-mode", mode), ("s3:object-lock-remaining-retention-days", str(days)))


@pytest.fixture(scope="module", params=STAGES)
def recorded(
    request: pytest.FixtureRequest, moto_server: MotoServer, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, dict[str, set[Call]]]:
    stage: str = request.param
    moto_server.reset()
    s3, kms = boto3.client("s3"), boto3.client("kms")
    bucket = f"{names.bucket_prefix(stage)}{ACCOUNT}-{s3.meta.region_name}"
    s3.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    key = kms.create_key(KeySpec="HMAC_256", KeyUsage="GENERATE_VERIFY_MAC")["KeyMetadata"]["Arn"]
    store, sealer = S3Store(s3, bucket), Sealer(KmsMacKey(lambda: kms, key))
    old = put_base(store, sealer, NOW - timedelta(days=200), 1)  # the policy drops it; nothing locks it
    WalArchive(store, WalLayout("", "shop"), sealer=sealer).put_segment(seg(1), b"\x01" * SIZE)
    assert old.backup_id
    recorder = CallRecorder()
    for client in (s3, kms):
        client.meta.events.register("before-parameter-build", recorder.on_params)
    with _as(recorder, "wal_task"):
        _wal_task(store, sealer)
    with _as(recorder, "operator"):
        _operator(store, sealer, tmp_path_factory.mktemp("pgdata") / "data")
    _pruner(recorder, store, sealer, pruner_config(bucket, key))
    _drills(recorder, store, sealer)
    return stage, recorder.calls


def roles(stage: str) -> dict[str, dict[str, Any]]:
    functions = ("backup_worker", "snapshot_sweeper", "api_handler", "snapshot_pruner", *OTHER_FUNCTIONS)
    docs = {f: policy(stage, f) for f in functions}
    docs["wal_task"] = policies.wal_stream_task_policy(stage, "shop")
    docs["operator"] = resolved(operator_recovery_document(stage), MODE)
    return docs


INTEGRITY_ACTIONS: dict[str, set[str]] = {  # what each role's integrity path calls: the test fails if a path goes
    "wal_task": {"kms:GenerateMac", "kms:VerifyMac", "s3:ListBucketVersions", "s3:GetObjectVersion"},
    "operator": {"kms:VerifyMac", "s3:ListBucketVersions", "s3:GetObjectVersion", "s3:DeleteObject"},
    "snapshot_sweeper": {"kms:GenerateMac", "kms:VerifyMac", "s3:ListBucketVersions", "s3:GetObjectVersion"},
    "backup_worker": {"kms:GenerateMac", "s3:PutObject", "s3:PutObjectRetention"},
    "api_handler": {"kms:VerifyMac", "s3:ListBucketVersions", "s3:GetObjectVersion"},
    "snapshot_pruner": {"kms:VerifyMac", "s3:ListBucketVersions", "s3:GetObjectVersion", "s3:DeleteObject"},
}


def test_list_object_versions_is_list_bucket_versions() -> None:
    assert iam_actions("s3", "ListObjectVersions", {}) == {"s3:ListBucketVersions"}


def test_each_role_may_make_its_integrity_calls(recorded: tuple[str, dict[str, set[Call]]]) -> None:
    stage, calls = recorded
    docs, alias = roles(stage), names.signing_key_alias(stage)
    assert set(calls) == set(INTEGRITY_ACTIONS)
    for role, wanted in INTEGRITY_ACTIONS.items():
        assert wanted <= {c.action for c in calls[role]}, role
        refused = [c for c in calls[role] if not allowed(docs[role], c, alias)]
        assert refused == [], f"{role} ({stage}) may not make these calls: {refused}"
        for call in calls[role]:  # the signing key only: a key without the stack's alias is refused
            if call.action.startswith("kms:"):
                assert not allowed(docs[role], call, "alias/someone-elses"), (role, call)
    assert "kms:GenerateMac" not in {
        c.action for c in calls["api_handler"] | calls["operator"] | calls["snapshot_pruner"]
    }


def test_the_wal_task_reaches_only_its_own_target(recorded: tuple[str, dict[str, set[Call]]]) -> None:
    stage, calls = recorded
    task = roles(stage)["wal_task"]
    s3_calls = [c for c in calls["wal_task"] if c.action.startswith("s3:")]
    assert any(c.action == "s3:ListBucketVersions" for c in s3_calls)
    for call in s3_calls:
        for old, new in (("wal/shop/", "wal/billing/"), ("base/shop/", "base/billing/")):
            if old in call.resource or old in dict(call.context).get("s3:prefix", ""):
                assert not allowed(task, call.moved(old, new)), call.moved(old, new)
    bucket = s3_calls[0].resource.split("/")[0]
    for prefix in ("logical/shop/", "drills/shop/", ""):
        assert not allowed(task, Call("s3:ListBucketVersions", bucket, (("s3:prefix", prefix),))), prefix
    segment = f"{bucket}/wal/shop/00000001/{seg(3).name}"
    assert allowed(task, Call("s3:GetObjectVersion", segment))
    assert not allowed(task, Call("s3:DeleteObjectVersion", segment))


def test_evidence_reads_are_for_the_sweeper_and_the_api_only(recorded: tuple[str, dict[str, set[Call]]]) -> None:
    stage, calls = recorded
    docs = roles(stage)
    listings = [c for c in calls["api_handler"] if c.action == "s3:ListBucketVersions"]
    assert listings and all("drills/shop/" in dict(c.context)["s3:prefix"] for c in listings)
    for role in ("wal_task", "operator", "backup_worker", "snapshot_pruner", *OTHER_FUNCTIONS):
        for call in listings:
            assert not allowed(docs[role], call), (role, call)
    for role in ("snapshot_sweeper", "api_handler"):  # a listing of anything but an evidence document is refused
        for call in listings:
            if role == "snapshot_sweeper":  # the API lists logical backups' versions too (ListBackupVersions)
                assert not allowed(docs[role], call.moved("drills/shop/", "logical/shop/")), role
            assert not allowed(docs[role], call.moved("drills/shop/", "wal/shop/")), role
            assert not allowed(docs[role], Call(call.action, call.resource, (("s3:prefix", "drills/"),))), role
    reads = [c for c in calls["snapshot_sweeper"] if c.action in ("s3:GetObject", "s3:GetObjectVersion")]
    assert reads
    for call in reads:  # the sweeper reads evidence documents and nothing else of the bucket
        assert not allowed(docs["snapshot_sweeper"], call.moved("drills/shop/", "logical/shop/")), call


def test_the_operator_prunes_wal_and_bases_but_nothing_else(recorded: tuple[str, dict[str, set[Call]]]) -> None:
    stage, calls = recorded
    doc = roles(stage)["operator"]
    deletes = [c for c in calls["operator"] if c.action == "s3:DeleteObject"]
    assert {c.resource.split("/")[1] for c in deletes} == {"wal", "base"}
    bucket = deletes[0].resource.split("/")[0]
    for key in ("logical/shop/2026/11/29/20261129T030000Z/database.dump", "snapshots/shop/x/backup_label.json"):
        for action in ("s3:DeleteObject", "s3:GetObject", "s3:PutObjectRetention"):
            assert not allowed(doc, Call(action, f"{bucket}/{key}")), (action, key)
    assert not allowed(doc, Call("s3:DeleteObject", f"{bucket}/drills/shop/2026/x_d-1.json"))
    assert allowed(doc, Call("s3:DeleteObject", f"{bucket}/team/wal/billing/00000001/{seg(1).name}"))  # any target
    for call in deletes:
        assert not allowed(doc, Call("s3:DeleteObjectVersion", call.resource))
        assert not allowed(doc, Call("s3:BypassGovernanceRetention", call.resource))
    locks = [c for c in calls["operator"] if c.action == "s3:PutObjectRetention"]
    assert locks, "the lock pass after wal-prune extends the kept bases' locks"
    target = locks[0].resource
    assert allowed(doc, Call("s3:PutObjectRetention", target, lock_keys(MODE, MAX_LOCK_DAYS)))
    assert not allowed(doc, Call("s3:PutObjectRetention", target, lock_keys(MODE, MAX_LOCK_DAYS + 1)))
    assert not allowed(doc, Call("s3:PutObjectRetention", target, lock_keys("COMPLIANCE", 30)))  # the stack's mode
    compliant = resolved(operator_recovery_document(stage), "COMPLIANCE")
    assert allowed(compliant, Call("s3:PutObjectRetention", target, lock_keys("COMPLIANCE", 30)))
    assert not allowed(resolved(operator_recovery_document(stage), "NONE"), locks[0])


@pytest.mark.parametrize("stage", STAGES)
def test_the_operator_recovery_policy_is_in_the_template_attached_to_nothing(stage: str) -> None:
    resources = operator_resources(stage)
    props = resources["OperatorRecoveryPolicy"]["Properties"]
    assert resources["OperatorRecoveryPolicy"]["Type"] == "AWS::IAM::ManagedPolicy"
    assert not {"Roles", "Users", "Groups"} & set(props)
    assert props["PolicyDocument"] == operator_recovery_document(stage)
    assert policies.LOCK_IN_THE_STACKS_MODE_ONLY in props["PolicyDocument"]["Statement"]
    sids = [st.get("Sid") for st in props["PolicyDocument"]["Statement"]]
    assert len(sids) == len(set(sids))


def test_the_pruner_deletes_wal_and_bases_only_and_never_a_version(recorded: tuple[str, dict[str, set[Call]]]) -> None:
    stage, calls = recorded
    doc = roles(stage)["snapshot_pruner"]
    pruner = calls["snapshot_pruner"]
    deletes = [c for c in pruner if c.action == "s3:DeleteObject"]
    assert {tuple(c.resource.split("/")[1:3]) for c in deletes} == {("base", "billing"), ("wal", "billing")}
    assert not {c.action for c in pruner} & {"s3:PutObject", "s3:PutObjectRetention", "kms:GenerateMac"}
    bucket = deletes[0].resource.split("/")[0]
    for prefix in ("", "pg/"):
        assert allowed(doc, Call("s3:DeleteObject", f"{bucket}/{prefix}wal/shop/00000001/{seg(1).name}"))  # any target
        assert allowed(doc, Call("s3:DeleteObject", f"{bucket}/{prefix}base/shop/20261129T030000Z/manifest.json"))
        assert allowed(doc, Call("s3:DeleteObject", f"{bucket}/{prefix}snapshots/shop/x/backup_label.json"))  # labels
        for key in (
            "logical/shop/2026/11/29/20261129T030000Z/database.dump",
            "logical/shop/2026/11/29/20261129T030000Z/databases/wal/database.dump",  # a database named `wal`
            "logical/shop/2026/11/29/20261129T030000Z/databases/base/manifest.json",
            "failed/shop/x/wal/y.json",
            "drills/shop/2026/x_d-1.json",
            "snapshots/shop/x/other.json",
            "check/wal/x",
        ):
            assert not allowed(doc, Call("s3:DeleteObject", f"{bucket}/{prefix}{key}")), key
        for listed in ("logical/shop/", "drills/shop/", "snapshots/shop/", ""):
            assert not allowed(doc, Call("s3:ListBucketVersions", bucket, (("s3:prefix", prefix + listed),))), listed
    for call in [c for c in pruner if c.action.startswith("s3:") and "/" in c.resource]:
        for action in ("s3:DeleteObjectVersion", "s3:BypassGovernanceRetention", "s3:PutObject", "s3:PutObjectTagging"):
            assert not allowed(doc, Call(action, call.resource)), (action, call.resource)
        assert not allowed(doc, Call("s3:PutObjectRetention", call.resource, lock_keys(MODE, 30)))
    for call in [c for c in pruner if c.action.startswith("kms:")]:
        assert not allowed(doc, Call("kms:GenerateMac", call.resource), names.signing_key_alias(stage))
