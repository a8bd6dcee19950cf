"""Cold start (issue 17): `import app` is what every Lambda function pays before its first event, so it pulls in
no PostgreSQL driver, builds no boto3 client and builds no pydantic model but the environment's settings. Each
check runs in a fresh interpreter (this process has long imported everything); no timing is asserted, only
what was imported and built."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

from stack.bytecode import add_bytecode

REPO = Path(__file__).resolve().parents[2]

# Runs in the child: what `import app` left behind, then the same after building one model and one client,
# which shows the probe would see them.
PROBE = """
import gc, json, sys
import app
frozen = gc.get_freeze_count()
collecting = gc.isenabled()

from pydantic import BaseModel

def models():
    seen, todo = set(), [BaseModel]
    while todo:
        for sub in todo.pop().__subclasses__():
            if sub not in seen:
                seen.add(sub)
                todo.append(sub)
    return [m for m in seen if m.__module__.split(".")[0] in ("chalicelib", "app")]

def state():
    botocore_client = sys.modules.get("botocore.client")
    return {
        "models": len(models()),
        "built": sorted(f"{m.__module__}.{m.__qualname__}" for m in models() if m.__pydantic_complete__),
        "clients": len(botocore_client.BaseClient.__subclasses__()) if botocore_client else 0,
        "psycopg": sorted(name for name in sys.modules if name.split(".")[0] in ("psycopg", "psycopg2")),
        "pydantic_settings": "pydantic_settings" in sys.modules,
    }

after_import = state()
from chalicelib.logical.catalog import ManifestObject
ManifestObject(role="dump", key="k", size=1, sha256="0" * 64)
import boto3
boto3.client("s3", region_name="eu-west-1")
print(json.dumps({"after_import": after_import, "after_use": state(), "frozen": frozen, "collecting": collecting}))
"""


def probe() -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=REPO, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_import_app_builds_only_the_settings_model_and_no_client_nor_driver() -> None:
    found = probe()
    after_import, after_use = found["after_import"], found["after_use"]
    assert after_import["models"] >= 20, "the probe found too few chalicelib models to mean anything"
    assert after_import["built"] == ["chalicelib.env.Env"], "a model built at import (defer_build=True?)"
    assert after_import["clients"] == 0, "a boto3 client built at import (chalicelib.wiring builds on first use)"
    assert after_import["psycopg"] == [], "psycopg imported by `import app`"
    assert not after_import["pydantic_settings"], "pydantic-settings imported (chalicelib.env needs only pydantic)"
    # The probe sees a build and a client when there is one:
    assert "chalicelib.logical.manifest.ManifestObject" in after_use["built"]
    assert after_use["clients"] == 1


def test_import_app_leaves_what_it_imported_out_of_the_collectors_scans() -> None:
    """app.py imports with the collector off and ends with gc.freeze(): the first event's clients are built without
    rescanning the imports, and the collector is on again for everything after."""
    found = probe()
    assert found["frozen"] > 10_000
    assert found["collecting"]


def test_the_functions_skip_pydantic_plugin_discovery() -> None:
    """Every schema build would otherwise scan all installed distributions' entry points (importlib.metadata)."""
    config = json.loads((REPO / ".chalice" / "config.json").read_text())
    assert config["environment_variables"]["PYDANTIC_DISABLE_PLUGINS"] == "__all__"


def test_the_deployment_package_gets_bytecode_that_python_uses(tmp_path: Path) -> None:
    """stack.bytecode: a .pyc beside each source, used as it is (unchecked), every other entry kept as it was."""
    package = tmp_path / "deployment.zip"
    with zipfile.ZipFile(package, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("app.py", "import pkg.mod\n")
        zf.writestr("pkg/__init__.py", "")
        zf.writestr("pkg/mod.py", "def answer() -> int:\n    return 1\n")
        zf.writestr("pkg/py2.py", "print 'another Python'\n")  # left as source
        tool = zipfile.ZipInfo("bin/tool", date_time=(2020, 1, 2, 3, 4, 6))
        tool.external_attr = 0o755 << 16
        zf.writestr(tool, b"\x7fELF", compress_type=zipfile.ZIP_STORED)

    assert add_bytecode(package) == 3
    with zipfile.ZipFile(package) as zf:
        names = set(zf.namelist())
        kept = zf.getinfo("bin/tool")
        zf.extractall(tmp_path / "task")
    tag = sys.implementation.cache_tag
    assert {f"__pycache__/app.{tag}.pyc", f"pkg/__pycache__/mod.{tag}.pyc", "pkg/py2.py"} <= names
    assert f"pkg/__pycache__/py2.{tag}.pyc" not in names
    assert (kept.external_attr >> 16, kept.compress_type, kept.date_time) == (0o755, zipfile.ZIP_STORED, tool.date_time)
    assert add_bytecode(package) == 0, "a second pass adds nothing"

    # The source changes after packaging: Python still runs the bytecode (unchecked), and names the real path.
    task = tmp_path / "task"
    (task / "pkg" / "mod.py").write_text("def answer() -> int:\n    return 2\n")
    code = "import app, pkg.mod; print(pkg.mod.answer(), pkg.mod.answer.__code__.co_filename)"
    done = subprocess.run(
        [sys.executable, "-S", "-c", code],
        cwd=task,
        env={"PYTHONPATH": str(task), "PYTHONDONTWRITEBYTECODE": "1"},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert done.stdout.split() == ["1", str(task / "pkg" / "mod.py")]


def test_the_console_scripts_module_imports_only_the_standard_library_and_the_spool() -> None:
    """`lifeboat` starts in chalicelib.pitr.fastfetch (a wal-fetch spool hit is served there, once per WAL segment
    of a recovery): importing it costs the standard library and the spool's three modules, nothing installed."""
    code = (
        "import json, sys\n"
        "before = set(sys.modules)\n"
        "import chalicelib.pitr.fastfetch\n"
        "print(json.dumps(sorted(set(sys.modules) - before)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60, check=True
    )
    imported = json.loads(done.stdout)
    first_party = {m for m in imported if m.split(".")[0] == "chalicelib"}
    others = {m for m in imported if m.split(".")[0] not in sys.stdlib_module_names and m not in first_party}
    assert first_party == {
        "chalicelib",
        "chalicelib.errors",
        "chalicelib.pitr",
        "chalicelib.pitr.fastfetch",
        "chalicelib.pitr.spool",
        "chalicelib.pitr.walnames",
    }
    assert others == set(), "the console script's module imports an installed package"
