"""Running `lifeboat` in-process: exit code, stdout and stderr of one command (tests/cli)."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from chalicelib import env, wiring
from chalicelib.cli import main


@dataclass
class Ran:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


class Lifeboat:
    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self.capsys = capsys

    def __call__(self, *argv: str) -> Ran:
        """One run, as in a new process: no clients made before it (wiring.client._made: the ones it made)."""
        wiring.client.cache_clear()
        self.capsys.readouterr()
        out = io.StringIO()
        code = main(list(argv), out=out)
        captured = self.capsys.readouterr()
        return Ran(code, out.getvalue() + captured.out, captured.err)


@pytest.fixture
def lifeboat(capsys: pytest.CaptureFixture[str]) -> Iterator[Lifeboat]:
    env.reset()
    wiring.client.cache_clear()
    yield Lifeboat(capsys)
    env.reset()
    wiring.client.cache_clear()
