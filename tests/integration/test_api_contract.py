"""The API keeps its written contract: openapi.json is current, responses match it, and no request body,
however malformed, gets a 5xx."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openapi_schema_validator import OAS31Validator

from chalicelib import openapi
from devstack.chalice_local import client as chalice_client

REPO = Path(__file__).resolve().parents[2]
SPEC = json.loads((REPO / "openapi.json").read_text())
BACKUP_ID = "logical:shop:20261129T030000Z"


def test_committed_openapi_is_current() -> None:
    assert openapi.build() == SPEC, "run: .venv/bin/python -m chalicelib.openapi > openapi.json"


def check_response(method: str, path: str, response: Any) -> None:
    spec = SPEC["paths"][path][method]["responses"]
    assert str(response.status_code) in spec, f"{method} {path} answered {response.status_code}, not in the spec"
    schema = spec[str(response.status_code)]["content"]["application/json"]["schema"]
    OAS31Validator({**schema, "components": SPEC["components"]}).validate(json.loads(response.body))


@pytest.fixture(scope="module")
def module_api(pg: Any, moto_server: Any, pg_roots: Path, tmp_path_factory: pytest.TempPathFactory
               ) -> Iterator[Any]:
    """One backup and one API client for the whole module (the fuzz runs many requests)."""
    import os
    from datetime import UTC, datetime

    from aws_lambda_powertools.utilities import parameters

    import app as lambda_app
    from chalicelib.logical.dump import run_logical_backup
    from chalicelib.wiring import backup_services
    from devstack.local import provision, target, write_config
    from devstack.sample import BACKUP_PASSWORD

    moto_server.reset()
    parameters.clear_caches()
    saved = dict(os.environ)
    stack = provision("lifeboat-contract", "lifeboat/contract", BACKUP_PASSWORD)
    cfg = write_config(tmp_path_factory.mktemp("cfg") / "lifeboat.json", stack.bucket,
                       [target("shop", pg.port, stack.secret_arn)])
    os.environ.update({**stack.env(), "LIFEBOAT_CONFIG": str(cfg), "LIFEBOAT_PG_ROOTS": str(pg_roots)})
    assert run_logical_backup(backup_services(), "shop", datetime(2026, 11, 29, 3, tzinfo=UTC)).status == "SUCCEEDED"
    with chalice_client(lambda_app.app, project_dir=str(REPO)) as c:
        yield c
    os.environ.clear()
    os.environ.update(saved)


def _post(c: Any, path: str, body: Any) -> Any:
    raw = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return c.http.post(path, body=raw, headers={"Content-Type": "application/json"})


def test_responses_match_the_spec(module_api: Any) -> None:
    c = module_api
    created = _post(c, "/restores", {"backup_id": BACKUP_ID, "into": {"target": "shop", "database": "contract_db"}})
    for method, path, response in [
        ("get", "/backups", c.http.get("/backups?target=shop")),
        ("get", "/backups", c.http.get("/backups")),
        ("get", "/backups", c.http.get("/backups?target=nope")),
        ("post", "/backups", _post(c, "/backups", {"target": "shop"})),
        ("post", "/backups", _post(c, "/backups", {"target": "shop", "kind": "weird"})),
        ("post", "/restores", created),
        ("post", "/restores", _post(c, "/restores", {"backup_id": BACKUP_ID,
                                                    "into": {"target": "shop", "database": "shop"}})),
        ("post", "/restores", _post(c, "/restores", b"garbage")),
        ("get", "/restores", c.http.get("/restores")),
        ("get", "/restores/{restore_id}", c.http.get(f"/restores/{json.loads(created.body)['restore_id']}")),
        ("get", "/restores/{restore_id}", c.http.get("/restores/r-0000")),
    ]:
        check_response(method, path, response)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)
names = st.sampled_from(["shop", "nope", "shop_fuzz", "", "x" * 70, "a b", "ünï", "pg_catalog"]) | st.text(max_size=70)
backup_ids = st.sampled_from([BACKUP_ID, "logical:shop:20200101T000000Z", "snapshot:shop:20261129T030000Z",
                              "logical:shop:99999999T999999Z", "logical::", "x"]) | st.text(max_size=60)
options = st.fixed_dictionaries({}, optional={
    "schemas": st.lists(st.text(max_size=20), max_size=3) | json_values,
    "tables": st.lists(st.text(max_size=20), max_size=3),
    "jobs": st.integers(-5, 40) | json_values,
    "clean": st.booleans() | json_values,
    "confirm": names,
    "no_owner": st.booleans(),
    "extra": json_values,
})
# Shaped like the three request forms, with every field fuzzed; plus junk of every kind.
bodies = st.one_of(
    st.fixed_dictionaries({"backup_id": backup_ids,
                           "into": st.fixed_dictionaries({"database": names},
                                                         optional={"target": names, "connection": json_values})},
                          optional={"options": options}),
    st.fixed_dictionaries({"backup_id": backup_ids}, optional={
        "new_id": names, "instance_class": st.text(max_size=20), "security_group_ids": json_values,
        "availability_zone": st.text(max_size=20)}),
    st.fixed_dictionaries({"target": names, "point_in_time": st.sampled_from(["latest", "2026-11-29T03:00:00Z",
                                                                              "yesterday"]) | json_values,
                           "new_id": names}),
    st.dictionaries(st.sampled_from(["backup_id", "into", "options", "target", "point_in_time", "new_id"]),
                    json_values, max_size=5),
    json_values,
    st.binary(max_size=64),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(body=bodies)
def test_fuzzed_bodies_never_get_a_5xx(module_api: Any, body: Any) -> None:
    response = _post(module_api, "/restores", body)
    assert response.status_code < 500, (body, response.body)
    check_response("post", "/restores", response)
