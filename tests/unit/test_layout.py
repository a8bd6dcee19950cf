"""The layout's promises, checked on the source: a newcomer can rely on them without reading every file.

- no import cycle among chalicelib modules, function-level imports included;
- first-party imports at the top of the file (function-level imports only for heavy third-party packages);
- no file over 500 lines, no function over 60 lines without a comment saying why;
- the environment is read in chalicelib/env.py only, boto3 clients are built in chalicelib/wiring.py only;
- `except Exception` only with a comment on the same line saying why, and rarely;
- capability folders never import the web layer (app, api) or Chalice.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "chalicelib"
SOURCES = sorted(PACKAGE.rglob("*.py"))
MAX_FILE_LINES = 500
MAX_FUNCTION_LINES = 60
CAPABILITIES = ("adapters", "logical", "physical", "restore", "scheduling")


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in SOURCES}


def imports_of(path: Path) -> list[tuple[str, bool]]:
    """(first-party module imported, at top level?) for every import in the file."""
    tree = ast.parse(path.read_text())
    top = {id(n) for n in tree.body}
    top |= {id(n) for node in tree.body if isinstance(node, ast.If) for n in node.body}  # TYPE_CHECKING blocks
    found = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "chalicelib":
            names = [
                f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in MODULES else node.module for a in node.names
            ]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names if a.name.split(".")[0] == "chalicelib"]
        found += [(n, id(node) in top) for n in names if n in MODULES]
    return found


def test_no_import_cycles() -> None:
    graph = {m: {i for i, _ in imports_of(p)} - {m} for m, p in MODULES.items()}
    graph = {m: {d for d in deps if d != "chalicelib"} for m, deps in graph.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in graph[m]:
            if state.get(d) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*stack[stack.index(d) :], d]))
            if d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m)


def test_first_party_imports_are_at_the_top() -> None:
    late = [f"{p.relative_to(REPO)}: {m}" for p in SOURCES for m, top in imports_of(p) if not top]
    assert late == []


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(REPO)))
def test_files_and_functions_stay_small(path: Path) -> None:
    lines = path.read_text().splitlines()
    assert len(lines) <= MAX_FILE_LINES, f"{len(lines)} lines"
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            length = (node.end_lineno or node.lineno) - node.lineno + 1
            if length > MAX_FUNCTION_LINES:
                head = "\n".join(lines[node.lineno - 1 : node.body[0].end_lineno or node.lineno][:30])
                nxt = lines[(node.body[0].end_lineno or node.lineno) : (node.body[0].end_lineno or node.lineno) + 2]
                assert "long because" in head + "\n".join(nxt), f"{node.name}: {length} lines, no reason given"


def grep(text: str) -> set[str]:
    return {str(p.relative_to(REPO)) for p in [*SOURCES, REPO / "app.py"] if text in p.read_text()}


def test_the_environment_is_read_in_one_module() -> None:
    assert grep("os.environ") | grep("os.getenv") <= {"chalicelib/env.py", "chalicelib/adapters/pgtools.py"}
    # pgtools builds a child's whole environment from a few allowed variables (PATH, TZ, LANG...): see minimal_env
    assert "os.environ" not in (PACKAGE / "adapters" / "pgtools.py").read_text().replace(
        "os.environ.items() if k in", ""
    )


def test_clients_are_built_in_one_module() -> None:
    assert grep("boto3.client(") <= {"chalicelib/wiring.py"}
    assert grep("boto3.Session(") <= {"chalicelib/wiring.py"}


def test_broad_excepts_say_why() -> None:
    """`except BaseException` only to clean up and re-raise; `except Exception` rarely, each with its reason."""
    broad = [
        (p, line)
        for p in SOURCES
        for line in p.read_text().splitlines()
        if "except Exception" in line or "except BaseException" in line
    ]
    silent = [f"{p.relative_to(REPO)}: {line.strip()}" for p, line in broad if "#" not in line]
    assert silent == []
    base = [line for _, line in broad if "except BaseException" in line]
    assert all("raise" in line for line in base), base
    catch_all = [f"{p.relative_to(REPO)}: {line.strip()}" for p, line in broad if "except Exception" in line]
    assert len(catch_all) < 5, catch_all


def test_capabilities_never_import_the_web_layer() -> None:
    for path in SOURCES:
        if path.relative_to(PACKAGE).parts[0] in CAPABILITIES:
            imported = {m for m, _ in imports_of(path)}
            text = path.read_text()
            assert "chalicelib.api" not in imported and "chalicelib.entrypoints" not in imported, path
            assert "from chalice " not in text and "from chalice." not in text and "import app\n" not in text, path
