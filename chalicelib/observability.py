"""Powertools Logger, Metrics and Tracer, created once and cheaply.

The Logger's service is "lifeboat", not the Chalice app name: a Logger named like the app prints every
line twice. The Tracer patches botocore when created (~0.4 s), so it is built on first use only.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from typing import TYPE_CHECKING, TextIO

from aws_lambda_powertools import Logger

from chalicelib import env

if TYPE_CHECKING:
    from aws_lambda_powertools import Tracer

SERVICE = "lifeboat"

logger = Logger(service=SERVICE)


@contextmanager
def command_line_logging(verbose: bool, stream: TextIO) -> Iterator[None]:
    """The log lines of a command line run: with `verbose`, INFO and above on `stream` (stderr: stdout is the
    command's output); without, none at all (the command reports its one error itself). Lambda's logging
    (stdout, POWERTOOLS_LOG_LEVEL) is back after the block."""
    base = logging.getLogger(logger.name)
    handlers = [h for h in base.handlers if isinstance(h, logging.StreamHandler)]
    saved_level, saved_streams = base.level, [h.stream for h in handlers]
    base.setLevel(logging.INFO if verbose else logging.CRITICAL + 1)
    for handler in handlers:
        handler.setStream(stream)
    try:
        yield
    finally:
        base.setLevel(saved_level)
        for handler, saved in zip(handlers, saved_streams, strict=True):
            handler.setStream(saved)


@cache
def tracer() -> Tracer:
    from aws_lambda_powertools import Tracer

    return Tracer(service=SERVICE)


def tracing_enabled() -> bool:
    """X-Ray tracing only where Lambda traces (its trace header is set) and not switched off."""
    return bool(env.lambda_trace_id()) and not env.current().trace_disabled


@contextmanager
def traced(name: str, **annotations: str) -> Iterator[None]:
    """A Powertools Tracer subsegment around a unit of work; free when tracing is off (no Tracer built)."""
    if not tracing_enabled():
        yield
        return
    with tracer().provider.in_subsegment(f"## {name}") as subsegment:
        for key, value in annotations.items():
            subsegment.put_annotation(key=key, value=value)
        yield


def record(name: str, value: float, unit: str, target: str | None = None) -> None:
    """One EMF metric in POWERTOOLS_METRICS_NAMESPACE, with the target as its dimension when given (flushed at
    once); none when metrics are off (POWERTOOLS_METRICS_DISABLED, POWERTOOLS_DEV, the CLI's default)."""
    from aws_lambda_powertools.metrics import MetricUnit, single_metric

    settings = env.current()
    if settings.metrics_off:
        return
    with single_metric(name=name, unit=MetricUnit(unit), value=value, namespace=settings.metrics_namespace) as metric:
        metric.add_dimension(name="service", value=SERVICE)
        if target:
            metric.add_dimension(name="target", value=target)
