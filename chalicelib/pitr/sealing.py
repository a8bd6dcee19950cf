"""Signed documents beyond logical manifests: base-backup manifests, WAL segment digests and drill evidence.

The same key, algorithm and canonical form as logical manifests (chalicelib.logical.signing: a KMS HMAC over the
JSON without its `signature` block, sorted keys, compact), the same rule for documents written before signing was
turned on (believed only when settings.accept_unsigned_before is later than both the time the document says it was
written and the time S3 stored it), and the same limit: whoever may call kms:GenerateMac on the key can sign
anything. Each document names its `kind`, so a MAC made for one kind of document never stands for another.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from chalicelib.errors import IntegrityError
from chalicelib.logical.signing import ALGORITHM, CANONICALIZATION, MacKey, ManifestSigning, canonical

VALID = "VALID"
UNSIGNED_ACCEPTED = "UNSIGNED_ACCEPTED"
NOT_CHECKED = "NOT_CHECKED"


@dataclass(frozen=True)
class Sealer:
    """Signs documents as they are written and checks them before they are believed."""

    key: MacKey
    accept_unsigned_before: datetime | None = None

    @classmethod
    def from_signing(cls, signing: ManifestSigning | None) -> Sealer | None:
        """The sealer of settings.signing_key_id (wiring.signing); None: nothing is signed nor checked."""
        return None if signing is None else cls(signing.key, signing.accept_unsigned_before)

    def signature(self, document: dict[str, Any]) -> dict[str, str]:
        """The `signature` block of `document` (its canonical form without any signature block)."""
        key_id, mac = self.key.generate_mac(canonical(document))
        return {
            "key_id": key_id,
            "algorithm": ALGORITHM,
            "canonicalization": CANONICALIZATION,
            "value": base64.b64encode(mac).decode(),
        }

    def seal(self, document: dict[str, Any]) -> dict[str, Any]:
        """The document with its signature block (replacing any)."""
        body = {k: v for k, v in document.items() if k != "signature"}
        return {**body, "signature": self.signature(body)}

    def mac(self, document: dict[str, Any]) -> str:
        """A bare MAC (base64) of a small document, for an object's metadata (WAL segments)."""
        return self.signature(document)["value"]

    def verifies(self, document: dict[str, Any], mac_b64: str) -> bool:
        try:
            mac = base64.b64decode(mac_b64, validate=True)
        except (binascii.Error, ValueError):
            return False
        return bool(mac) and self.key.verify_mac(canonical(document), mac)

    def check(
        self, document: dict[str, Any], what: str, written_at: datetime | None, stored_at: datetime | None
    ) -> dict[str, Any]:
        """What was found ({"status": VALID | UNSIGNED_ACCEPTED}); IntegrityError when `document` (as stored) is not
        believed. `written_at`: when the document says it was written; `stored_at`: the LastModified of the version
        read (S3 sets it, the writer does not choose it)."""
        sig = document.get("signature")
        if sig is None:
            return self.unsigned(what, written_at, stored_at)
        if not isinstance(sig, dict) or (sig.get("algorithm"), sig.get("canonicalization")) != (
            ALGORITHM,
            CANONICALIZATION,
        ):
            raise IntegrityError(f"{what}: its signature block is not {ALGORITHM}/{CANONICALIZATION}: refusing it")
        if not self.verifies(document, str(sig.get("value", ""))):
            raise IntegrityError(
                f"{what}: the signature does not verify (key {self.key.key_id}): it was forged or altered; refusing it"
            )
        return {"status": VALID, "key_id": sig.get("key_id"), "checked_with": self.key.key_id}

    def unsigned(self, what: str, written_at: datetime | None, stored_at: datetime | None) -> dict[str, Any]:
        """An unsigned document: believed only when written and stored before accept_unsigned_before."""
        cutoff = self.accept_unsigned_before
        times = [t for t in (written_at, stored_at) if t is not None]
        if cutoff is not None and stored_at is not None and all(t < cutoff for t in times):
            return {"status": UNSIGNED_ACCEPTED, "accept_unsigned_before": cutoff.isoformat()}
        when = stored_at.isoformat() if stored_at else "at an unknown time"
        limit = "is not set" if cutoff is None else f"({cutoff.isoformat()}) is not later than that"
        raise IntegrityError(
            f"{what} has no signature (stored {when}) and settings.accept_unsigned_before {limit}: only what was"
            " written before signing was turned on is believed unsigned; refusing it"
        )
