"""`pip install pg-lifeboat` gives a working `lifeboat`: the wheel holds one top-level package (`chalicelib`, all
of it) and declares requirements.txt as its dependencies; in a fresh venv (no system site-packages) installed
from a wheelhouse without an index, `lifeboat --version`, `--help` and a command run."""

from __future__ import annotations

import email
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
NOT_SOURCES = (".venv", ".cache", ".git", ".chalice", "out", "dist", "build", "*.egg-info", "__pycache__", ".demo")
TOOL_CACHES = (".mypy_cache", ".ruff_cache", ".pytest_cache", ".hypothesis")


def requirements() -> list[str]:
    lines = (REPO / "requirements.txt").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's wheel, built from a copy of the checkout (a build writes build/ and *.egg-info beside it)."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "source"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(*NOT_SOURCES, *TOOL_CACHES, "dist"))
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            work / "dist",
            source,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert built.returncode == 0, built.stderr[-2000:]
    [found] = (work / "dist").glob("pg_lifeboat-*.whl")
    return found


def test_the_wheel_holds_chalicelib_and_declares_requirements_txt(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        [dist_info] = {n.split("/")[0] for n in names if n.split("/")[0].endswith(".dist-info")}
        metadata = email.message_from_bytes(zf.read(f"{dist_info}/METADATA"))
        entry_points = zf.read(f"{dist_info}/entry_points.txt").decode()
    assert {n.split("/")[0] for n in names} == {"chalicelib", dist_info}
    sources = {str(p.relative_to(REPO)) for p in (REPO / "chalicelib").rglob("*.py") if "__pycache__" not in p.parts}
    assert sources <= set(names), sorted(sources - set(names))[:5]
    assert metadata.get_all("Requires-Dist") == requirements()
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert metadata["Version"] == project["version"] and metadata["Name"] == "pg-lifeboat"
    assert "lifeboat = chalicelib.pitr.fastfetch:main" in entry_points  # wal-fetch hits before the CLI loads


def wheelhouse(tmp_path: Path) -> Path:
    """The dependencies' wheels: LIFEBOAT_WHEELHOUSE or .cache/wheelhouse (python -m stack.wheelhouse), else
    downloaded from the configured index once."""
    given = os.environ.get("LIFEBOAT_WHEELHOUSE") or REPO / ".cache" / "wheelhouse"
    if Path(given).is_dir():
        return Path(given)
    target = tmp_path / "wheelhouse"
    pip = [sys.executable, "-m", "pip", "download", "--quiet", "-r", REPO / "requirements.txt", "-d", target]
    got = subprocess.run(pip, capture_output=True, text=True, check=False)
    if got.returncode != 0:
        pytest.skip(f"cannot download the dependency wheels (no index, no wheelhouse): {got.stderr[-300:]}")
    return target


@pytest.mark.slow
def test_a_fresh_venv_gets_a_working_lifeboat(wheel: Path, tmp_path: Path, config_path: Path) -> None:
    """~25 s: a venv, the wheel and its dependencies installed without an index, then the command, and `lifeboat
    check` against the test stand-ins (moto, a real PostgreSQL over verified TLS) passes every check."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    assert "include-system-site-packages = false" in (venv / "pyvenv.cfg").read_text()
    install = [venv / "bin" / "pip", "--isolated", "install", "--quiet", "--no-index"]
    links = ["--find-links", wheel.parent, "--find-links", wheelhouse(tmp_path)]
    installed = subprocess.run([*install, *links, "pg-lifeboat"], capture_output=True, text=True, check=False)
    assert installed.returncode == 0, installed.stderr[-2000:]

    clean = {k: v for k, v in os.environ.items() if not k.startswith(("LIFEBOAT_", "PYTHON", "AWS_", "VIRTUAL_ENV"))}

    def lifeboat(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [venv / "bin" / "lifeboat", *argv], capture_output=True, text=True, cwd=tmp_path, env=clean, check=False
        )

    version = lifeboat("--version")
    expected = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert (version.returncode, version.stdout) == (0, f"lifeboat {expected}\n"), version.stderr
    usage = lifeboat("--help")
    assert usage.returncode == 0 and "exit codes:" in usage.stdout and "completion" in usage.stdout
    assert "complete -F _lifeboat lifeboat" in lifeboat("completion", "bash").stdout
    missing = lifeboat("--config", str(tmp_path / "none.json"), "validate")
    assert missing.returncode == 2 and "cannot read configuration file" in missing.stderr
    python = venv / "bin" / "python"
    probe = subprocess.run(
        [python, "-c", "import devstack"], capture_output=True, text=True, cwd=tmp_path, env=clean, check=False
    )
    assert probe.returncode == 1 and "No module named 'devstack'" in probe.stderr

    # Against the stand-ins, as an operator would after `make devstack`: the environment the fixtures set.
    clean.update({k: v for k, v in os.environ.items() if k.startswith(("LIFEBOAT_", "AWS_"))})
    assert clean["LIFEBOAT_CONFIG"] == str(config_path)
    applied = lifeboat("lifecycle", "--apply")
    assert applied.returncode == 0, applied.stderr
    checked = lifeboat("check", "shop")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "FAIL" not in checked.stdout and "login" in checked.stdout
