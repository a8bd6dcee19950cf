"""One hash per byte: S3Store.put_stream records each part's SHA-256 and the composite over them, and every reader
(verify, restore's streaming read, a ranged read) checks part by part when the manifest has parts, the whole object
otherwise (older manifests). The upload half runs on moto; the verifier's logic is pure; the signature covers parts.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from chalicelib import wiring
from chalicelib.adapters.s3 import MiB, PartPlan, S3Store
from chalicelib.errors import IntegrityError
from chalicelib.logical.catalog import Catalog, Layout, Manifest, ManifestObject
from chalicelib.logical.digests import PartVerifier, composite_sha256, manifest_object, verify_part
from chalicelib.logical.restore import _read_verified
from chalicelib.logical.signing import FORGED, ManifestSigning
from chalicelib.logical.verify import _check_object
from devstack.local import LocalStack

PART = 5 * MiB
DATA = (bytes(range(251)) * (PART * 3 // 251 + 1))[: 2 * PART + 12345]  # two full parts and a short third
T0 = datetime(2026, 11, 27, 3, tzinfo=UTC)


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def parted(data: bytes = DATA, part: int = PART) -> ManifestObject:
    """The manifest entry put_stream's result gives for `data` sent in `part`-sized parts (computed here)."""
    parts = [
        {"number": n + 1, "offset": o, "size": len(data[o : o + part]), "sha256": digest(data[o : o + part])}
        for n, o in enumerate(range(0, len(data), part))
    ]
    composite = composite_sha256([str(p["sha256"]) for p in parts])
    return ManifestObject.model_validate(
        {"role": "dump", "key": "k", "size": len(data), "sha256": composite, "parts": parts}
    )


def stream(verifier: PartVerifier, data: bytes, chunk: int = 1_000_003) -> None:
    for start in range(0, len(data), chunk):
        verifier.update(data[start : start + chunk])
    verifier.finish()


# --- the verifier (pure) ------------------------------------------------------------------------------------


def test_a_streamed_object_passes_part_by_part_whatever_the_chunking() -> None:
    for chunk in (4096 * 3 + 1, 1_000_003, PART, len(DATA)):  # part boundaries inside chunks and on their edges
        verifier = PartVerifier(parted())
        stream(verifier, DATA, chunk)
        assert verifier.hexdigest == parted().sha256


def test_a_changed_byte_names_its_part_before_the_rest_is_read() -> None:
    bad = bytearray(DATA)
    bad[PART + 7] ^= 1  # in part 2
    verifier = PartVerifier(parted())
    verifier.update(bad[: 2 * PART - 1])  # part 2 not complete yet: nothing to say
    with pytest.raises(IntegrityError, match=r"does not match its manifest's SHA-256 in part 2 \(bytes 5242880 to"):
        verifier.update(bad[2 * PART - 1 : 2 * PART])


def test_short_and_long_objects_are_refused() -> None:
    with pytest.raises(IntegrityError, match="changed or truncated"):
        stream(PartVerifier(parted()), DATA[:-1])
    with pytest.raises(IntegrityError, match="longer than the"):
        stream(PartVerifier(parted()), DATA + b"x")


def test_an_older_manifest_is_checked_on_the_whole_object() -> None:
    old = ManifestObject(role="dump", key="k", size=len(DATA), sha256=digest(DATA))
    verifier = PartVerifier(old)
    stream(verifier, DATA)
    assert verifier.hexdigest == digest(DATA)
    bad = bytearray(DATA)
    bad[-1] ^= 1
    with pytest.raises(IntegrityError, match="does not match its manifest's SHA-256: the object was tampered"):
        stream(PartVerifier(old), bytes(bad))


def test_parts_that_do_not_tile_or_add_up_are_refused_before_any_byte() -> None:
    obj = parted()
    swapped = obj.model_copy(update={"parts": [obj.parts[1], obj.parts[0], obj.parts[2]]})
    with pytest.raises(IntegrityError, match="does not follow"):
        PartVerifier(swapped)
    other_digest = obj.parts[0].model_copy(update={"sha256": digest(b"other")})
    with pytest.raises(IntegrityError, match="do not add up"):
        PartVerifier(obj.model_copy(update={"parts": [other_digest, *obj.parts[1:]]}))


def test_a_ranged_read_is_checked_against_its_part() -> None:
    obj = parted()
    second = obj.parts[1]
    verify_part(obj, second, DATA[second.offset : second.offset + second.size])
    with pytest.raises(IntegrityError, match="in part 2"):
        verify_part(obj, second, DATA[: second.size])
    with pytest.raises(IntegrityError, match="changed or truncated"):
        verify_part(obj, second, DATA[second.offset : second.offset + second.size - 1])


# --- the signature covers the parts --------------------------------------------------------------------------


class HmacKey:
    key_id = "alias/test"

    def generate_mac(self, message: bytes) -> tuple[str, bytes]:
        return "arn:aws:kms:eu-west-1:1:key/k", hmac.new(b"k", message, hashlib.sha256).digest()

    def verify_mac(self, message: bytes, mac: bytes) -> bool:
        return hmac.compare_digest(self.generate_mac(message)[1], mac)


def test_changing_one_part_digest_breaks_the_signature() -> None:
    signing = ManifestSigning(HmacKey())
    manifest = Manifest.model_validate(
        {
            "backup_id": "logical:shop:20261127T030000Z",
            "target": "shop",
            "slot": T0,
            "host": "db",
            "database": "shop",
            "server_version": "17.2",
            "server_version_num": 170002,
            "pg_dump_version": 17,
            "format": "custom",
            "compression": "zstd:1",
            "objects": [parted().model_dump()],
            "started_at": T0,
            "finished_at": T0 + timedelta(minutes=1),
            "retention_class": "daily",
            "retention_policy": "default",
        }
    )
    signing.seal(manifest)

    def as_read(raw: dict[str, Any]) -> Manifest:
        found = Manifest.model_validate(raw)
        found._raw = raw
        return found

    raw = json.loads(manifest.model_dump_json())
    assert signing.check(as_read(raw))["status"] == "VALID"
    raw["objects"][0]["parts"][1]["sha256"] = digest(b"forged part")
    with pytest.raises(IntegrityError, match=FORGED):
        signing.check(as_read(raw))


# --- the upload and the readers, on moto ---------------------------------------------------------------------


@pytest.fixture
def store(aws: LocalStack) -> S3Store:
    return S3Store(wiring.client("s3"), aws.bucket, plan=PartPlan(base=PART), memory_budget=3 * PART)


def test_put_stream_records_part_digests_and_the_composite(store: S3Store) -> None:
    result = store.put_stream("obj", io.BytesIO(DATA))
    obj = manifest_object("dump", result)
    expected = parted()
    assert obj.parts == expected.parts and obj.sha256 == expected.sha256 and obj.size == len(DATA)
    assert result.parts == 3 and obj.version_id == result.version_id
    small = manifest_object("globals", store.put_stream("small", io.BytesIO(b"roles")))
    assert small.parts == [] and small.sha256 == digest(b"roles")  # one PUT: a plain SHA-256, no parts


def test_readers_check_new_and_old_manifests(store: S3Store) -> None:
    new = manifest_object("dump", store.put_stream("obj", io.BytesIO(DATA)))
    old = ManifestObject(role="dump", key="obj", size=len(DATA), sha256=digest(DATA), version_id=new.version_id)
    catalog = Catalog(store, Layout(""))
    for obj in (new, old):
        assert b"".join(_read_verified(store, obj, None)) == DATA
        check = _check_object(catalog, obj)
        assert check.ok and check.sha256_read == obj.sha256 and check.size_read == len(DATA)
    bad = bytearray(DATA)
    bad[PART + 1] ^= 1
    tampered = manifest_object("dump", store.put_stream("obj", io.BytesIO(bytes(bad))))
    for obj in (new, old):  # the recorded digests, the tampered bytes (a new current version)
        current = obj.model_copy(update={"version_id": tampered.version_id})
        with pytest.raises(IntegrityError, match="does not match its manifest's SHA-256"):
            b"".join(_read_verified(store, current, None))
        problem = _check_object(catalog, current).problem
        assert problem and ("in part 2" in problem if obj.parts else problem == "SHA-256 differs from the manifest's")
