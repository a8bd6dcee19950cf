"""choose_runner / choose_restore_runner: where a run goes, decided from plain values (no AWS, no database)."""

from __future__ import annotations

from typing import Any

import pytest

from chalicelib.config import Settings, Target
from chalicelib.fargate import MiB, choose_restore_runner, choose_runner

GB = 1_000_000_000
# Defaults: 900 s Lambda limit, share 0.5 (a 450 s budget), 20 MB/s.
SETTINGS = Settings(bucket="acme-pg-backups")


def target(**logical: Any) -> Target:
    return Target.model_validate({"name": "shop", "connection": {"host": "db", "user": "u"}, "logical": logical})


def test_small_and_fast_stays_on_lambda() -> None:
    d = choose_runner(target(), 120.0, 2 * GB, SETTINGS)
    assert (d.runner, d.final) == ("lambda", False)
    assert "previous run 120 s" in d.reason and "2.0 GB" in d.reason


def test_first_run_without_facts_stays_on_lambda() -> None:
    assert choose_runner(target(), None, None, SETTINGS).runner == "lambda"


def test_marked_large_goes_to_fargate_whatever_the_facts() -> None:
    d = choose_runner(target(runner="fargate"), 1.0, 1, SETTINGS)
    assert (d.runner, d.final) == ("fargate", True)
    assert "marked large" in d.reason


def test_explicit_lambda_wins_over_every_measurement() -> None:
    d = choose_runner(target(runner="lambda"), 890.0, 500 * GB, SETTINGS)
    assert (d.runner, d.final) == ("lambda", True)


def test_previous_run_over_the_share_goes_to_fargate() -> None:
    assert choose_runner(target(), 450.0, None, SETTINGS).runner == "lambda"  # at the budget: still fits
    d = choose_runner(target(), 451.0, None, SETTINGS)
    assert d.runner == "fargate"
    assert "451 s" in d.reason and "50% of the 900 s" in d.reason


def test_the_share_and_timeout_are_settings() -> None:
    tight = Settings(bucket="acme-pg-backups", fargate_share=0.25, lambda_timeout_seconds=600)  # 150 s budget
    assert choose_runner(target(), 151.0, None, tight).runner == "fargate"
    assert choose_runner(target(), 149.0, None, tight).runner == "lambda"


def test_size_predicts_a_long_run() -> None:
    # 9 GB at 20 MB/s: 450 s, just within; 10 GB: 500 s, over.
    assert choose_runner(target(), None, 9 * GB, SETTINGS).runner == "lambda"
    d = choose_runner(target(), None, 10 * GB, SETTINGS)
    assert d.runner == "fargate"
    assert "10.0 GB at 20 MB/s predicts 500 s" in d.reason
    fast = Settings(bucket="acme-pg-backups", fargate_bytes_per_second=100_000_000)
    assert choose_runner(target(), None, 10 * GB, fast).runner == "lambda"


def test_either_signal_is_enough() -> None:
    """A fast previous run does not overrule a size that has grown past the budget, nor the reverse."""
    assert choose_runner(target(), 30.0, 40 * GB, SETTINGS).runner == "fargate"
    assert choose_runner(target(), 800.0, 1 * GB, SETTINGS).runner == "fargate"


def test_whole_server_run_stays_on_lambda_its_databases_do_not() -> None:
    server = target(all_databases=True, runner="fargate")
    run = choose_runner(server, 3000.0, 100 * GB, SETTINGS)
    assert (run.runner, run.final) == ("lambda", True)
    assert "whole-server run" in run.reason
    assert choose_runner(server, None, None, SETTINGS, database="shop").runner == "fargate"
    auto = target(all_databases=True)
    assert choose_runner(auto, 600.0, None, SETTINGS, database="shop").runner == "fargate"
    assert choose_runner(auto, 60.0, None, SETTINGS, database="shop").runner == "lambda"


@pytest.mark.parametrize(
    ("runner", "dump_seconds", "size", "downloads", "expected"),
    [
        ("auto", 60.0, 100 * MiB, False, "lambda"),
        ("auto", 300.0, 100 * MiB, False, "fargate"),  # a restore is expected to take twice its dump: 600 > 450
        ("auto", 200.0, 100 * MiB, False, "lambda"),  # 400 s
        ("auto", 10.0, 2048 * MiB, False, "lambda"),  # streamed into pg_restore: /tmp does not matter
        ("auto", 10.0, 2048 * MiB, True, "fargate"),  # a parallel restore downloads 2 GiB into 512 MiB of /tmp
        ("auto", 10.0, 400 * MiB, True, "lambda"),
        ("fargate", 1.0, 1, False, "fargate"),
        ("lambda", 5000.0, 100_000 * MiB, True, "lambda"),
    ],
)
def test_restore_decision(runner: str, dump_seconds: float, size: int, downloads: bool, expected: str) -> None:
    assert choose_restore_runner(target(runner=runner), dump_seconds, size, downloads, SETTINGS).runner == expected


def test_restore_of_a_target_no_longer_configured_is_decided_by_its_facts() -> None:
    assert choose_restore_runner(None, 1000.0, 1, False, SETTINGS).runner == "fargate"
    assert choose_restore_runner(None, None, 1, False, SETTINGS).runner == "lambda"
    big_tmp = Settings(bucket="acme-pg-backups", lambda_ephemeral_storage_mib=10240)
    assert choose_restore_runner(None, 10.0, 2048 * MiB, True, big_tmp).runner == "lambda"


def test_settings_validate_their_ranges() -> None:
    from pydantic import ValidationError

    for bad in (
        {"fargate_share": 0},
        {"fargate_share": 1.5},
        {"lambda_timeout_seconds": 901},
        {"fargate_bytes_per_second": 0},
        {"lambda_ephemeral_storage_mib": 100},
    ):
        with pytest.raises(ValidationError):
            Settings(bucket="acme-pg-backups", **bad)
    with pytest.raises(ValidationError):
        target(runner="ec2")


def test_the_timeout_setting_matches_the_workers() -> None:
    """settings.lambda_timeout_seconds defaults to what .chalice/config.json gives the two workers."""
    import json
    from pathlib import Path

    functions = json.loads((Path(__file__).resolve().parents[2] / ".chalice" / "config.json").read_text())[
        "lambda_functions"
    ]
    assert {functions[f]["lambda_timeout"] for f in ("backup_worker", "restore_worker")} == {
        SETTINGS.lambda_timeout_seconds
    }
