"""The Dockerfile, checked without a Docker engine: parsed and held to the rules below, and its layer
unpacking step run on this machine."""

from __future__ import annotations

import fnmatch
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY|PRIVATE|CREDENTIAL", re.IGNORECASE)
SECRET_VALUE = re.compile(r"AKIA[0-9A-Z]{16}|-----BEGIN [A-Z ]*PRIVATE KEY-----|aws_secret_access_key", re.IGNORECASE)


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        text = pending + line
        pending = ""
        keyword, _, args = text.partition(" ")
        out.append((keyword.upper(), args.strip()))
    assert not pending, "the Dockerfile ends inside a continued line"
    return out


def of(keyword: str) -> list[str]:
    return [args for k, args in instructions() if k == keyword]


def build_args() -> dict[str, str]:
    return dict(a.split("=", 1) for a in of("ARG") if "=" in a)


def env() -> dict[str, str]:
    found: dict[str, str] = {}
    for args in of("ENV"):
        for item in shlex.split(args):
            key, _, value = item.partition("=")
            found[key] = value
    return found


def test_base_image_is_pinned() -> None:
    [base] = of("FROM")
    image = base.split()[0]
    assert "@sha256:" in image or re.search(r":\d+\.\d+\.\d+[\w.-]*$", image), f"{image}: pin a version or a digest"
    assert not image.endswith(":latest")
    assert re.search(r"python:3\.12\.", image), "the functions' Python (3.12)"
    assert "bookworm" in image, "a glibc new enough for the layer's binaries (2.34+)"


def test_entry_point_is_lifeboat() -> None:
    assert [json.loads(a) for a in of("ENTRYPOINT")] == [["lifeboat"]]
    assert [json.loads(a) for a in of("CMD")] == [["--help"]]
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["lifeboat"] == "chalicelib.pitr.fastfetch:main"  # wal-fetch spool hits first
    assert any("pip install" in r and " ." in r for r in of("RUN")), "the project is installed (entry point)"


def test_the_layer_zip_is_unpacked_to_opt() -> None:
    assert build_args()["ARCH"] in ("x86_64", "arm64")
    copies = [a.split() for a in of("COPY")]
    assert ["layers/dist/pg-clients-${ARCH}.zip", "/tmp/pg-clients.zip"] in copies
    assert any("/tmp/pg-clients.zip" in r and "'/opt'" in r for r in of("RUN"))
    variables = env()
    assert variables["LIFEBOAT_PG_ROOTS"] == "/opt/pg"
    assert variables["LIFEBOAT_CA_BUNDLE"] == "/opt/pg/certs/rds-ca-bundle.pem"
    for arch in ("x86_64", "arm64"):
        zip_path = REPO / "layers" / "dist" / f"pg-clients-{arch}.zip"
        if zip_path.exists():
            with zipfile.ZipFile(zip_path) as zf:
                assert "pg/certs/rds-ca-bundle.pem" in zf.namelist()


def test_runs_unprivileged_and_holds_no_secrets() -> None:
    users = of("USER")
    assert users and users[-1].split(":")[0] not in ("root", "0")
    order = [k for k, _ in instructions()]
    assert order.index("ENTRYPOINT") > len(order) - 1 - order[::-1].index("USER")
    assert not of("ADD"), "COPY, not ADD (no remote URLs, no implicit unpacking)"
    for name in [*env(), *build_args()]:
        assert not SECRET_NAME.search(name), f"{name}: secrets come from Secrets Manager at run time, not the image"
    assert not SECRET_VALUE.search(DOCKERFILE.read_text())
    for args in of("RUN"):
        if "pip install" in args:
            assert "--no-cache-dir" in args
    requirements = [r for r in (REPO / "requirements.txt").read_text().splitlines() if r and not r.startswith("#")]
    assert all("==" in r for r in requirements), "pinned dependencies: the image is reproducible"


def ignored(path: str, patterns: list[str]) -> bool:
    """.dockerignore semantics, enough for ours: in order, the last matching pattern wins; `!` re-includes;
    a pattern matching a directory matches everything under it."""
    result = False
    parts = path.split("/")
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern.lstrip("!").rstrip("/")
        if pat.startswith("**/"):
            hit = any(fnmatch.fnmatchcase(p, pat[3:]) for p in parts)
        else:
            hit = any(fnmatch.fnmatchcase("/".join(parts[:i]), pat) for i in range(1, len(parts) + 1))
        if hit:
            result = not negate
    return result


def test_build_context_holds_only_what_is_copied() -> None:
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert patterns[0] == "*", "start from nothing; allow what the Dockerfile copies"
    sources = [src for a in of("COPY") for src in a.split()[:-1] if not src.startswith("--")]
    for src in sources:
        for arch in ("x86_64", "arm64"):
            path = src.replace("${ARCH}", arch)
            assert not ignored(path, patterns), f"{path} is copied but .dockerignore excludes it"
            if "layers/dist" not in path:  # built by `make layers`, not committed
                assert (REPO / path).exists(), path
    for private in (
        ".venv/bin/python",
        ".git/config",
        ".chalice/deployed/dev.json",
        ".cache/wheelhouse/x.whl",
        ".aws/credentials",
        "out/dev-x86_64/sam.json",
        "tests/conftest.py",
        ".env",
        "chalicelib/__pycache__/cli.cpython-312.pyc",
        "layers/dist/pg-clients-x86_64.inputs",
    ):
        assert ignored(private, patterns), f"{private} would be sent to the Docker daemon"


def test_the_unpack_step_yields_runnable_clients(tmp_path: Path) -> None:
    """The RUN that unpacks the layer, run here with the paths moved into a temporary directory: the binaries
    keep their execute bits and run, and the Toolbox finds them under LIFEBOAT_PG_ROOTS."""
    arch = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "arm64", "arm64": "arm64"}.get(platform.machine())
    if arch is None:
        pytest.skip(f"no layer is built for this machine ({platform.machine()})")
    zip_path = REPO / "layers" / "dist" / f"pg-clients-{arch}.zip"
    if not zip_path.exists():  # what `make image` does first; the layer tests reuse it
        subprocess.run([sys.executable, str(REPO / "layers" / "build.py"), "--arch", arch], check=True, timeout=600)
    [step] = [r for r in of("RUN") if "/tmp/pg-clients.zip" in r]
    code = re.search(r'python -c "([^"]+)"', step)
    assert code, step
    opt = tmp_path / "opt"
    opt.mkdir()
    script = code.group(1).replace("/tmp/pg-clients.zip", str(zip_path)).replace("'/opt'", repr(str(opt)))
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
    check = step.split("&&")[-1].strip().replace("/opt/", f"{opt}/")
    out = subprocess.run(["sh", "-c", check], check=True, capture_output=True, text=True, timeout=60).stdout
    assert out.count("pg_dump (PostgreSQL)") >= 1, out
    from chalicelib.adapters.pgtools import Toolbox

    toolbox = Toolbox([opt / "pg"])
    pg_dump = toolbox.pick("pg_dump", 17)
    assert os.access(pg_dump.path, os.X_OK)
    assert oct(pg_dump.path.stat().st_mode & 0o777) == "0o755"
    assert oct((opt / "pg" / "certs" / "rds-ca-bundle.pem").stat().st_mode & 0o777) == "0o644"
