"""Manifest signing (chalicelib.logical.signing) with an in-memory HMAC key: what is signed, what is refused."""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import UTC, datetime, timedelta

import pytest

from chalicelib.errors import IntegrityError
from chalicelib.logical.catalog import Manifest
from chalicelib.logical.signing import FORGED, ManifestSigning, canonical

T0 = datetime(2026, 11, 27, 3, tzinfo=UTC)


class FakeKey:
    key_id = "alias/test"

    def __init__(self, secret: bytes = b"k") -> None:
        self.secret = secret

    def generate_mac(self, message: bytes) -> tuple[str, bytes]:
        return "arn:aws:kms:eu-west-1:1:key/k", hmac.new(self.secret, message, hashlib.sha256).digest()

    def verify_mac(self, message: bytes, mac: bytes) -> bool:
        return hmac.compare_digest(self.generate_mac(message)[1], mac)


def manifest(**changes: object) -> Manifest:
    fields: dict[str, object] = {
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
        "objects": [{"role": "dump", "key": "logical/shop/x/database.dump", "size": 3, "sha256": "ab"}],
        "started_at": T0,
        "finished_at": T0 + timedelta(minutes=1),
        "retention_class": "daily",
        "retention_policy": "default",
    }
    return Manifest.model_validate({**fields, **changes})


def stored(m: Manifest, at: datetime | None = None) -> Manifest:
    """As Catalog.read_manifest gives it: parsed from the JSON written, with the raw document and LastModified."""
    raw = json.loads(m.model_dump_json(indent=2))
    found = Manifest.model_validate(raw)
    found._raw, found._stored_at = raw, at or T0 + timedelta(minutes=2)
    return found


def test_canonical_form_is_sorted_compact_and_ignores_the_signature() -> None:
    assert canonical({"b": 1, "a": [1, {"d": 2, "c": "é"}], "signature": {"x": 1}}) == (
        b'{"a":[1,{"c":"\\u00e9","d":2}],"b":1}'
    )


def test_a_signed_manifest_verifies_after_a_round_trip() -> None:
    signing = ManifestSigning(FakeKey())
    m = manifest()
    signing.seal(m)
    assert m.signature is not None and m.signature.algorithm == "HMAC_SHA_256"
    assert signing.check(stored(m))["status"] == "VALID"


@pytest.mark.parametrize(
    "change",
    [
        lambda raw: raw["objects"][0].update(sha256="cd"),
        lambda raw: raw.update(size=99),
        lambda raw: raw.update(row_counts={"public.t": 1}),
        lambda raw: raw["signature"].update(value="bm90IGEgbWFj"),
        lambda raw: raw["signature"].update(value="***"),
        lambda raw: raw["signature"].update(algorithm="HMAC_SHA_512"),
        lambda raw: raw.update(unknown_field="ignored by the model, but signed"),
    ],
)
def test_any_change_breaks_the_signature(change: object) -> None:
    signing = ManifestSigning(FakeKey())
    m = manifest()
    signing.seal(m)
    raw = json.loads(m.model_dump_json())
    change(raw)  # type: ignore[operator]
    forged = Manifest.model_validate(raw)
    forged._raw, forged._stored_at = raw, T0
    with pytest.raises(IntegrityError, match=FORGED):
        signing.check(forged)


def test_another_key_does_not_verify() -> None:
    m = manifest()
    ManifestSigning(FakeKey(b"attacker")).seal(m)
    with pytest.raises(IntegrityError, match=FORGED):
        ManifestSigning(FakeKey(b"k")).check(stored(m))


def test_unsigned_is_accepted_only_when_finished_and_stored_before_the_cutoff() -> None:
    m = manifest()
    with pytest.raises(IntegrityError, match="accept_unsigned_before is not set"):
        ManifestSigning(FakeKey()).check(stored(m))
    cutoff = T0 + timedelta(days=1)
    accepted = ManifestSigning(FakeKey(), accept_unsigned_before=cutoff).check(stored(m))
    assert accepted["status"] == "UNSIGNED_ACCEPTED"
    with pytest.raises(IntegrityError, match="has no signature"):  # stored after the cutoff, whatever it says
        ManifestSigning(FakeKey(), accept_unsigned_before=cutoff).check(stored(m, at=cutoff + timedelta(seconds=1)))
    late = manifest(finished_at=cutoff + timedelta(hours=1))
    with pytest.raises(IntegrityError, match="has no signature"):
        ManifestSigning(FakeKey(), accept_unsigned_before=cutoff).check(stored(late))
    with pytest.raises(IntegrityError, match="has no signature"):  # never read from the bucket: no LastModified
        ManifestSigning(FakeKey(), accept_unsigned_before=cutoff).check(m)
