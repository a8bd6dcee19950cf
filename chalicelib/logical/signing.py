"""Signed manifests: a KMS HMAC over each manifest, made when the backup is written and checked before it is believed.

Someone who can write to the bucket (the backup worker's S3 rights, a leaked key, a too-wide bucket policy) can put a
forged dump and a forged manifest that matches it as new versions; sizes and SHA-256 then agree. The signature is
what they cannot make without the signing key: KMS GenerateMac with an HMAC_256 key (settings.signing_key_id), over
the manifest's canonical form: the JSON as stored, without its `signature` block, with sorted keys and no spaces
(CANONICALIZATION). Only the backup worker and the Fargate task may GenerateMac; restores call VerifyMac. A check uses
the configured key, never the key named in the manifest.

Manifests written before signing was turned on carry no signature: they are believed only when
settings.accept_unsigned_before is later than both their finished_at and the time S3 stored them (LastModified, which
the writer does not choose), so an unsigned manifest written after the cut-off is refused whatever it says.
"""

from __future__ import annotations

import base64
import binascii
import json
from datetime import datetime
from typing import Any, Protocol

from chalicelib.errors import IntegrityError
from chalicelib.logical.catalog import Manifest, ManifestSignature

CANONICALIZATION = "json-sorted-keys-compact"
ALGORITHM = "HMAC_SHA_256"
FORGED = "manifest signature does not verify: the manifest was forged or altered"


class MacKey(Protocol):
    key_id: str

    def generate_mac(self, message: bytes) -> tuple[str, bytes]: ...
    def verify_mac(self, message: bytes, mac: bytes) -> bool: ...


def canonical(document: dict[str, Any]) -> bytes:
    """The bytes that are signed: the manifest's JSON without `signature`, sorted keys, compact, ASCII."""
    body = {k: v for k, v in document.items() if k != "signature"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


class ManifestSigning:
    """Signs manifests as Catalog.write_manifest writes them, and checks them (Catalog.check_signature)."""

    def __init__(self, key: MacKey, accept_unsigned_before: datetime | None = None) -> None:
        self.key = key
        self.accept_unsigned_before = accept_unsigned_before

    def seal(self, manifest: Manifest) -> None:
        """Add the signature block (replacing any) to the manifest about to be written."""
        manifest.signature = None
        key_id, mac = self.key.generate_mac(canonical(manifest.model_dump(mode="json")))
        manifest.signature = ManifestSignature(
            key_id=key_id, algorithm=ALGORITHM, canonicalization=CANONICALIZATION, value=base64.b64encode(mac).decode()
        )

    def check(self, manifest: Manifest) -> dict[str, Any]:
        """What was found ({"status": "VALID"|"UNSIGNED_ACCEPTED", ...}); IntegrityError when it is not believed."""
        sig = manifest.signature
        if sig is None:
            return self._unsigned(manifest)
        if sig.algorithm != ALGORITHM or sig.canonicalization != CANONICALIZATION:
            raise IntegrityError(
                f"{FORGED}; {manifest.backup_id} says it is signed with {sig.algorithm}/{sig.canonicalization},"
                f" not {ALGORITHM}/{CANONICALIZATION}: refusing it"
            )
        try:
            mac = base64.b64decode(sig.value, validate=True)
        except (binascii.Error, ValueError):
            mac = b""
        document = manifest.raw if manifest.raw is not None else manifest.model_dump(mode="json")
        if not mac or not self.key.verify_mac(canonical(document), mac):
            raise IntegrityError(
                f"{FORGED}; {manifest.backup_id} is refused (key {self.key.key_id}). The versions written by the"
                " backup are kept (Object Lock): an operator finds the forged version of the manifest or dump"
                " (aws s3api list-object-versions) and removes it"
            )
        return {"status": "VALID", "key_id": sig.key_id, "algorithm": sig.algorithm, "checked_with": self.key.key_id}

    def _unsigned(self, manifest: Manifest) -> dict[str, Any]:
        cutoff = self.accept_unsigned_before
        written = [t for t in (manifest.finished_at, manifest.stored_at) if t is not None]
        if cutoff is not None and manifest.stored_at is not None and all(t < cutoff for t in written):
            return {"status": "UNSIGNED_ACCEPTED", "accept_unsigned_before": cutoff.isoformat()}
        when = f"stored {manifest.stored_at.isoformat()}" if manifest.stored_at else "not read from the bucket"
        raise IntegrityError(
            f"{FORGED}: {manifest.backup_id} has no signature (finished {manifest.finished_at.isoformat()}, {when}),"
            " and settings.accept_unsigned_before"
            f" {'is not set' if cutoff is None else f'({cutoff.isoformat()}) is not later than that'}; a manifest"
            " written before signing was turned on is accepted only when accept_unsigned_before is later than both"
        )
