"""`lifeboat verify`: re-read every object of a backup, check its size and SHA-256 against the manifest (part by part
when the manifest records parts: logical.digests), and the manifest's signature (chalicelib.logical.signing); report
each object and a verdict. Reads only: nothing is changed.

Each object is read by the S3 version its manifest recorded, as a restore reads it: a later overwrite of the key (a
new current version) is not what a restore would use, so it neither fails nor passes the verify. A manifest without
versions (written before they were recorded, or in an unversioned bucket) is checked against the current objects."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from chalicelib.errors import IntegrityError, NotFoundError, StorageError
from chalicelib.logical.catalog import BackupId, Catalog, ManifestObject
from chalicelib.logical.digests import PartVerifier

CHUNK = 1024 * 1024
BELIEVED = ("VALID", "UNSIGNED_ACCEPTED", "NOT_CHECKED")


@dataclass
class ObjectCheck:
    key: str
    role: str
    size: int  # the manifest's
    sha256: str  # the manifest's
    version_id: str | None = None  # the manifest's: the version read (None: the current one)
    size_read: int | None = None
    sha256_read: str | None = None
    problem: str | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None


@dataclass
class VerifyReport:
    backup_id: str
    objects: list[ObjectCheck] = field(default_factory=list)
    signature: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)  # the manifest's own (manifest_problems)

    @property
    def verified(self) -> bool:
        return (
            not self.problems
            and self.signature.get("status") in BELIEVED
            and bool(self.objects)
            and all(o.ok for o in self.objects)
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "backup_id": self.backup_id,
            "status": "VERIFIED" if self.verified else "FAILED",
            "objects": [{**asdict(o), "ok": o.ok} for o in self.objects],
            "signature": self.signature,
            "problems": self.problems,
        }


def verify_backup(
    catalog: Catalog, bid: BackupId, on_object: Callable[[ObjectCheck], None] | None = None
) -> VerifyReport:
    """Check the backup `bid` end to end. NotFoundError: there is no manifest at its key."""
    if bid.kind != "logical":
        raise NotFoundError(f"{bid} is a {bid.kind}: only logical backups have objects to verify")
    manifest = catalog.read_manifest(bid)
    if manifest is None:
        raise NotFoundError(f"no backup {bid} (no manifest at {catalog.layout.manifest_key(bid)})")
    report = VerifyReport(str(bid), problems=catalog.manifest_problems(manifest, bid))
    try:
        report.signature = catalog.check_signature(manifest)
    except IntegrityError as exc:
        report.signature = {"status": "INVALID", "error": str(exc)}
    for obj in manifest.objects:
        check = _check_object(catalog, obj)
        report.objects.append(check)
        if on_object is not None:
            on_object(check)
    return report


def _check_object(catalog: Catalog, obj: ManifestObject) -> ObjectCheck:
    """Stream the object's recorded version once (1 MiB at a time): its size and SHA-256, compared with the
    manifest's, part by part when the manifest records parts (a mismatch names the part)."""
    check = ObjectCheck(obj.key, obj.role, obj.size, obj.sha256, obj.version_id)
    try:
        verifier = PartVerifier(obj)
    except IntegrityError as exc:
        check.problem = f"the manifest cannot vouch for it: {exc}"
        return check
    try:
        # One GET per object, no HEAD before it: a version that is not there fails the GET, and its StorageError
        # says so by version ("version ... (the one its manifest recorded) is not in the bucket").
        body, _ = catalog.store.open_stream(obj.key, obj.version_id)
        with body:
            while chunk := body.read(CHUNK):
                verifier.update(chunk)
    except StorageError as exc:
        check.problem = f"cannot read: {exc}"
        return check
    except IntegrityError:  # a part that differs, or bytes past the manifest's end: reading stops there
        check.size_read, bad = verifier.size, verifier.failed_part
        if bad is not None:
            end = bad.offset + bad.size - 1
            check.problem = f"SHA-256 differs from the manifest's in part {bad.number} (bytes {bad.offset} to {end})"
        else:
            check.problem = f"more than the {obj.size} bytes the manifest says"
        return check
    check.size_read, check.sha256_read = verifier.size, verifier.hexdigest
    if verifier.size != obj.size:
        check.problem = f"{verifier.size} bytes, the manifest says {obj.size}"
    elif check.sha256_read != obj.sha256:
        check.problem = "SHA-256 differs from the manifest's"
    return check
