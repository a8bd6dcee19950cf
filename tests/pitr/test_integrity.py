"""PITR integrity against moto (server mode, a versioned Object Lock bucket, a KMS HMAC key), without PostgreSQL:
a finished WAL segment written over with matching metadata is never what wal-fetch serves; an object without a valid
MAC is refused with exit 255; a forged newer base manifest is not what `recover --time` picks, an overwritten one is
read at its first version, an unsigned one is believed only before accept_unsigned_before; the tar is unpacked at
the version the manifest recorded; bases and their WAL are locked for the class they earn (fixed clock)."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest

from chalicelib.adapters.kms import KmsMacKey
from chalicelib.adapters.s3 import S3Store
from chalicelib.config import RetentionPolicy
from chalicelib.errors import IntegrityError
from chalicelib.pitr import recover
from chalicelib.pitr.basebackup import MANIFEST, BaseBackup, BaseLayout, BaseObject, read_bases, write_manifest
from chalicelib.pitr.fetch import FATAL, FETCHED, wal_fetch
from chalicelib.pitr.protect import base_locks, protect_bases, wal_lock_days
from chalicelib.pitr.sealing import Sealer
from chalicelib.pitr.walarchive import MAC_META, SHA256_META, SIZE_META, WalArchive, compress
from chalicelib.pitr.walnames import Segment, WalLayout, format_lsn
from devstack.aws import MotoServer

BUCKET = "lifeboat-pitr-integrity"
SIZE = 1024 * 1024
T0 = datetime(2026, 3, 16, 3, 0, tzinfo=UTC)  # a Monday
NOW = datetime(2026, 3, 31, 12, 0, tzinfo=UTC)
POLICY = RetentionPolicy.model_validate(
    {"daily_days": 3, "weekly_weeks": 3, "monthly_months": 2, "yearly_years": 0, "keep_last": 1}
)
TAGS = {"kind": "base", "target": "shop"}


@pytest.fixture
def store(moto_server: MotoServer) -> Iterator[S3Store]:
    moto_server.reset()
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket=BUCKET, ObjectLockEnabledForBucket=True)
    yield S3Store(s3, BUCKET)


@pytest.fixture
def sealer(store: S3Store) -> Sealer:
    kms = boto3.client("kms")
    key = kms.create_key(KeySpec="HMAC_256", KeyUsage="GENERATE_VERIFY_MAC")["KeyMetadata"]["Arn"]
    return Sealer(KmsMacKey(lambda: kms, key))


def seg(number: int) -> Segment:
    return Segment(1, number, SIZE)


def forge(store: S3Store, key: str, data: bytes, metadata: dict[str, str] | None = None) -> None:
    """PutObject with the bytes' own matching checksum metadata: what anyone with s3:PutObject can do."""
    meta = {SHA256_META: hashlib.sha256(data).hexdigest(), SIZE_META: str(len(data)), **(metadata or {})}
    store.put_bytes(key, compress(data), metadata=meta)


def fetch(archive: WalArchive, name: str, tmp_path: Path) -> tuple[int, bytes]:
    code, _ = wal_fetch(archive, name, tmp_path / name)
    return code, (tmp_path / name).read_bytes() if code == FETCHED else b""


@pytest.mark.parametrize("signed", [True, False])
def test_an_overwritten_segment_is_served_as_first_written(
    store: S3Store, sealer: Sealer, tmp_path: Path, signed: bool
) -> None:
    archive = WalArchive(
        store, WalLayout("", "shop"), lock_mode="GOVERNANCE", lock_days=7, sealer=sealer if signed else None
    )
    original = bytes(range(256)) * (SIZE // 256)
    archive.put_segment(seg(5), original)
    key = WalLayout("", "shop").segment_key(seg(5))
    copied = store.get_with_metadata(key)
    assert copied is not None and (MAC_META in copied[1]) == signed
    forge(store, key, b"\x01" * SIZE, {MAC_META: copied[1].get(MAC_META, "")})  # even with the original's MAC

    assert fetch(archive, seg(5).name, tmp_path) == (FETCHED, original)


def test_an_object_without_a_valid_mac_is_refused_with_255(store: S3Store, sealer: Sealer, tmp_path: Path) -> None:
    archive = WalArchive(store, WalLayout("", "shop"), sealer=sealer)
    layout = WalLayout("", "shop")
    # A segment written under its name before the stream reached it (its first version is the forgery).
    forge(store, layout.segment_key(seg(6)), b"\x02" * SIZE)
    assert fetch(archive, seg(6).name, tmp_path)[0] == FATAL
    # The open segment's `.partial` is rewritten by design: only its MAC protects it.
    archive.put_partial(seg(7), b"\x03" * SIZE)
    assert fetch(archive, seg(7).name, tmp_path) == (FETCHED, b"\x03" * SIZE)
    good = store.get_with_metadata(layout.partial_key(seg(7)))
    assert good is not None
    forge(store, layout.partial_key(seg(7)), b"\x04" * SIZE, {MAC_META: good[1][MAC_META]})  # a MAC of other bytes
    assert fetch(archive, seg(7).name, tmp_path)[0] == FATAL
    # Moved: a genuine segment's bytes and MAC under another name do not verify (the MAC covers the key).
    archive.put_segment(seg(8), b"\x05" * SIZE)
    moved = store.get_with_metadata(layout.segment_key(seg(8)))
    assert moved is not None
    store.put_bytes(layout.segment_key(seg(9)), moved[0], metadata=moved[1])
    assert fetch(archive, seg(9).name, tmp_path)[0] == FATAL
    # Unsigned: believed only when stored before accept_unsigned_before.
    forge(store, layout.segment_key(seg(10)), b"\x06" * SIZE)
    lenient = WalArchive(store, layout, sealer=Sealer(sealer.key, datetime(2100, 1, 1, tzinfo=UTC)))
    assert fetch(lenient, seg(10).name, tmp_path) == (FETCHED, b"\x06" * SIZE)
    assert fetch(archive, seg(10).name, tmp_path)[0] == FATAL


def tar_zst(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return compress(buf.getvalue())


def put_base(store: S3Store, sealer: Sealer | None, day: int, content: bytes = b"real") -> BaseBackup:
    """A base started on day `day` at segment 2*day (needs 2*day .. 2*day+1), its manifest written as
    run_base_backup writes it (write_manifest: signed with `sealer`, the objects' VersionIds recorded)."""
    started = T0 + timedelta(days=day)
    bid = started.strftime("%Y%m%dT%H%M%SZ")
    layout = BaseLayout("", "shop")
    blob = tar_zst({"PG_VERSION": b"15\n", "data": content})
    data = store.put_bytes(layout.folder(bid) + "base.tar.zst", blob, tags=TAGS)
    base = BaseBackup(
        target="shop",
        backup_id=bid,
        started_at=started,
        finished_at=started + timedelta(minutes=5),
        server_version_num=150000,
        timeline=1,
        start_lsn=format_lsn(seg(2 * day).start_lsn + 40),
        end_lsn=format_lsn(seg(2 * day + 1).start_lsn + 40),
        segment_size=SIZE,
        tar_size=0,
        tar_sha256="0" * 64,
        objects=[BaseObject(role="data", key=data.key, size=len(blob), sha256=data.sha256, version_id=data.version_id)],
        backup_label="",
    )
    return write_manifest(store, layout, base, TAGS, sealer)


def test_forged_and_overwritten_base_manifests(store: S3Store, sealer: Sealer, tmp_path: Path) -> None:
    layout = BaseLayout("", "shop")
    real = put_base(store, sealer, 1)
    # A forged newer base: unsigned, then with a signature block copied from the real one.
    forged = put_base(store, None, 5, b"attacker")
    doc = json.loads(store.get_bytes(layout.folder(forged.backup_id) + MANIFEST))
    doc["signature"] = json.loads(store.get_bytes(layout.folder(real.backup_id) + MANIFEST))["signature"]
    store.put_bytes(
        layout.folder((T0 + timedelta(days=6)).strftime("%Y%m%dT%H%M%SZ")) + MANIFEST, json.dumps(doc).encode()
    )

    bases, refused = read_bases(store, layout, sealer)
    assert [b.backup_id for b in bases] == [real.backup_id]
    assert len(refused) == 2 and all("signature" in why or "folder" in why for why in refused.values())
    goal = recover.RecoveryTarget(time=T0 + timedelta(days=7))
    assert recover.choose_base(bases, goal).backup_id == real.backup_id
    # Without a signing key the forgery would be picked: what the signature prevents.
    assert recover.choose_base(read_bases(store, layout)[0], goal).backup_id == forged.backup_id

    # The real manifest written over (a new version): its first version is read.
    key = layout.folder(real.backup_id) + MANIFEST
    altered = json.loads(store.get_bytes(key)) | {"end_lsn": "0/0"}
    store.put_bytes(key, json.dumps(altered).encode())
    assert read_bases(store, layout, sealer)[0][0].end_lsn == real.end_lsn

    # The tar written over: unpacked at the version the manifest recorded.
    store.put_bytes(real.objects[0].key, tar_zst({"PG_VERSION": b"15\n", "data": b"attacker"}))
    recover.unpack_base(store, real, tmp_path / "pgdata")
    assert (tmp_path / "pgdata" / "data").read_bytes() == b"real"

    # Unsigned manifests (written before signing): believed only before accept_unsigned_before.
    lenient = Sealer(sealer.key, datetime(2100, 1, 1, tzinfo=UTC))
    assert forged.backup_id in [b.backup_id for b in read_bases(store, layout, lenient)[0]]
    with pytest.raises(IntegrityError, match="no signature"):
        sealer.check({"kind": "base"}, "base manifest", T0, NOW)


def retain_until(key: str, version_id: str | None = None) -> datetime | None:
    extra: dict[str, Any] = {"VersionId": version_id} if version_id else {}
    head = boto3.client("s3").head_object(Bucket=BUCKET, Key=key, **extra)
    return head.get("ObjectLockRetainUntilDate")


def test_bases_and_their_wal_are_locked_for_the_class_they_earn(store: S3Store, sealer: Sealer) -> None:
    assert wal_lock_days(POLICY) == 62  # monthly_months * 31: the longest class (what archive_for locks with)
    # A short upload lock here, to see the pass extend the locks of the kept bases' own WAL.
    archive = WalArchive(store, WalLayout("", "shop"), lock_mode="GOVERNANCE", lock_days=7, clock=lambda: T0)
    for number in range(32):
        archive.put_segment(seg(number), bytes(SIZE))
    bases = [put_base(store, sealer, day) for day in range(16)]  # 03-16 .. 03-31
    wal = WalLayout("", "shop")
    assert retain_until(wal.segment_key(seg(0))) == T0 + timedelta(days=7)

    locks = base_locks(bases, POLICY, NOW)
    day = {b.started_at.day: locks.get(b.backup_id) for b in bases}
    assert day[31] == NOW + timedelta(days=30)  # the newest: KEEP_LOCK_DAYS from now, until a newer base exists
    assert day[30] == T0 + timedelta(days=14 + 3)  # a daily: its day + daily_days
    assert day[22] == T0 + timedelta(days=6 + 21)  # week 12's newest: + weekly_weeks * 7
    assert day[17] is None  # neither daily, weekly (not its week's newest) nor monthly any more

    checked = read_bases(store, BaseLayout("", "shop"), sealer)[0]
    protect_bases(store, "", "shop", POLICY, "GOVERNANCE", NOW, checked)
    week12 = bases[6]
    assert retain_until(week12.objects[0].key, week12.objects[0].version_id) == day[22]
    assert retain_until(BaseLayout("", "shop").folder(week12.backup_id) + MANIFEST) == day[22]
    assert retain_until(bases[1].objects[0].key) is None  # not kept: never locked
    # Each kept base's own WAL (week 12's: segments 12 and 13) carries the base's lock; other WAL its upload lock.
    assert [retain_until(wal.segment_key(seg(n))) for n in (11, 12, 13, 14)] == [
        T0 + timedelta(days=7),
        day[22],
        day[22],
        T0 + timedelta(days=7),
    ]
    assert retain_until(wal.segment_key(seg(31))) == NOW + timedelta(days=30)
    # Locks only grow: a pass that computes shorter ones changes nothing.
    protect_bases(store, "", "shop", POLICY, "GOVERNANCE", NOW - timedelta(days=10), checked)
    assert retain_until(wal.segment_key(seg(31))) == NOW + timedelta(days=30)
