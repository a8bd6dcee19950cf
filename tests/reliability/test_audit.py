"""Known vulnerabilities in what the Lambda functions ship: `pip-audit -r requirements.txt`.

pip-audit asks PyPI's JSON API for each resolved dependency (`/pypi/<name>/<version>/json`, whose
`vulnerabilities` come from the OSV database). When that API does not answer, pip-audit does not fail:
it skips every dependency ("Dependency not found on PyPI and could not be audited") and still prints "No
known vulnerabilities found" with exit status 0. So this test probes the API first and reads pip-audit's
JSON report: it skips, saying why, when nothing could be audited, and fails on any known vulnerability.

Also runnable on its own: `.venv/bin/python -m pytest tests/reliability/test_audit.py -q -rs`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
import warnings
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
REQUIREMENTS = REPO / "requirements.txt"
API = "https://pypi.org/pypi/{name}/{version}/json"


def pins(path: Path) -> list[tuple[str, str]]:
    found = []
    for line in path.read_text().splitlines():
        m = re.match(r"^\s*([A-Za-z0-9_.-]+)(\[[^]]*\])?\s*==\s*([^\s;#]+)", line)
        if m:
            found.append((m.group(1), m.group(3)))
    return found


def pip_audit() -> Path | None:
    beside = Path(sys.executable).parent / "pip-audit"
    if beside.exists():
        return beside
    found = shutil.which("pip-audit")
    return Path(found) if found else None


def vulnerability_api_problem(name: str, version: str) -> str | None:
    url = API.format(name=name, version=version)
    try:
        with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 (a fixed https URL)
            doc = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return f"{url} answered {exc.code}"
    except (urllib.error.URLError, TimeoutError, OSError, ValueError) as exc:
        return f"{url} is unreachable ({exc})"
    if "vulnerabilities" not in doc:
        return f"{url} has no 'vulnerabilities' field"
    return None


def test_runtime_requirements_have_no_known_vulnerabilities(tmp_path: Path) -> None:
    exe = pip_audit()
    if exe is None:
        pytest.skip("pip-audit is not installed: `make venv` installs it (requirements-dev.txt)")
    requirements = pins(REQUIREMENTS)
    assert requirements, f"no pinned requirements in {REQUIREMENTS}"
    problem = vulnerability_api_problem(*requirements[0])
    if problem:
        pytest.skip(
            f"the PyPI vulnerability API is not usable from here: {problem}; pip-audit would skip every"
            " dependency and still report 'No known vulnerabilities found'"
        )
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    run = subprocess.run(
        [
            str(exe),
            "-r",
            str(REQUIREMENTS),
            "-f",
            "json",
            "--progress-spinner",
            "off",
            "--cache-dir",
            str(tmp_path / "cache"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=False,
    )
    if run.returncode not in (0, 1) or not run.stdout.strip():
        pytest.fail(f"pip-audit failed (exit {run.returncode}):\n{run.stderr[-3000:]}")
    audited, skipped, found = findings(json.loads(run.stdout))
    if not audited:
        pytest.skip(
            f"pip-audit could audit none of the {len(skipped)} dependencies (the vulnerability"
            f" service did not answer for them), e.g. {next(iter(skipped.values()), '')}"
        )
    if skipped:
        warnings.warn(f"pip-audit could not audit {sorted(skipped)}", stacklevel=1)
    assert found == [], "known vulnerabilities in requirements.txt:\n" + "\n".join(found)


def findings(report: dict[str, Any]) -> tuple[list[str], dict[str, str], list[str]]:
    """(audited names, {skipped name: reason}, one line per known vulnerability) of a `pip-audit -f json` report."""
    dependencies = report.get("dependencies", [])
    skipped = {d["name"]: d["skip_reason"] for d in dependencies if d.get("skip_reason")}
    audited = [d for d in dependencies if not d.get("skip_reason")]
    found = [
        f"{d['name']} {d['version']}: {v['id']} (fixed in {', '.join(v.get('fix_versions', [])) or 'nothing yet'})"
        for d in audited
        for v in d.get("vulns", [])
    ]
    return [d["name"] for d in audited], skipped, found


def test_the_report_is_read_the_way_pip_audit_writes_it() -> None:
    """The check itself, on a report in pip-audit 2.x's JSON format (the live run may have to skip)."""
    report = {
        "dependencies": [
            {
                "name": "urllib3",
                "version": "1.26.5",
                "vulns": [
                    {
                        "id": "GHSA-v845-jxx5-vc9f",
                        "fix_versions": ["1.26.17", "2.0.6"],
                        "aliases": ["CVE-2023-43804"],
                        "description": "...",
                    }
                ],
            },
            {"name": "boto3", "version": "1.44.8", "vulns": []},
            {
                "name": "croniter",
                "skip_reason": "Dependency not found on PyPI and could not be audited: croniter (7.0.0)",
            },
        ],
        "fixes": [],
    }
    audited, skipped, found = findings(report)
    assert audited == ["urllib3", "boto3"] and list(skipped) == ["croniter"]
    assert found == ["urllib3 1.26.5: GHSA-v845-jxx5-vc9f (fixed in 1.26.17, 2.0.6)"]
    assert findings({"dependencies": [{"name": "x", "skip_reason": "not found"}]})[0] == []
