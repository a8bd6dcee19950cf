"""Chalice's test client, with Lambda contexts that have the function's real time limit.

Chalice's local LambdaContext allows 3 s whatever the configuration says; the backup worker watches
its remaining time, so the local runs give it the limit it has in AWS. The `local` stage sets no
environment of its own: the caller's environment (local endpoints, config file) applies.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import chalice.test
from chalice.local import LambdaContext


@contextmanager
def client(app: Any, max_runtime_ms: int = 900_000, project_dir: str = ".") -> Iterator[chalice.test.Client]:
    test_module: Any = chalice.test  # its LambdaContext is patched: the module is not typed for that
    original = test_module.LambdaContext
    test_module.LambdaContext = functools.partial(LambdaContext, max_runtime_ms=max_runtime_ms)
    try:
        with chalice.test.Client(app, stage_name="local", project_dir=project_dir) as c:
            yield c
    finally:
        test_module.LambdaContext = original
