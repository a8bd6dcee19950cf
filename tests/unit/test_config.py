"""config: one valid shape parses; every invalid input is a ConfigError naming the target and the field."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from chalicelib.config import Logical, RetentionPolicy, load_file, parse_config
from chalicelib.errors import ConfigError, NotFoundError


def target(name: str = "prod", **fields: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"name": name, "connection": {"host": "db.internal", "user": "backup"}}
    doc.update(fields)
    return doc


def config(*targets: dict[str, Any], **settings: Any) -> dict[str, Any]:
    return {"settings": {"bucket": "acme-pg-backups", **settings}, "targets": list(targets)}


def error_of(data: Any) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    return str(info.value)


# --- the valid case -----------------------------------------------------------------------------------------------


def test_minimal_config_parses_with_documented_defaults() -> None:
    cfg = parse_config(config(target()))

    assert cfg.settings.bucket == "acme-pg-backups"
    assert cfg.settings.prefix == ""
    assert list(cfg.settings.retention_policies) == ["default"]
    assert cfg.settings.retention_policies["default"] == RetentionPolicy(
        daily_days=7, weekly_weeks=5, monthly_months=12, yearly_years=3, keep_last=1
    )
    [t] = cfg.targets
    assert t.name == "prod"
    assert t.connection is not None
    assert (t.connection.host, t.connection.port, t.connection.database, t.connection.user) == (
        "db.internal",
        5432,
        "postgres",
        "backup",
    )
    assert t.connection.sslmode == "verify-full"
    assert t.connection.sslrootcert is None  # the layer's RDS CA bundle (CredentialResolver)
    assert (t.connection.weak_auth, t.connection.weak_tls) == (False, False)
    assert t.connection.password_secret is None
    assert t.connection.iam_auth is False
    assert t.logical is None
    assert t.retention == "default"
    assert cfg.target("prod") is t
    assert cfg.policy_for(t) is cfg.settings.retention_policies["default"]


def test_logical_defaults() -> None:
    opts = Logical()
    assert (opts.format, opts.compression, opts.compression_method) == ("custom", "zstd:1", "zstd")
    assert (opts.lock_wait_timeout_seconds, opts.row_counts, opts.globals) == (60, True, False)


def test_unknown_target_lookup_names_the_known_ones() -> None:
    cfg = parse_config(config(target("alpha"), target("beta")))
    with pytest.raises(NotFoundError, match=r"unknown target 'gamma' \(known: alpha, beta\)"):
        cfg.target("gamma")


@pytest.mark.parametrize("name", ["a", "prod", "prod-eu-1", "db2", "a" * 48])
def test_valid_target_names(name: str) -> None:
    assert parse_config(config(target(name))).targets[0].name == name


@pytest.mark.parametrize("bucket", ["abc", "acme-pg-backups", "acme.pg.backups", "a" * 63, "0backups9"])
def test_valid_bucket_names(bucket: str) -> None:
    assert parse_config(config(bucket=bucket)).settings.bucket == bucket


@pytest.mark.parametrize("compression", ["none", "gzip", "gzip:9", "lz4", "lz4:12", "zstd", "zstd:22", "zstd:long"])
def test_valid_compression(compression: str) -> None:
    assert Logical(compression=compression).compression == compression


@pytest.mark.parametrize(
    "schedule",
    [
        "cron(0 3 * * ? *)",
        "cron(0 12 ? * MON-FRI *)",
        "rate(1 minute)",
        "rate(15 minutes)",
        "rate(1 day)",
        "rate(2 hours)",
    ],
)
def test_valid_schedules(schedule: str) -> None:
    assert Logical(schedule=schedule).schedule == schedule


# --- invalid input: the message names the target by name and the dotted field ------------------------------------


@pytest.mark.parametrize(
    ("overrides", "field", "detail"),
    [
        ({"connection": {"host": "h", "user": "u", "port": 70000}}, "connection.port", "less than or equal to 65535"),
        ({"connection": {"host": "h", "user": "u", "port": 0}}, "connection.port", "greater than or equal to 1"),
        ({"connection": {"host": "h", "user": "u", "sslmode": "strict"}}, "connection.sslmode", "'verify-full'"),
        (
            {"connection": {"host": "h", "user": "u", "pasword_secret": "s"}},
            "connection.pasword_secret",
            "Extra inputs are not permitted",
        ),
        ({"logical": {"shedule": "rate(1 day)"}}, "logical.shedule", "Extra inputs are not permitted"),
        ({"retension": "default"}, "retension", "Extra inputs are not permitted"),
        ({"connection": {"host": "", "user": "u"}}, "connection.host", "at least 1 character"),
        ({"connection": {"host": "h"}}, "connection.user", "Field required"),
        (
            {"logical": {"lock_wait_timeout_seconds": 0}},
            "logical.lock_wait_timeout_seconds",
            "greater than or equal to 1",
        ),
    ],
)
def test_invalid_field_names_target_and_dotted_field(overrides: dict[str, Any], field: str, detail: str) -> None:
    # A second, valid target first: the broken one is at index 1, and must still be named, not numbered.
    message = error_of(config(target("ok"), target("orders-db", **overrides)))
    assert f"target 'orders-db': {field}: " in message
    assert detail in message
    assert "targets[1]" not in message
    assert "'ok'" not in message


@pytest.mark.parametrize(
    ("schedule", "detail"),
    [
        ("cron(0 3 * * *)", "EventBridge cron has 6 fields"),
        ("cron(0 3 * * MON *)", "exactly one of day-of-month and day-of-week must be '?'"),
        ("cron(0 3 ? * ? *)", "exactly one of day-of-month and day-of-week must be '?'"),
        ("rate(1 minutes)", "EventBridge wants 'rate(1 minute)'"),
        ("rate(5 minute)", "EventBridge wants 'rate(5 minutes)'"),
        ("rate(0 minutes)", "positive whole number"),
        ("every day at 3", "expected an EventBridge expression"),
        ("cron(0 3 ? * 8 *)", "day-of-week numbers run from 1 (SUN) to 7 (SAT)"),
        ("cron(0 3 * * ? 1969)", "years must lie between 1970 and 2199"),
        ("cron(0 3 * * ? twenty)", "the year field must be"),
        ("cron(0 25 * * ? *)", "not a valid cron expression"),
    ],
)
def test_bad_schedule(schedule: str, detail: str) -> None:
    message = error_of(config(target("nightly", logical={"schedule": schedule})))
    assert "target 'nightly': logical.schedule: " in message
    assert detail in message


@pytest.mark.parametrize(
    ("compression", "detail"),
    [
        ("zstd:30", "zstd levels run from 1 to 22"),
        ("gzip:10", "gzip levels run from 1 to 9"),
        ("lz4:13", "lz4 levels run from 1 to 12"),
        ("gzip:long", "'long' is a zstd option"),
        ("brotli", "use none, gzip[:1-9], lz4[:1-12] or zstd[:1-22|long]"),
        ("zstd:", "use none"),
        ("ZSTD:3", "use none"),
    ],
)
def test_bad_compression(compression: str, detail: str) -> None:
    message = error_of(config(target("prod", logical={"compression": compression})))
    assert "target 'prod': logical.compression: " in message
    assert detail in message


@pytest.mark.parametrize("name", ["Prod", "1prod", "prod--eu", "-prod", "prod-", "prod_eu", "prod.eu", "", "a" * 49])
def test_bad_target_name(name: str) -> None:
    message = error_of(config(target(name)))
    assert ": name: " in message
    assert "use 1-48 lowercase letters, digits and single hyphens, starting with a letter" in message


def test_password_secret_and_iam_auth_are_exclusive() -> None:
    conn = {"host": "h", "user": "u", "password_secret": "arn:aws:secretsmanager:x", "iam_auth": True}
    message = error_of(config(target("prod", connection=conn)))
    assert "target 'prod': connection: set either password_secret or iam_auth, not both" in message


@pytest.mark.parametrize("sslmode", ["disable", "allow", "prefer", "require"])
@pytest.mark.parametrize("opt_out", [{}, {"weak_tls": True}, {"weak_auth": True}])
@pytest.mark.parametrize("login", [{"iam_auth": True}, {"restore_user": "r", "restore_iam_auth": True}])
def test_iam_auth_needs_a_verified_certificate(sslmode: str, opt_out: dict[str, bool], login: dict[str, Any]) -> None:
    """The token goes as a cleartext password: only to a server whose certificate a CA vouches for. No opt-out."""
    conn = {"host": "h", "user": "u", "sslmode": sslmode, **login, **opt_out}
    message = error_of(config(target("prod", connection=conn)))
    assert f"target 'prod': connection: iam_auth needs sslmode verify-full or verify-ca, not '{sslmode}'" in message
    assert "sslrootcert" in message


@pytest.mark.parametrize("sslmode", ["verify-ca", "verify-full"])
def test_iam_auth_with_tls_is_fine(sslmode: str) -> None:
    conn = {"host": "h", "user": "u", "iam_auth": True, "sslmode": sslmode}
    t = parse_config(config(target("prod", connection=conn))).targets[0]
    assert t.connection is not None
    assert t.connection.iam_auth is True


@pytest.mark.parametrize("secret", [{"password_secret": "s"}, {"restore_user": "r", "restore_password_secret": "s"}])
def test_a_stored_password_with_unverified_tls_needs_weak_tls(secret: dict[str, str]) -> None:
    """sslmode require checks no certificate: a machine in the middle chooses the SCRAM work factor."""
    conn = {"host": "h", "user": "u", "sslmode": "require", **secret}
    message = error_of(config(target("prod", connection=conn)))
    assert "target 'prod': connection: sslmode 'require' with a stored password: require checks no certificate" in (
        message
    )
    assert "sslrootcert set to your server's CA" in message and "weak_tls: true" in message
    for opt_out in ("weak_tls", "weak_auth"):  # weak_auth already sends the password however asked, TLS or not
        t = parse_config(config(target("prod", connection={**conn, opt_out: True}))).targets[0]
        assert t.connection is not None and t.connection.sslmode == "require"


@pytest.mark.parametrize("sslmode", ["verify-ca", "verify-full"])
def test_a_stored_password_with_verified_tls_needs_no_opt_out(sslmode: str) -> None:
    conn = {"host": "h", "user": "u", "sslmode": sslmode, "password_secret": "s"}
    assert parse_config(config(target("prod", connection=conn))).targets[0].connection is not None


@pytest.mark.parametrize("sslmode", ["disable", "prefer", "verify-ca", "verify-full"])
def test_weak_tls_only_goes_with_require(sslmode: str) -> None:
    conn = {"host": "h", "user": "u", "sslmode": sslmode, "password_secret": "s", "weak_tls": True}
    if sslmode in ("disable", "prefer"):
        conn["weak_auth"] = True  # else the missing TLS is the first complaint
    message = error_of(config(target("prod", connection=conn)))
    assert f"connection: weak_tls only allows sslmode 'require'; with '{sslmode}' remove it" in message


def test_duplicate_target_names() -> None:
    message = error_of(config(target("prod"), target("stage"), target("prod")))
    assert "target 'prod' is defined twice" in message


def test_unknown_retention_policy_names_target_policy_and_known_ones() -> None:
    message = error_of(config(target("prod", retention="gold"), retention_policies={"default": {}, "silver": {}}))
    assert "target 'prod'" in message
    assert "retention policy 'gold' is not in settings.retention_policies (default, silver)" in message


def test_retention_policies_need_a_default() -> None:
    message = error_of(config(retention_policies={"gold": {}}))
    assert "settings: retention_policies needs a 'default' policy" in message


@pytest.mark.parametrize(
    "bucket",
    [
        "My-Backups",
        "ab",
        "a" * 64,
        "xn--backups",
        "192.168.1.10",
        "my..bucket",
        "-backups",
        "backups-",
        "my_bucket",
        "sthree-backups",
        "backups-s3alias",
        "backups--ol-s3",
    ],
)
def test_bad_bucket_name(bucket: str) -> None:
    message = error_of(config(bucket=bucket))
    assert f"settings.bucket: {bucket!r} is not a valid S3 bucket name" in message


@pytest.mark.parametrize("prefix", ["pg", "/pg/", "pg//daily/"])
def test_bad_prefix(prefix: str) -> None:
    message = error_of(config(prefix=prefix))
    assert f"settings.prefix: {prefix!r}: a prefix ends with '/'" in message


def test_every_problem_is_listed_one_per_line() -> None:
    message = error_of(
        config(
            target("a", connection={"host": "h", "user": "u", "port": 0}),
            target("b", logical={"compression": "brotli"}),
            bucket="UPPER",
        )
    )
    lines = message.splitlines()
    assert lines[0] == "configuration is invalid:"
    assert len(lines) == 4
    assert any(line.startswith("  - settings.bucket: ") for line in lines)
    assert any(line.startswith("  - target 'a': connection.port: ") for line in lines)
    assert any(line.startswith("  - target 'b': logical.compression: ") for line in lines)


def test_target_without_a_name_falls_back_to_its_index() -> None:
    message = error_of(
        {
            "settings": {"bucket": "acme-pg-backups"},
            "targets": [target("ok"), {"connection": {"host": "h", "user": "u"}}],
        }
    )
    assert "targets[1]: name: Field required" in message


def test_target_needs_connection_or_physical() -> None:
    message = error_of(config({"name": "bare"}))
    assert "target 'bare'" in message
    assert "a target needs a connection (logical backups) or a physical section (snapshots)" in message


def test_physical_schedule_is_validated_like_logical() -> None:
    physical = {"method": "rds_instance", "db_instance_id": "db1", "schedule": "rate(1 minutes)"}
    message = error_of(config({"name": "snap", "physical": physical}))
    assert "target 'snap': physical.schedule: 'rate(1 minutes)': EventBridge wants 'rate(1 minute)'" in message


@pytest.mark.parametrize(("name", "bucket"), [("prod\n", "acme-backups"), ("prod", "acme-backups\n")])
def test_trailing_newline_is_not_a_valid_name(name: str, bucket: str) -> None:
    with pytest.raises(ConfigError):
        parse_config(config(target(name), bucket=bucket))


def test_gzip_level_zero_never_reaches_pg_dump_16() -> None:
    from chalicelib.logical.dump_tools import compression_args

    try:
        opts = Logical(compression="gzip:0")
    except ValidationError:
        return  # rejected at the edge: fixed
    assert compression_args(opts.compression, 16) != ["--compress=gzip:0"]


# --- files ---------------------------------------------------------------------------------------------------------


def test_load_file_json(tmp_path: Path) -> None:
    path = tmp_path / "lifeboat.json"
    path.write_text(json.dumps(config(target("prod", logical={"schedule": "rate(1 day)"}))))
    cfg = load_file(path)
    assert cfg.targets[0].logical is not None
    assert cfg.targets[0].logical.schedule == "rate(1 day)"


def test_load_file_toml(tmp_path: Path) -> None:
    path = tmp_path / "lifeboat.toml"
    path.write_text(
        '[settings]\nbucket = "acme-pg-backups"\nprefix = "pg/"\n\n'
        '[[targets]]\nname = "prod"\n[targets.connection]\nhost = "db.internal"\nuser = "backup"\nport = 6432\n'
    )
    cfg = load_file(str(path))
    assert cfg.settings.prefix == "pg/"
    assert cfg.targets[0].connection is not None
    assert cfg.targets[0].connection.port == 6432


def test_load_file_missing(tmp_path: Path) -> None:
    path = tmp_path / "nope.json"
    expected = rf"cannot read configuration file {re.escape(str(path))}: No such file or directory"
    with pytest.raises(ConfigError, match=expected):
        load_file(path)


def test_load_file_invalid_json(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text('{"settings": {"bucket": "acme-pg-backups"},}')
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))} is not valid JSON: "):
        load_file(path)


def test_load_file_invalid_toml(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text("[settings\nbucket = 1\n")
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))} is not valid TOML: "):
        load_file(path)


def test_load_file_names_the_file_and_target_on_invalid_content(tmp_path: Path) -> None:
    path = tmp_path / "lifeboat.json"
    path.write_text(json.dumps(config(target("prod", connection={"host": "h", "user": "u", "port": 70000}))))
    with pytest.raises(ConfigError) as info:
        load_file(path)
    assert str(info.value).startswith(f"{path} is invalid:\n")
    assert "target 'prod': connection.port: " in str(info.value)
