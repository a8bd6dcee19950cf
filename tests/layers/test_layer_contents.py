"""What is in each layer zip, and how it is packed."""

from __future__ import annotations

import json
import ssl
import stat
import subprocess
import time
import zipfile
from pathlib import Path

from layer_support import ARCHES, MAJORS, Layer, pinned_versions
from pglayer.common import DEBS_LOCK, RDS_CA_LOCK, VERSIONS_FILE

PROGRAMS = ("pg_dump", "pg_dumpall", "pg_restore", "psql", "pg_receivewal", "pg_basebackup", "pg_verifybackup")
SINCE_17 = ("pg_combinebackup",)  # recover from incremental bases: the program exists from PostgreSQL 17 on
# Everything beyond glibc that the clients and libpq need, from Debian 12 (see layers/README.md).
SYSTEM_LIBS = {
    "libzstd.so.1",
    "liblz4.so.1",
    "libssl.so.3",
    "libcrypto.so.3",
    "libz.so.1",
    "libgssapi_krb5.so.2",
    "libkrb5.so.3",
    "libk5crypto.so.3",
    "libkrb5support.so.0",
    "libcom_err.so.2",
    "libkeyutils.so.1",
    "libreadline.so.8",
    "libtinfo.so.6",
}
MB = 1_000_000
LAMBDA_UNZIPPED_LIMIT = 250 * MB  # function + all its layers
FUNCTION_UNZIPPED = 100 * MB  # rough size of the function package (boto3, pydantic, psycopg ...)


def test_exact_file_list(layer: Layer) -> None:
    with zipfile.ZipFile(layer.zip_path) as zf:
        names = zf.namelist()
    expected = {f"pg/{m}/bin/{p}" for m in MAJORS for p in PROGRAMS + (SINCE_17 if m >= 17 else ())}
    expected |= {f"pg/{m}/lib/libpq.so.5" for m in MAJORS}
    expected |= {f"pg/lib/{lib}" for lib in SYSTEM_LIBS}
    expected |= {"pg/certs/rds-ca-bundle.pem", "pg/manifest.json"}
    assert len(names) == len(set(names)), "duplicate entries"
    assert set(names) == expected, (sorted(set(names) - expected), sorted(expected - set(names)))


def test_zip_is_normalised(layer: Layer) -> None:
    with zipfile.ZipFile(layer.zip_path) as zf:
        infos = zf.infolist()
        names = [i.filename for i in infos]
        assert names == sorted(names)
        for info in infos:
            mode = info.external_attr >> 16
            assert info.create_system == 3, info.filename
            assert info.date_time == (1980, 1, 1, 0, 0, 0), info.filename
            assert stat.S_ISREG(mode), f"{info.filename}: not a regular file (mode {mode:o})"
            assert not info.is_dir()
            elf = zf.read(info)[:4] == b"\x7fELF"
            assert stat.S_IMODE(mode) == (0o755 if elf else 0o644), f"{info.filename}: {mode:o}"
            assert info.extra == b"", info.filename


def test_size_fits_lambda(layer: Layer) -> None:
    with zipfile.ZipFile(layer.zip_path) as zf:
        unzipped = sum(i.file_size for i in zf.infolist())
    assert unzipped + FUNCTION_UNZIPPED < LAMBDA_UNZIPPED_LIMIT
    # Regression guard: measured ~20-22 MB with the shared pg/lib layout (~55-60 MB per-major).
    assert unzipped < 40 * MB, f"{unzipped / MB:.1f} MB unzipped"
    assert layer.zip_path.stat().st_size < 15 * MB


def test_manifest(layer: Layer) -> None:
    manifest = json.loads((layer.opt / "pg" / "manifest.json").read_text())
    assert manifest["arch"] == layer.arch
    assert {int(m): v["version"] for m, v in manifest["majors"].items()} == pinned_versions()
    assert set(manifest["debian_packages"]) == SYSTEM_LIBS
    lock = json.loads(DEBS_LOCK.read_text())["packages"][layer.arch]
    for soname, info in manifest["debian_packages"].items():
        assert lock[info["package"]]["version"] == info["version"], soname
    assert manifest["requires"]["glibc"] == "2.34"


def test_wheel_and_deb_pins_are_complete() -> None:
    versions = json.loads(VERSIONS_FILE.read_text())["majors"]
    for major, pin in versions.items():
        assert set(pin["sha256"]) == set(ARCHES), major
        assert all(len(h) == 64 for h in pin["sha256"].values()), major
    lock = json.loads(DEBS_LOCK.read_text())
    names = {n for group in lock["groups"].values() for n in group}
    for arch in ARCHES:
        assert set(lock["packages"][arch]) == names


def _subjects(bundle: Path) -> list[str]:
    p7 = subprocess.run(["openssl", "crl2pkcs7", "-nocrl", "-certfile", str(bundle)], capture_output=True, check=True)
    out = subprocess.run(
        ["openssl", "pkcs7", "-print_certs", "-noout"], input=p7.stdout, capture_output=True, check=True
    ).stdout.decode()
    return [line for line in out.splitlines() if line.startswith("subject=")]


def test_rds_ca_bundle(layer: Layer) -> None:
    bundle = layer.opt / "pg" / "certs" / "rds-ca-bundle.pem"
    lock = json.loads(RDS_CA_LOCK.read_text())
    subjects = _subjects(bundle)
    assert len(subjects) == lock["certificates"] >= 100
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile=str(bundle))
    names = {dict(x[0] for x in c["subject"])["commonName"]: c for c in ctx.get_ca_certs()}
    # The current RDS roots (2024 rotation) for some large regions, and the RDS Proxy trust roots.
    for region in ("us-east-1", "eu-west-1", "ap-southeast-2"):
        for kind in ("RSA2048", "RSA4096", "ECC384"):
            cert = names[f"Amazon RDS {region} Root CA {kind} G1"]
            assert ssl.cert_time_to_seconds(cert["notAfter"]) > time.time()
    assert "Amazon Root CA 1" in names
