"""KMS: the HMAC key that signs manifests (GenerateMac when a backup is written, VerifyMac before it is believed)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from chalicelib.adapters.aws_errors import AWS_ERRORS, error_code, error_message
from chalicelib.errors import StorageError

MAC_ALGORITHM = "HMAC_SHA_256"


class KmsMacKey:
    """One KMS HMAC key (KeySpec HMAC_256, KeyUsage GENERATE_VERIFY_MAC), named by ARN, id or alias."""

    def __init__(self, client: Callable[[], Any], key_id: str) -> None:
        self._client = client  # made on first use: most catalogs never sign nor verify (the API's, a listing's)
        self.key_id = key_id

    @property
    def client(self) -> Any:
        return self._client()

    def generate_mac(self, message: bytes) -> tuple[str, bytes]:
        """(the key's ARN or id as KMS names it, the MAC)."""
        try:
            resp = self.client.generate_mac(KeyId=self.key_id, Message=message, MacAlgorithm=MAC_ALGORITHM)
        except AWS_ERRORS as exc:
            raise _explain(exc, self.key_id, "kms:GenerateMac") from exc
        return str(resp["KeyId"]), bytes(resp["Mac"])

    def verify_mac(self, message: bytes, mac: bytes) -> bool:
        """Whether `mac` is this key's MAC of `message` (KMS says so; the key material never leaves it)."""
        try:
            resp = self.client.verify_mac(KeyId=self.key_id, Message=message, MacAlgorithm=MAC_ALGORITHM, Mac=mac)
        except AWS_ERRORS as exc:
            if error_code(exc) == "KMSInvalidMacException":
                return False
            raise _explain(exc, self.key_id, "kms:VerifyMac") from exc
        return bool(resp.get("MacValid"))


def _explain(exc: BaseException, key_id: str, action: str) -> StorageError:
    code = error_code(exc)
    hint = (
        f": the role needs {action} on it (stack/capabilities.py, 'manifests:*')"
        if code in ("AccessDeniedException", "AccessDenied")
        else ": check settings.signing_key_id (an HMAC_256 key, GENERATE_VERIFY_MAC)"
        if code in ("NotFoundException", "InvalidKeyUsageException", "DisabledException", "KMSInvalidStateException")
        else ""
    )
    return StorageError(
        f"KMS refused {action} with the manifest signing key {key_id} ({code or 'error'}: {error_message(exc)}){hint}"
    )
