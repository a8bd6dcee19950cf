"""The packaged functions carry their bytecode (stack/bytecode.py): Lambda's /var/task is read-only, so a
package without it compiles the app and every dependency again in each new container."""

from __future__ import annotations

import sys
import zipfile

from stack.bytecode import cached_name
from tests.stack.conftest import Packaged


def test_every_module_a_cold_start_imports_has_its_bytecode(packaged: Packaged) -> None:
    # Bytecode is this interpreter's: the functions' runtime must be the same Python.
    runtime = f"python{sys.version_info.major}.{sys.version_info.minor}"
    assert packaged.resources["BackupWorker"]["Properties"]["Runtime"] == runtime
    with zipfile.ZipFile(packaged.directory / "deployment.zip") as zf:
        names = set(zf.namelist())
    sources = {n for n in names if n.endswith(".py") and n.split("/")[0] in ("app.py", "chalicelib", "pydantic")}
    assert len(sources) > 100
    assert sorted(s for s in sources if cached_name(s) not in names) == []
