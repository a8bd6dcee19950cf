"""chalicelib.env: every variable parsed once, with defaults and errors that name the variable; and what
chalicelib.wiring builds from it (the clients' region, the command line's options)."""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from chalicelib import env, wiring
from chalicelib.errors import ConfigError


@pytest.fixture(autouse=True)
def clean(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """None of the variables set, no options, no cached clients or region."""
    for name in env.VARIABLES:
        monkeypatch.delenv(name, raising=False)
    env.reset()
    wiring.client.cache_clear()
    yield
    env.reset()
    wiring.client.cache_clear()


def test_defaults() -> None:
    e = env.load()
    assert e.config == "" and e.jobs_table is None and e.backup_queue_url is None and e.restore_queue_url is None
    assert (e.backup_queue, e.restore_queue) == ("pg-lifeboat-backups.fifo", "pg-lifeboat-restores")
    assert e.pg_roots == (Path("/opt/pg"), Path("/usr/lib/postgresql"))
    assert e.fargate is False and e.fargate_subnets == () and e.fargate_assign_public_ip is False
    assert e.metrics_namespace == "PgLifeboat" and e.metrics_off is False and e.trace_disabled is False
    assert e.aws_region is None


def test_defaults_match_the_code_that_uses_them() -> None:
    from chalicelib.adapters.postgres import DEFAULT_CA_BUNDLE
    from chalicelib.fargate import DEFAULT_CONTAINER

    e = env.load()
    assert str(e.ca_bundle) == DEFAULT_CA_BUNDLE
    assert e.fargate_container == DEFAULT_CONTAINER


def test_every_variable_is_described() -> None:
    assert len(env.VARIABLES) >= 15
    for name, field in env.VARIABLES.items():
        assert name.startswith(("LIFEBOAT_", "AWS_", "POWERTOOLS_")), name
        assert env.Env.model_fields[field].description, name


def test_values_are_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIFEBOAT_PG_ROOTS", f"/a{os.pathsep}{os.pathsep}/b")
    monkeypatch.setenv("LIFEBOAT_FARGATE_CLUSTER", "c")
    monkeypatch.setenv("LIFEBOAT_FARGATE_TASK_DEFINITION", "arn:td")
    monkeypatch.setenv("LIFEBOAT_FARGATE_SUBNETS", " subnet-a, subnet-b,, ")
    monkeypatch.setenv("LIFEBOAT_FARGATE_ASSIGN_PUBLIC_IP", "enabled")
    monkeypatch.setenv("POWERTOOLS_TRACE_DISABLED", "1")
    e = env.load()
    assert e.pg_roots == (Path("/a"), Path("/b"))
    assert e.fargate and e.fargate_subnets == ("subnet-a", "subnet-b") and e.fargate_security_groups == ()
    assert e.fargate_assign_public_ip is True and e.trace_disabled is True


def test_an_empty_value_counts_as_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIFEBOAT_JOBS_TABLE", "")
    monkeypatch.setenv("LIFEBOAT_BACKUP_QUEUE", "")
    monkeypatch.setenv("POWERTOOLS_TRACE_DISABLED", "")
    e = env.load()
    assert e.jobs_table is None and e.backup_queue == "pg-lifeboat-backups.fifo" and e.trace_disabled is False


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("LIFEBOAT_FARGATE_ASSIGN_PUBLIC_IP", "maybe"),
        ("POWERTOOLS_TRACE_DISABLED", "perhaps"),
        ("POWERTOOLS_METRICS_DISABLED", "sometimes"),
        ("LIFEBOAT_PG_ROOTS", os.pathsep),
    ],
)
def test_a_bad_value_names_its_variable(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=f"{name}={value!r}"):
        env.load()
    with pytest.raises(ConfigError, match=name):
        env.current()


def test_a_cluster_needs_subnets_and_a_task_definition(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIFEBOAT_FARGATE_CLUSTER", "c")
    with pytest.raises(ConfigError, match="LIFEBOAT_FARGATE_TASK_DEFINITION is empty"):
        env.load()
    monkeypatch.setenv("LIFEBOAT_FARGATE_TASK_DEFINITION", "arn:td")
    with pytest.raises(ConfigError, match="LIFEBOAT_FARGATE_SUBNETS is empty"):
        env.load()
    monkeypatch.delenv("LIFEBOAT_FARGATE_CLUSTER")
    assert env.load().fargate is False  # a task definition alone: everything stays on Lambda


def test_current_follows_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    first = env.current()
    assert env.current() is first  # parsed once
    monkeypatch.setenv("LIFEBOAT_JOBS_TABLE", "jobs")
    assert env.current().jobs_table == "jobs"
    monkeypatch.delenv("LIFEBOAT_JOBS_TABLE")
    assert env.current().jobs_table is None


def test_options_win_and_fallbacks_yield_within_the_block_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIFEBOAT_CONFIG", "from-env.json")
    with wiring.configured(config="from-cli.json", metrics=False) as e:
        assert e.config == "from-cli.json" and env.current().config == "from-cli.json"
        assert e.metrics_off is True
    assert env.current().config == "from-env.json" and env.current().metrics_off is False
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "false")
    with wiring.configured(metrics=False) as e:
        assert e.metrics_off is False  # the environment asked for metrics


def test_a_queue_url_given_as_an_option_wins_over_the_queue_name_in_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`lifeboat --stack` gives the stack's queue URLs: a LIFEBOAT_BACKUP_QUEUE name left in the environment
    stands in for an unset URL only, it never overrides the stack's."""
    monkeypatch.setenv("LIFEBOAT_BACKUP_QUEUE", "by-name.fifo")
    assert env.current().backup_queue_url == "by-name.fifo"
    with env.configured({"backup_queue_url": "https://sqs.example/1/stack.fifo"}) as e:
        assert e.backup_queue_url == "https://sqs.example/1/stack.fifo" and e.backup_queue == "by-name.fifo"
    with env.configured({"restore_queue": "restores-by-option"}) as e:
        assert e.restore_queue_url == "restores-by-option"


def test_the_command_line_does_not_write_the_environment(capsys: pytest.CaptureFixture[str]) -> None:
    from chalicelib.cli import main

    before = dict(os.environ)
    assert main(["--config", "/nonexistent/lifeboat.json", "validate"], out=io.StringIO()) == 2
    assert "/nonexistent/lifeboat.json" in capsys.readouterr().err
    assert dict(os.environ) == before and env.current().config == ""


def test_metrics_follow_the_settings(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from chalicelib.observability import record

    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "Elsewhere")
    record("Tested", 1, "Count")
    assert json.loads(capsys.readouterr().out)["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "Elsewhere"
    with wiring.configured(metrics=False):
        record("Tested", 1, "Count")
    assert capsys.readouterr().out == ""


def test_tracing_needs_a_lambda_trace_id(monkeypatch: pytest.MonkeyPatch) -> None:
    from chalicelib.observability import tracing_enabled

    monkeypatch.delenv("_X_AMZN_TRACE_ID", raising=False)
    assert not tracing_enabled()
    monkeypatch.setenv("_X_AMZN_TRACE_ID", "Root=1-abc;Sampled=1")
    assert tracing_enabled()
    monkeypatch.setenv("POWERTOOLS_TRACE_DISABLED", "true")
    assert not tracing_enabled()


# --- wiring: the clients' region ------------------------------------------------------------------------------------


@pytest.fixture
def no_sdk_region(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("AWS_DEFAULT_REGION", "AWS_PROFILE", "AWS_DEFAULT_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    wiring.client.cache_clear()


@pytest.mark.usefixtures("no_sdk_region")
def test_no_region_is_a_config_error_saying_what_to_set() -> None:
    with pytest.raises(ConfigError, match=r"AWS_REGION.*--region"):
        wiring.region()
    with pytest.raises(ConfigError, match="AWS_REGION"):
        wiring.client("s3")
    with wiring.configured(region="eu-central-1"):
        assert wiring.region() == "eu-central-1"


@pytest.mark.usefixtures("no_sdk_region")
def test_region_order(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "ap-south-1")
    wiring.client.cache_clear()
    assert wiring.region() == "ap-south-1"  # the SDK's chain
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    assert wiring.region() == "eu-west-1"
    with wiring.configured(region="us-west-2"):
        assert wiring.region() == "us-west-2"


def test_clients_have_the_region_and_standard_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    s3 = wiring.client("s3")
    assert s3 is wiring.client("s3")
    assert s3.meta.region_name == "eu-west-1"
    assert s3.meta.config.retries == {"mode": "standard", "total_max_attempts": 4}
    assert wiring.regional_client("s3", "us-east-2").meta.region_name == "us-east-2"
    resolver = wiring.credentials()
    assert callable(resolver.rds_client)
    rds = resolver.rds_client()
    assert rds is wiring.client("rds") and rds.meta.config.retries == {"mode": "standard", "total_max_attempts": 4}


def test_toolbox_roots_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert wiring.toolbox().roots == [Path("/opt/pg"), Path("/usr/lib/postgresql")]
    monkeypatch.setenv("LIFEBOAT_PG_ROOTS", f"/x{os.pathsep}/y")
    assert wiring.toolbox().roots == [Path("/x"), Path("/y")]
