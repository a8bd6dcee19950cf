"""Fixtures for the PostgreSQL client layer tests: build (or reuse) the zips once per session and unpack
them where a path looks like /opt."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.append(str(Path(__file__).resolve().parents[2] / "layers"))  # pglayer, the code behind layers/build.py

from layer_support import ARCHES, REPO, Layer, run_build, unpack


@pytest.fixture(scope="session")
def layer_zips() -> dict[str, Path]:
    """layers/dist/pg-clients-<arch>.zip, built by layers/build.py unless already up to date."""
    run_build("--arch", "all")
    zips = {arch: REPO / "layers" / "dist" / f"pg-clients-{arch}.zip" for arch in ARCHES}
    for path in zips.values():
        assert path.is_file(), path
    return zips


@pytest.fixture(scope="session")
def layers(layer_zips: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Layer]:
    out = {}
    for arch, path in layer_zips.items():
        opt = unpack(path, tmp_path_factory.mktemp(f"layer-{arch}"))
        out[arch] = Layer(arch, path, opt)
    return out


@pytest.fixture(params=ARCHES)
def layer(request: pytest.FixtureRequest, layers: dict[str, Layer]) -> Layer:
    return layers[request.param]
