"""Package the stack once per variant and session, the way `make package` does, into a temp directory.

Packaging runs `python -m stack.package` in a child process (Chalice imports app.py and changes
os.environ while doing so). It needs no AWS account: a region and dummy credentials are set, and
nothing is called. It does need the functions' dependency wheels for the Lambda platform: from the
package index, or offline from a wheelhouse (LIFEBOAT_WHEELHOUSE, default .cache/wheelhouse when it
exists; fill one with `python -m stack.wheelhouse .cache/wheelhouse`). Chalice caches the result in
.chalice/deployments/, keyed by requirements.txt and the app's files.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
EXIT_NO_WHEELS = 3  # stack.package: the dependency wheels could not be fetched


@dataclass(frozen=True)
class Variant:
    stage: str
    arch: str
    targets: tuple[str, ...] = ()


# One variant per stage and per architecture; the first also carries per-target alarms.
VARIANTS = {
    "dev-x86_64": Variant("dev", "x86_64", ("shop=1d", "billing=6h", "shop=1d:snapshot")),
    "prod-arm64": Variant("prod", "arm64"),
}


@dataclass(frozen=True)
class Packaged:
    variant: Variant
    directory: Path
    template: dict[str, Any]
    seconds: float

    @property
    def resources(self) -> dict[str, Any]:
        res: dict[str, Any] = self.template["Resources"]
        return res

    def of_type(self, type_name: str) -> dict[str, dict[str, Any]]:
        return {k: v for k, v in self.resources.items() if v.get("Type") == type_name}


def packaging_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        AWS_DEFAULT_REGION="us-east-1",
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_EC2_METADATA_DISABLED="true",
        PYTHONDONTWRITEBYTECODE="1",
    )
    return env


def wheelhouse() -> Path | None:
    configured = os.environ.get("LIFEBOAT_WHEELHOUSE")
    if configured:
        return Path(configured)
    default = REPO / ".cache" / "wheelhouse"
    return default if default.is_dir() else None


def run_package(variant: Variant, out: Path) -> float:
    cmd = [
        sys.executable,
        "-m",
        "stack.package",
        "--stage",
        variant.stage,
        "--arch",
        variant.arch,
        "--out",
        str(out),
        "--no-layer-zip",
    ]
    for target in variant.targets:
        cmd += ["--target", target]
    started = time.monotonic()
    wh = wheelhouse()
    proc = None
    if wh:
        proc = subprocess.run(
            [*cmd, "--wheelhouse", str(wh)],
            cwd=REPO,
            env=packaging_env(),
            capture_output=True,
            text=True,
            timeout=240,
            check=False,
        )
    if proc is None or proc.returncode == EXIT_NO_WHEELS:  # no wheelhouse, or a stale one: the index
        proc = subprocess.run(
            cmd, cwd=REPO, env=packaging_env(), capture_output=True, text=True, timeout=240, check=False
        )
    if proc.returncode == EXIT_NO_WHEELS:
        pytest.skip(f"chalice cannot fetch the dependency wheels (no index, no wheelhouse): {proc.stderr[-400:]}")
    if proc.returncode != 0:
        pytest.fail(f"stack.package failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return time.monotonic() - started


@pytest.fixture(scope="session", params=list(VARIANTS))
def packaged(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Packaged:
    variant = VARIANTS[request.param]
    out = tmp_path_factory.mktemp(f"package-{request.param}")
    seconds = run_package(variant, out)
    template = json.loads((out / "sam.json").read_text())
    return Packaged(variant, out, template, seconds)


@pytest.fixture(scope="session")
def resources_only(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The standalone template for `chalice deploy` (no functions, no layer)."""
    out = tmp_path_factory.mktemp("resources-only") / "stack.json"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "stack.build_template",
            "--stage",
            "prod",
            "--resources-only",
            "--out",
            str(out),
            "--target",
            "shop=12h",
        ],
        cwd=REPO,
        env=packaging_env(),
        check=True,
        capture_output=True,
        timeout=120,
    )
    return out
