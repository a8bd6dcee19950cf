"""layers/build.py itself. Same inputs, same bytes: two independent builds of one architecture and one
major are identical; a zip is reused only while its inputs are unchanged; --rds-ca-bundle replaces the
pinned bundle."""

from __future__ import annotations

import json
import shutil
import ssl
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from layer_support import REPO, run_build

ARCH, MAJOR = "x86_64", "17"  # any arch works on any host: nothing is executed


@pytest.fixture(scope="module")
def two_builds(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    out = []
    for name in ("first", "second"):
        d = tmp_path_factory.mktemp(name)
        run_build("--arch", ARCH, "--majors", MAJOR, "--force", "--out-dir", str(d))
        out.append(d / f"pg-clients-{ARCH}.zip")
    return out[0], out[1]


def test_two_builds_are_byte_identical(two_builds: tuple[Path, Path]) -> None:
    first, second = two_builds
    assert first != second
    assert first.read_bytes() == second.read_bytes()


def test_entries_do_not_depend_on_the_other_majors(two_builds: tuple[Path, Path], layer_zips: dict[str, Path]) -> None:
    """pg/17 and pg/lib of the one-major build are the very files of the full layer."""
    with zipfile.ZipFile(two_builds[0]) as small, zipfile.ZipFile(layer_zips[ARCH]) as full:
        names = [n for n in small.namelist() if n != "pg/manifest.json"]
        assert any(n.startswith(f"pg/{MAJOR}/bin/") for n in names)
        assert not any(n.startswith("pg/16/") for n in small.namelist())
        for name in names:
            assert small.read(name) == full.read(name), name


def test_up_to_date_only_for_the_same_inputs(two_builds: tuple[Path, Path], tmp_path: Path) -> None:
    out_dir = tmp_path
    for f in two_builds[0].parent.glob(f"pg-clients-{ARCH}.*"):
        shutil.copy2(f, out_dir / f.name)
    again = run_build("--arch", ARCH, "--majors", MAJOR, "--out-dir", str(out_dir))
    assert "is up to date" in again.stderr
    other = run_build("--arch", ARCH, "--majors", "16", "--out-dir", str(out_dir))
    assert "is up to date" not in other.stderr
    with zipfile.ZipFile(out_dir / f"pg-clients-{ARCH}.zip") as zf:
        assert any(n.startswith("pg/16/bin/") for n in zf.namelist())
        assert not any(n.startswith(f"pg/{MAJOR}/") for n in zf.namelist())


def test_rds_ca_bundle_option(tmp_path: Path) -> None:
    ca = tmp_path / "mine.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=supplied-bundle",
            "-keyout",
            str(tmp_path / "k"),
            "-out",
            str(ca),
        ],
        check=True,
        capture_output=True,
    )
    ca.write_text("some preamble text\n" + ca.read_text() + ca.read_text())  # noise and a duplicate
    run_build("--arch", ARCH, "--majors", MAJOR, "--rds-ca-bundle", str(ca), "--out-dir", str(tmp_path))
    with zipfile.ZipFile(tmp_path / f"pg-clients-{ARCH}.zip") as zf:
        shipped = zf.read("pg/certs/rds-ca-bundle.pem").decode()
        manifest = json.loads(zf.read("pg/manifest.json"))
    der = ssl.PEM_cert_to_DER_cert(ca.read_text().split("text\n", 1)[1])
    assert shipped == ssl.DER_cert_to_PEM_cert(der)
    assert manifest["rds_ca_bundle"]["certificates"] == 1
    assert manifest["rds_ca_bundle"]["source"].startswith("file mine.pem")


def test_rds_ca_bundle_option_rejects_a_file_without_certificates(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.pem"
    bogus.write_text("-----BEGIN CERTIFICATE-----\nnot base64 at all!\n-----END CERTIFICATE-----\n")
    proc = subprocess.run(
        [
            sys.executable,
            "layers/build.py",
            "--arch",
            ARCH,
            "--majors",
            MAJOR,
            "--rds-ca-bundle",
            str(bogus),
            "--out-dir",
            str(tmp_path),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 1
    assert "no PEM certificate found" in proc.stderr
    assert not (tmp_path / f"pg-clients-{ARCH}.zip").exists()
