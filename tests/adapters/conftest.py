"""The adapters against moto server: the jobs table as devstack (and the stack) create it, and a recorder of
the operations a client sends."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from chalicelib import wiring
from devstack.local import LocalStack


class Calls:
    """Every operation a client is asked for, with its parameters as the caller passed them
    (botocore's before-parameter-build event: once per request, before it is serialized)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, model: Any, params: dict[str, Any], **_: Any) -> None:
        self.calls.append((model.name, params))

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.calls]

    def clear(self) -> None:
        self.calls.clear()


@pytest.fixture
def dynamodb_calls(aws: LocalStack) -> Iterator[Calls]:
    calls = Calls()
    events = wiring.client("dynamodb").meta.events
    events.register("before-parameter-build.dynamodb", calls)
    yield calls
    events.unregister("before-parameter-build.dynamodb", calls)
