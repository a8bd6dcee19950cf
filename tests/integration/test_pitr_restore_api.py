"""POST /targets/{target}/restores, the WAL form (time, latest or lsn) for a target with a WAL stream: the plan as
`lifeboat recover` would make it, answered at once as a SUCCEEDED job of kind `wal`, against a catalog written into
moto with the archive's own writers (signed base manifests, sealed WAL segments, a recorded gap) on a fixed clock that
moto's S3 and EC2 follow; an app-consistent EBS snapshot set as the base (the API creates nothing); refusals that
say what is restorable."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest

from chalicelib import wiring
from chalicelib.adapters.kms import KmsMacKey
from chalicelib.cli import main as lifeboat_main
from chalicelib.pitr.basebackup import BaseBackup, BaseLayout, BaseObject, write_manifest
from chalicelib.pitr.sealing import Sealer
from chalicelib.pitr.walarchive import WalArchive
from chalicelib.pitr.walnames import DEFAULT_SEGMENT_SIZE, Gap, Segment, WalLayout, format_lsn
from chalicelib.restore.model import RestoreJob
from devstack.chalice_local import client as chalice_client
from devstack.local import LocalStack, write_config

REPO = Path(__file__).resolve().parents[2]
T0 = datetime(2026, 3, 1, 3, 0, tzinfo=UTC)
ALIAS = "alias/pg-lifeboat-test-manifests"
ZERO_SEGMENT = bytes(DEFAULT_SEGMENT_SIZE)
MIN = timedelta(minutes=1)


@dataclass
class Clock:
    now: datetime

    def __call__(self) -> datetime:
        return self.now


def seg(number: int) -> Segment:
    return Segment(1, number)


def connection(aws: LocalStack) -> dict[str, Any]:
    """Never connected to: a WAL recovery plan reads the bucket only."""
    return {"host": "127.0.0.1", "port": 1, "database": "shop", "user": "u", "password_secret": aws.secret_arn}


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    """The writers' clock and moto's (S3 LastModified, EBS StartTime), driven together."""
    import moto.ec2.models.elastic_block_store
    import moto.s3.models

    clock = Clock(T0)
    naive = lambda: clock.now.astimezone(UTC).replace(tzinfo=None)  # noqa: E731
    monkeypatch.setattr(moto.s3.models, "utcnow", naive)
    monkeypatch.setattr(moto.ec2.models.elastic_block_store, "utcnow", naive)
    return clock


@pytest.fixture
def sealer(aws: LocalStack) -> Sealer:
    kms = boto3.client("kms")
    key = kms.create_key(KeySpec="HMAC_256", KeyUsage="GENERATE_VERIFY_MAC")["KeyMetadata"]["Arn"]
    kms.create_alias(AliasName=ALIAS, TargetKeyId=key)
    return Sealer(KmsMacKey(lambda: kms, key))


@pytest.fixture
def disk(aws: LocalStack) -> str:
    """The EBS target's data volume, in us-east-1b (where new volumes go unless the request or config says)."""
    return str(boto3.client("ec2").create_volume(AvailabilityZone="us-east-1b", Size=10)["VolumeId"])


@pytest.fixture
def api(
    aws: LocalStack, clock: Clock, sealer: Sealer, disk: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Any]:
    """shop (streamed, pg_basebackup bases), disks (EBS, app-consistent, streamed), plain (no wal section)."""
    ebs = {"method": "ebs", "volume_ids": [disk], "app_consistent": True, "restore": {"availability_zones": []}}
    targets = [
        {"name": "shop", "connection": connection(aws), "wal": {}},
        {"name": "disks", "connection": connection(aws), "wal": {}, "physical": ebs},
        {"name": "plain", "connection": connection(aws), "logical": {"schedule": None}},
    ]
    path = write_config(tmp_path / "lifeboat.json", aws.bucket, targets, signing_key_id=ALIAS)
    monkeypatch.setenv("LIFEBOAT_CONFIG", str(path))
    import app as lambda_app

    with chalice_client(lambda_app.app, project_dir=str(REPO)) as c:
        yield c


def put_base(target: str, started: datetime, start: int, sealer: Sealer | None) -> BaseBackup:
    """A base manifest as run_base_backup writes it (signed with `sealer`): started at `started`, finished 5 minutes
    later, needing WAL segments `start` .. `start + 1`."""
    store = wiring.store(wiring.load_config())
    bid = started.strftime("%Y%m%dT%H%M%SZ")
    layout = BaseLayout("", target)
    data = store.put_bytes(layout.folder(bid) + "base.tar.zst", b"not read by a plan")
    base = BaseBackup(
        target=target,
        backup_id=bid,
        started_at=started,
        finished_at=started + 5 * MIN,
        server_version_num=160004,
        timeline=1,
        start_lsn=format_lsn(seg(start).start_lsn + 40),
        end_lsn=format_lsn(seg(start + 1).start_lsn + 40),
        segment_size=DEFAULT_SEGMENT_SIZE,
        tar_size=1,
        tar_sha256=data.sha256,
        objects=[BaseObject(role="data", key=data.key, size=data.size, sha256=data.sha256)],
        backup_label="",
    )
    return write_manifest(store, layout, base, {}, sealer)


def put_wal(
    target: str, clock: Clock, sealer: Sealer, uploads: list[tuple[int, timedelta]], partial: bool = False
) -> None:
    """Finished segments (the last one as the open .partial with `partial`), each uploaded at T0 + its offset."""
    archive = WalArchive(wiring.store(wiring.load_config()), WalLayout("", target), clock=clock, sealer=sealer)
    for i, (number, at) in enumerate(uploads):
        clock.now = T0 + at
        if partial and i == len(uploads) - 1:
            archive.put_partial(seg(number), ZERO_SEGMENT)
        else:
            archive.put_segment(seg(number), ZERO_SEGMENT)


@pytest.fixture
def shop(api: Any, clock: Clock, sealer: Sealer) -> dict[str, BaseBackup]:
    """Base A (T0, WAL 2..3), WAL 2..6, a gap after 6 (detected T0+100m), base B (T0+120m, WAL 10..11), WAL 10..12
    and the open 13; a newer base C whose manifest is not signed. Restorable: T0+5m .. T0+80m (A, ended by the gap),
    T0+125m .. T0+160m (B)."""
    a = put_base("shop", T0, 2, sealer)
    put_wal("shop", clock, sealer, [(2, 6 * MIN), (3, 20 * MIN), (4, 40 * MIN), (5, 60 * MIN), (6, 80 * MIN)])
    clock.now = T0 + 100 * MIN
    archive = WalArchive(wiring.store(wiring.load_config()), WalLayout("", "shop"), clock=clock, sealer=sealer)
    archive.record_gap(Gap(seg(6).name, seg(10).name, "slot dropped"))
    b = put_base("shop", T0 + 120 * MIN, 10, sealer)
    put_wal("shop", clock, sealer, [(10, 126 * MIN), (11, 130 * MIN), (12, 150 * MIN), (13, 160 * MIN)], partial=True)
    c = put_base("shop", T0 + 130 * MIN, 12, None)  # forged: whoever may PutObject, without the signing key
    return {"a": a, "b": b, "c": c}


def reconfigure(cfg: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "changed.json"
    path.write_text(json.dumps(cfg))
    monkeypatch.setenv("LIFEBOAT_CONFIG", str(path))


def post(c: Any, target: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> tuple[int, Any]:
    r = c.http.post(
        f"/targets/{target}/restores",
        body=json.dumps(body),
        headers={"Content-Type": "application/json", **(headers or {})},
    )
    return r.status_code, json.loads(r.body)


def at(delta: timedelta) -> str:
    return (T0 + delta).isoformat()


def test_a_time_is_planned_with_the_base_the_wal_and_the_command(
    api: Any, shop: dict[str, BaseBackup], aws: LocalStack
) -> None:
    status, job = post(api, "shop", {"time": at(30 * MIN)})
    assert status == 201, job
    assert job["kind"] == "wal" and job["status"] == "SUCCEEDED" and job["target"] == "shop"
    result = job["result"]
    assert result["base"] == {
        "backup_id": shop["a"].backup_id,
        "kind": "base_backup",
        "postgres_major": 16,
        "server_version_num": 160004,
        "timeline": 1,
        "start_lsn": shop["a"].start_lsn,
        "end_lsn": shop["a"].end_lsn,
        "started_at": T0.isoformat(),
        "finished_at": at(5 * MIN),
        "signature": "VALID",
    }
    # From the base's first segment to the one uploaded first at or after T (which holds T).
    assert result["wal"] == {"first_segment": seg(2).name, "last_segment": seg(4).name, "newest_archived": seg(13).name}
    assert result["command"] == "lifeboat recover shop --time 2026-03-01T03:30:00+00:00 --pgdata <PGDATA>"
    assert "<PGDATA>" in result["fill_in"] and "PostgreSQL 16" in result["requires"]
    assert "snapshot_set" not in result
    # The job is recorded like every restore (never queued: nothing is left for a worker).
    stored = json.loads(api.http.get(f"/targets/shop/restores/{job['restore_id']}").body)
    assert stored["result"] == result and stored["status"] == "SUCCEEDED"
    queue = boto3.client("sqs").get_queue_attributes(
        QueueUrl=aws.restore_queue_url, AttributeNames=["ApproximateNumberOfMessages"]
    )
    assert queue["Attributes"]["ApproximateNumberOfMessages"] == "0"


def test_an_unsigned_base_is_never_offered(api: Any, shop: dict[str, BaseBackup]) -> None:
    """Base C (unsigned, newer than B) would be the newest base before T0+140m: B is used, C is named as refused."""
    status, job = post(api, "shop", {"time": at(140 * MIN), "pgdata": "/srv/pg/16/restored"})
    assert status == 201, job
    result = job["result"]
    assert result["base"]["backup_id"] == shop["b"].backup_id
    assert [k for k in result["not_offered"] if shop["c"].backup_id in k], result["not_offered"]
    assert "no signature" in json.dumps(result["not_offered"])
    assert result["command"].endswith("--pgdata /srv/pg/16/restored") and "fill_in" not in result


def test_latest_and_lsn(api: Any, shop: dict[str, BaseBackup]) -> None:
    status, job = post(api, "shop", {"latest": True})
    assert status == 201, job
    assert job["result"]["base"]["backup_id"] == shop["b"].backup_id
    assert job["result"]["wal"]["last_segment"] == seg(13).name + ".partial"
    assert job["result"]["command"] == "lifeboat recover shop --latest --pgdata <PGDATA>"
    lsn = format_lsn(seg(12).start_lsn + 100)
    status, job = post(api, "shop", {"lsn": lsn, "pgdata": "/data/x"})
    assert status == 201, job
    assert job["result"]["base"]["backup_id"] == shop["b"].backup_id
    assert job["result"]["wal"] == {
        "first_segment": seg(10).name,
        "last_segment": seg(12).name,
        "newest_archived": seg(13).name,
    }
    assert job["result"]["command"] == f"lifeboat recover shop --lsn {lsn} --pgdata /data/x"
    status, error = post(api, "shop", {"lsn": format_lsn(seg(14).start_lsn)})
    assert status == 409 and "beyond the newest archived WAL" in error["message"], error


@pytest.mark.parametrize(
    ("when", "why"),
    [(-60 * MIN, "before the oldest base"), (90 * MIN, "across the gap"), (170 * MIN, "after the newest WAL")],
)
def test_a_time_outside_the_window_is_409_saying_what_is_restorable(
    api: Any, shop: dict[str, BaseBackup], when: timedelta, why: str
) -> None:
    status, error = post(api, "shop", {"time": at(when)})
    assert status == 409 and error["error"] == "conflict", (why, error)
    message = error["message"]
    assert f"{at(when)} is not restorable" in message, message
    assert f"{at(5 * MIN)} .. {at(80 * MIN)} (base {shop['a'].backup_id})" in message, message
    assert f"{at(125 * MIN)} .. {at(160 * MIN)} (base {shop['b'].backup_id})" in message, message
    assert json.loads(api.http.get("/targets/shop/restores").body)["restores"] == []


def test_bad_requests(api: Any, shop: dict[str, BaseBackup]) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"time": "2026-03-01T03:30:00"}, "timezone"),
        ({"time": at(30 * MIN), "latest": True}, "exactly one of time"),
        ({"lsn": "3000148"}, "is not an LSN"),
        ({"latest": True, "pgdata": "relative/dir"}, "absolute path"),
        ({"latest": True, "pgdata": "/srv/pg; rm -rf /"}, "absolute path"),
        ({"latest": True, "pgdata": "/srv/$(id)"}, "absolute path"),
        ({"latest": True, "pgdata": "/srv/../etc"}, "'..'"),
        ({"latest": True, "availability_zone": "us-east-1a"}, "availability_zone"),  # the API creates no volume
        ({"latest": True, "create_volumes": True}, "create_volumes"),
    ]
    for body, expected in cases:
        status, error = post(api, "shop", body)
        assert status == 400 and expected in error["message"], (body, error)
    status, error = post(api, "nope", {"latest": True})
    assert status == 404 and "unknown target 'nope'" in error["message"], error
    status, error = post(api, "plain", {"latest": True})
    assert status == 400 and "has no wal section" in error["message"], error


def test_the_path_names_the_target_a_caller_may_plan(api: Any, shop: dict[str, BaseBackup]) -> None:
    """IAM grants execute-api:Invoke per target path: a caller allowed plain's path cannot plan shop's recovery."""
    status, error = post(api, "plain", {"target": "shop", "latest": True})
    assert status == 400 and "/targets/shop/restores" in error["message"], error
    assert json.loads(api.http.get("/targets/shop/restores").body)["restores"] == []
    status, job = post(api, "shop", {"latest": True}, {"Idempotency-Key": "k1"})
    again = post(api, "shop", {"latest": True}, {"Idempotency-Key": "k1"})
    assert status == 201 and again == (201, job), again


def test_the_quota_counts_a_plan_like_any_restore(
    api: Any, shop: dict[str, BaseBackup], aws: LocalStack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = json.loads(Path(wiring.settings().config or "").read_text())
    cfg["settings"]["max_running_restores"] = 1
    reconfigure(cfg, tmp_path, monkeypatch)
    now = datetime.now(UTC)  # the quota counts jobs created within a day of now
    held = RestoreJob(
        restore_id="r-" + "0" * 16, kind="logical", target="plain", request={}, created_at=now, updated_at=now
    )
    wiring.api_services().jobs.create(held)
    status, error = post(api, "shop", {"latest": True})
    assert status == 429 and "max_running_restores" in error["message"], error


def put_snapshot_set(
    clock: Clock, disk: str, slot: datetime, start: int, stopped: datetime, more: tuple[str, ...] = ()
) -> str:
    """An app-consistent set as chalicelib.physical.start leaves it: the snapshot (managed, tagged with its slot and
    its label's key) created by AWS at the slot, and the label document pg_backup_stop's answer became."""
    clock.now = slot + MIN
    set_id = f"snapshot:disks:{slot:%Y%m%dT%H%M%SZ}"
    key = f"snapshots/disks/{slot:%Y%m%dT%H%M%SZ}/backup_label.json"
    bucket = wiring.load_config().settings.bucket
    tags = {
        "lifeboat:managed": "true",
        "lifeboat:target": "disks",
        "lifeboat:slot": f"{slot:%Y-%m-%dT%H:%M:%SZ}",
        "lifeboat:set": set_id,
        "lifeboat:backup-label": f"s3://{bucket}/{key}",
    }
    snapshots = [
        boto3.client("ec2").create_snapshot(
            VolumeId=volume,
            TagSpecifications=[{"ResourceType": "snapshot", "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}],
        )["SnapshotId"]
        for volume in (disk, *more)
    ]
    start_lsn = format_lsn(seg(start).start_lsn + 40)
    labelfile = (
        f"START WAL LOCATION: {start_lsn} (file {seg(start).name})\nCHECKPOINT LOCATION: {start_lsn}\n"
        f"BACKUP METHOD: streamed\nBACKUP FROM: primary\nLABEL: pg-lifeboat {set_id}\nSTART TIMELINE: 1\n"
    )
    label = {
        "label": f"pg-lifeboat {set_id}",
        "server_version_num": 160004,
        "function": "pg_backup_start",
        "start_lsn": start_lsn,
        "stop_lsn": format_lsn(seg(start + 1).start_lsn + 8),
        "labelfile": labelfile,
        "spcmapfile": "",
        "backup_id": set_id,
        "target": "disks",
        "slot": slot.isoformat(),
        "region": "us-east-1",
        "snapshot_ids": snapshots,
        "stopped_at": stopped.isoformat(),
    }
    wiring.store(wiring.load_config()).put_bytes(key, json.dumps(label).encode())
    return set_id


def test_an_app_consistent_snapshot_set_is_the_base_and_the_api_creates_nothing(
    api: Any, clock: Clock, sealer: Sealer, disk: str
) -> None:
    base = put_base("disks", T0, 2, sealer)
    set_id = put_snapshot_set(clock, disk, T0 + 60 * MIN, 6, T0 + 62 * MIN)
    put_wal("disks", clock, sealer, [(n, (10 + 10 * n) * MIN) for n in range(2, 10)])
    status, job = post(api, "disks", {"time": at(90 * MIN), "pgdata": "/srv/pg/disks"})
    assert status == 201 and job["status"] == "SUCCEEDED", job
    result = job["result"]
    assert result["base"]["backup_id"] == set_id and result["base"]["kind"] == "snapshot_set"
    assert result["base"]["signature"].startswith("UNSIGNED: the backup worker does not sign backup labels")
    assert result["wal"]["first_segment"] == seg(6).name and result["wal"]["last_segment"] == seg(8).name
    assert result["command"] == (
        f"lifeboat recover disks --time {at(90 * MIN)} --pgdata /srv/pg/disks --snapshot-set {set_id}"
    )
    snapshot_set = result["snapshot_set"]
    assert [s["source_volume_id"] for s in snapshot_set["snapshots"]] == [disk]
    # The volumes are a snapshot restore's (the worker's, under the quotas): the plan says how to ask for them.
    assert (
        snapshot_set["create_volumes"]["backup_id"] == set_id
        and "POST /targets/disks/restores" in (snapshot_set["next"])
    )
    assert len(boto3.client("ec2").describe_volumes()["Volumes"]) == 1  # the target's disk only
    # Before the set's backup ended, the older pg_basebackup base serves.
    status, job = post(api, "disks", {"time": at(50 * MIN)})
    assert status == 201 and job["result"]["base"]["backup_id"] == base.backup_id, job
    assert "snapshot_set" not in job["result"] and "--snapshot-set" not in job["result"]["command"]


def test_a_newer_base_backup_wins_over_a_snapshot_set_and_a_label_must_match_its_set(
    api: Any, clock: Clock, sealer: Sealer, disk: str
) -> None:
    set_id = put_snapshot_set(clock, disk, T0 + 10 * MIN, 2, T0 + 12 * MIN)
    put_wal("disks", clock, sealer, [(n, (10 + 10 * n) * MIN) for n in range(2, 10)])
    newer = put_base("disks", T0 + 40 * MIN, 4, sealer)
    status, job = post(api, "disks", {"latest": True})
    assert status == 201 and job["result"]["base"]["backup_id"] == newer.backup_id, job
    assert "snapshot_set" not in job["result"]
    # A label naming another snapshot than its set's is not believed: the set is not offered.
    key = f"snapshots/disks/{T0 + 10 * MIN:%Y%m%dT%H%M%SZ}/backup_label.json"
    store = wiring.store(wiring.load_config())
    label = json.loads(store.get_bytes(key))
    store.delete([key])
    store.put_bytes(key, json.dumps({**label, "snapshot_ids": ["snap-0123456789abcdef0"]}).encode())
    status, job = post(api, "disks", {"time": at(30 * MIN)})
    assert status == 409 and "is not restorable" in job["message"], job
    status, job = post(api, "disks", {"time": at(60 * MIN)})
    assert status == 201 and set_id in job["result"]["not_offered"], job
    assert "not the ones its backup label records" in job["result"]["not_offered"][set_id]


def test_a_label_stopped_before_aws_took_its_snapshot_is_refused_by_the_api_and_recover_alike(
    api: Any, clock: Clock, sealer: Sealer, disk: str, tmp_path: Path
) -> None:
    # The label says backup mode ended at T0+50m; AWS created the snapshot at T0+61m (after, say, a harmful DELETE).
    base = put_base("disks", T0, 2, sealer)
    set_id = put_snapshot_set(clock, disk, T0 + 60 * MIN, 6, T0 + 50 * MIN)
    put_wal("disks", clock, sealer, [(n, (10 + 10 * n) * MIN) for n in range(2, 10)])
    status, job = post(api, "disks", {"time": at(55 * MIN)})
    assert status == 201 and job["result"]["base"]["backup_id"] == base.backup_id, job
    why = job["result"]["not_offered"][set_id]
    assert "backup mode ended at" in why and "before AWS created snapshot" in why, why
    # `lifeboat recover --snapshot-set` makes the same check, before it looks at the data directory
    pgdata = tmp_path / "restored"
    pgdata.mkdir()
    out = io.StringIO()
    argv = ["--json", "recover", "disks", "--snapshot-set", set_id, "--time", at(55 * MIN), "--pgdata", str(pgdata)]
    assert lifeboat_main(argv, out) != 0, out.getvalue()
    assert json.loads(out.getvalue())["error"]["message"] == why
    assert list(pgdata.iterdir()) == []
