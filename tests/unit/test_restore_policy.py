"""What the configuration says about restores, checked without servers: where a backup may go, the quotas, the
physical allow-lists, the restore login, and how a stored password may be sent (SCRAM with channel binding
unless weak_auth)."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import pytest

from chalicelib.adapters import postgres
from chalicelib.adapters.postgres import CredentialResolver, Login, libpq_has_require_auth
from chalicelib.config import Config, parse_config
from chalicelib.errors import ConfigError, ForbiddenError, TooManyRestoresError
from chalicelib.restore import access
from chalicelib.restore.model import RestoreJob
from chalicelib.restore.requests import PointInTimeRestoreRequest, SnapshotRestoreRequest


def conn(**fields: Any) -> dict[str, Any]:
    return {"host": "db.internal", "user": "backup", "password_secret": "orders-backup", **fields}


def config(*targets: dict[str, Any], **settings: Any) -> Config:
    return parse_config({"settings": {"bucket": "acme-pg-backups", **settings}, "targets": list(targets)})


def error_of(*targets: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as info:
        config(*targets)
    return str(info.value)


# --- stored passwords travel only by SCRAM with channel binding, which needs TLS ---------------------------------


@pytest.mark.parametrize("sslmode", ["disable", "allow", "prefer"])
@pytest.mark.parametrize("secret_field", ["password_secret", "restore_password_secret"])
def test_a_stored_password_without_tls_is_refused_unless_weak_auth(sslmode: str, secret_field: str) -> None:
    fields: dict[str, Any] = {"host": "h", "user": "u", "sslmode": sslmode, secret_field: "s"}
    if secret_field == "restore_password_secret":
        fields["restore_user"] = "restorer"
    message = error_of({"name": "orders", "connection": fields})
    assert "target 'orders': connection:" in message and "channel binding, which needs TLS" in message
    assert "weak_auth: true" in message
    assert config({"name": "orders", "connection": {**fields, "weak_auth": True}}).targets[0].connection


@pytest.mark.parametrize("sslmode", ["disable", "require", "verify-full"])
def test_no_stored_password_needs_no_tls(sslmode: str) -> None:
    assert config({"name": "orders", "connection": {"host": "h", "user": "u", "sslmode": sslmode}}).targets


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"restore_password_secret": "s"}, "need restore_user"),
        ({"restore_iam_auth": True}, "need restore_user"),
        ({"restore_user": "r", "restore_password_secret": "s", "restore_iam_auth": True}, "not both"),
        ({"restore_user": "r", "restore_iam_auth": True, "sslmode": "prefer", "weak_auth": True}, "iam_auth needs"),
    ],
)
def test_restore_credentials_are_checked(fields: dict[str, Any], needle: str) -> None:
    assert needle in error_of({"name": "orders", "connection": conn(**fields)})


def resolver() -> CredentialResolver:
    r = CredentialResolver(ca_bundle="/nonexistent")
    r._secret_password = lambda secret_id: f"pw-of-{secret_id}"  # type: ignore[method-assign]
    return r


def test_logins_with_a_password_require_scram_and_channel_binding() -> None:
    cfg = config({"name": "orders", "connection": conn(restore_user="restorer", restore_password_secret="r-s")})
    connection = cfg.targets[0].connection
    assert connection is not None
    backup, restore = resolver().login(connection), resolver().restore_login(connection)
    assert (backup.user, backup.password) == ("backup", "pw-of-orders-backup")
    assert (restore.user, restore.password) == ("restorer", "pw-of-r-s")
    for login in (backup, restore):
        assert (login.require_auth, login.channel_binding) == ("scram-sha-256", "require")
        assert login.env()["PGCHANNELBINDING"] == "require" and login.env()["PGREQUIREAUTH"] == "scram-sha-256"
        kwargs = login.psycopg_kwargs()
        assert kwargs["channel_binding"] == "require"
        assert kwargs.get("require_auth") == ("scram-sha-256" if libpq_has_require_auth() else None)


def test_restores_use_the_backup_login_without_restore_user() -> None:
    connection = config({"name": "orders", "connection": conn()}).targets[0].connection
    assert connection is not None
    assert resolver().restore_login(connection) == resolver().login(connection)


def test_weak_auth_sends_as_asked_and_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    connection = config({"name": "orders", "connection": conn(weak_auth=True)}).targets[0].connection
    assert connection is not None
    warnings: list[str] = []
    monkeypatch.setattr(postgres.logger, "warning", lambda message, **_: warnings.append(message))
    login = resolver().login(connection)
    assert login.require_auth is None and login.channel_binding is None
    assert "PGCHANNELBINDING" not in login.env()
    assert len(warnings) == 1 and "weak_auth" in warnings[0]
    resolver().restore_login(connection)
    assert len(warnings) == 2, "once per login"


def test_no_password_no_guards() -> None:
    connection = config({"name": "orders", "connection": {"host": "h", "user": "u"}}).targets[0].connection
    assert connection is not None
    login = resolver().login(connection)
    assert login == Login(
        "h",
        5432,
        "postgres",
        "u",
        "verify-full",
        None,
        10,
        None,
        credential_source="no password (trust, certificate or .pgpass)",
    )


# --- destinations ------------------------------------------------------------------------------------------------


def test_restore_into_names_configured_targets_with_a_connection() -> None:
    snapshots_only = {"name": "disks", "physical": {"method": "ebs", "volume_ids": ["vol-1"]}}
    assert "restore_into names 'nope', which is not a target" in error_of(
        {"name": "orders", "connection": conn(), "restore_into": ["nope"]}
    )
    assert "restore_into names 'disks', which has no connection" in error_of(
        {"name": "orders", "connection": conn(), "restore_into": ["disks"]}, snapshots_only
    )


def test_destination_is_the_own_target_or_a_listed_one() -> None:
    cfg = config(
        {"name": "orders", "connection": conn(), "restore_into": ["staging"]},
        {"name": "staging", "connection": conn()},
        {"name": "billing", "connection": conn()},
    )
    assert access.destination(cfg, "orders", None).name == "orders"
    assert access.destination(cfg, "orders", "orders").name == "orders"
    assert access.destination(cfg, "orders", "staging").name == "staging"
    for into in ("billing", "unknown"):
        with pytest.raises(ForbiddenError, match="may be restored into 'orders', 'staging' only"):
            access.destination(cfg, "orders", into)
    with pytest.raises(ForbiddenError):  # not symmetric: staging lists nothing
        access.destination(cfg, "staging", "orders")


# --- quotas ------------------------------------------------------------------------------------------------------


class Jobs:
    def __init__(self, into: list[str]) -> None:
        now = datetime.now(UTC)
        self.jobs = [
            RestoreJob(
                restore_id=f"r-{n:04d}",
                kind="logical",
                target="orders",
                into_target=t,
                request={},
                created_at=now,
                updated_at=now,
            )
            for n, t in enumerate(into)
        ]

    def active(self) -> list[RestoreJob]:
        return self.jobs


def test_quotas_in_all_and_per_target() -> None:
    cfg = config(
        {"name": "orders", "connection": conn(), "max_running_restores": 3},
        {"name": "staging", "connection": conn()},
        max_running_restores=4,
    )
    assert cfg.targets[1].max_running_restores == 2 and config().settings.max_running_restores == 10
    access.check_quota(cfg, Jobs(["orders", "orders"]), "orders")  # type: ignore[arg-type]
    with pytest.raises(TooManyRestoresError, match=r"into target 'orders'.*max_running_restores\) is 3"):
        access.check_quota(cfg, Jobs(["orders"] * 3), "orders")  # type: ignore[arg-type]
    with pytest.raises(TooManyRestoresError, match=r"settings\.max_running_restores\) is 4"):
        access.check_quota(cfg, Jobs(["orders", "orders", "staging", "staging"]), "orders")  # type: ignore[arg-type]


# --- physical allow-lists ----------------------------------------------------------------------------------------


def test_physical_settings_must_be_listed() -> None:
    cfg = config(
        {
            "name": "orders",
            "physical": {
                "method": "rds_instance",
                "db_instance_id": "orders-db",
                "restore": {"instance_classes": ["db.t3.small"], "security_group_ids": ["sg-1", "sg-2"]},
            },
        }
    )
    physical = cfg.targets[0].physical
    assert physical is not None
    ok = SnapshotRestoreRequest(
        backup_id="snapshot:orders:20261129T030000Z",
        new_id="x",
        instance_class="db.t3.small",
        security_group_ids=["sg-2"],
    )
    access.check_physical(physical, ok)
    for field, value, allowed in [
        ("instance_class", "db.r6i.32xlarge", "db.t3.small"),
        ("security_group_ids", ["sg-1", "sg-9"], "sg-1, sg-2"),
        ("subnet_group", "public", "none (leave it out"),
        ("parameter_group", "loose", "none (leave it out"),
        ("attach_to_instance", "i-1", "none (leave it out"),
    ]:
        req = SnapshotRestoreRequest.model_validate({"backup_id": "snapshot:orders:20261129T030000Z", field: value})
        with pytest.raises(ForbiddenError, match=re.escape(allowed)):
            access.check_physical(physical, req)
    with pytest.raises(ForbiddenError, match="instance_class"):
        access.check_physical(
            physical,
            PointInTimeRestoreRequest(
                target="orders", point_in_time="latest", new_id="x", instance_class="db.x1.32xlarge"
            ),
        )
