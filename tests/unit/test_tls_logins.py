"""How CredentialResolver turns the TLS settings into a Login, without servers (test_tls_mitm.py has the servers):
the CA bundle for verified modes, no IAM token for a server whose certificate is not checked, and a warning on
every login that runs with the weak_tls opt-out."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from chalicelib.adapters import postgres
from chalicelib.adapters.postgres import CredentialResolver
from chalicelib.config import Connection, parse_config
from chalicelib.errors import ConfigError


class Rds:
    def __init__(self) -> None:
        self.tokens = 0

    def generate_db_auth_token(self, **_: Any) -> str:
        self.tokens += 1
        return "h:5432/?Action=connect&X-Amz-Signature=abc"


def resolver(ca_bundle: Path | str = "/nonexistent", rds: Rds | None = None) -> CredentialResolver:
    r = CredentialResolver(rds_client=rds or Rds(), ca_bundle=str(ca_bundle))  # type: ignore[arg-type]
    r._secret_password = lambda secret_id: "pw"  # type: ignore[method-assign]
    return r


def connection(**fields: Any) -> Connection:
    cfg = parse_config(
        {
            "settings": {"bucket": "acme-pg-backups"},
            "targets": [{"name": "t", "connection": {"host": "h", "user": "u", **fields}}],
        }
    )
    found = cfg.targets[0].connection
    assert found is not None
    return found


@pytest.mark.parametrize("fields", [{"password_secret": "s"}, {"iam_auth": True}, {}])
def test_verified_by_default_with_the_layer_bundle(tmp_path: Path, fields: dict[str, Any]) -> None:
    bundle = tmp_path / "rds-ca-bundle.pem"
    bundle.write_text("-----BEGIN CERTIFICATE-----\n")
    login = resolver(bundle).login(connection(**fields))
    assert (login.sslmode, login.sslrootcert) == ("verify-full", str(bundle))
    assert (login.env()["PGSSLMODE"], login.env()["PGSSLROOTCERT"]) == ("verify-full", str(bundle))
    kwargs = login.psycopg_kwargs()
    assert (kwargs["sslmode"], kwargs["sslrootcert"]) == ("verify-full", str(bundle))
    own = resolver(bundle).login(connection(sslrootcert="/etc/my-ca.pem", **fields))
    assert own.sslrootcert == "/etc/my-ca.pem" and own.env()["PGSSLROOTCERT"] == "/etc/my-ca.pem"


def test_no_iam_token_for_an_unchecked_server() -> None:
    """The configuration refuses iam_auth without verify-ca/verify-full; a Connection built around it (model_construct,
    model_copy) still gets no token minted."""
    unchecked = connection(iam_auth=True).model_copy(update={"sslmode": "require"})
    rds = Rds()
    with pytest.raises(ConfigError, match="iam_auth needs sslmode verify-full or verify-ca"):
        resolver(rds=rds).login(unchecked)
    assert rds.tokens == 0


def test_weak_tls_warns_on_every_login(monkeypatch: pytest.MonkeyPatch) -> None:
    warnings: list[str] = []
    monkeypatch.setattr(postgres.logger, "warning", lambda message, **_: warnings.append(message))
    conn = connection(
        password_secret="s", sslmode="require", weak_tls=True, restore_user="r", restore_password_secret="rs"
    )
    r = resolver()
    for login in (r.login(conn), r.restore_login(conn), r.login(conn)):
        assert login.sslmode == "require" and login.sslrootcert is None
        assert (login.require_auth, login.channel_binding) == ("scram-sha-256", "require")  # SCRAM-PLUS still
    assert len(warnings) == 3 and all("weak_tls" in w and "SCRAM work factor" in w for w in warnings)
    r.login(connection(password_secret="s"))
    assert len(warnings) == 3, "a verified login warns about nothing"
