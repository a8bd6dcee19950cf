"""The API keeps its written contract: openapi.json is current, responses match it, and no request, however
malformed (body, path or query; logical, snapshot and point-in-time restores; every route), gets a 5xx."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openapi_schema_validator import OAS31Validator

from chalicelib import openapi
from devstack.chalice_local import client as chalice_client

REPO = Path(__file__).resolve().parents[2]
SPEC = json.loads((REPO / "openapi.json").read_text())
SLOT = datetime(2026, 11, 29, 3, tzinfo=UTC)
BACKUP_ID = "logical:shop:20261129T030000Z"
SNAPSHOTS = ["snapshot:shop:20261129T030000Z", "snapshot:billing:20261129T030000Z", "snapshot:disks:20261129T030000Z"]
TARGETS = ["shop", "billing", "disks", "gone", "copy"]
ROUTES = {  # what the fuzz sends, by the spec's path
    ("get", "/targets/{target}/backups"),
    ("post", "/targets/{target}/backups"),
    ("post", "/targets/{target}/restores"),
    ("get", "/targets/{target}/restores"),
    ("get", "/targets/{target}/restores/{restore_id}"),
    ("get", "/targets/{target}/drills"),
}


def test_committed_openapi_is_current() -> None:
    assert openapi.build() == SPEC, "run: .venv/bin/python -m chalicelib.openapi > openapi.json"


def test_the_fuzz_covers_every_route() -> None:
    assert {(m, p) for p, methods in SPEC["paths"].items() for m in methods} == ROUTES
    import app as lambda_app

    assert {p for p in lambda_app.app.routes} == {p for _, p in ROUTES}


def test_no_request_schema_takes_a_place_or_a_credential() -> None:
    """A caller names backups, targets and databases, never a host, port, user, secret or CA."""
    text = json.dumps(
        {
            k: v
            for k, v in SPEC["components"]["schemas"].items()
            if k.endswith("Request") or k in ("Into", "LogicalOptions")
        }
    )
    for word in ("host", "port", "user", "password", "secret", "sslmode", "sslrootcert", "connection"):
        assert f'"{word}"' not in text, word


def check_response(method: str, path: str, response: Any) -> None:
    spec = SPEC["paths"][path][method]["responses"]
    assert str(response.status_code) in spec, f"{method} {path} answered {response.status_code}, not in the spec"
    schema = spec[str(response.status_code)]["content"]["application/json"]["schema"]
    OAS31Validator({**schema, "components": SPEC["components"]}).validate(json.loads(response.body))


@pytest.fixture(scope="module")
def module_api(pg: Any, moto_server: Any, pg_roots: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One backup, three snapshots (RDS, Aurora, EBS), a target whose instance is gone, and one API client for
    the whole module (the fuzz runs many requests)."""
    import os

    import boto3
    from aws_lambda_powertools.utilities import parameters

    import app as lambda_app
    from chalicelib import wiring
    from chalicelib.logical.dump import run_logical_backup
    from chalicelib.physical.start import start_snapshot
    from devstack.local import provision, target, write_config
    from devstack.sample import BACKUP_PASSWORD

    moto_server.reset()
    parameters.clear_caches()
    saved = dict(os.environ)
    stack = provision("lifeboat-contract", "lifeboat/contract", BACKUP_PASSWORD)
    rds, ec2 = boto3.client("rds"), boto3.client("ec2")
    rds.create_db_instance(
        DBInstanceIdentifier="shop-db",
        DBInstanceClass="db.t3.micro",
        Engine="postgres",
        AllocatedStorage=20,
        MasterUsername="admin",
        MasterUserPassword="not-used-here-1",
    )
    rds.create_db_cluster(
        DBClusterIdentifier="billing",
        Engine="aurora-postgresql",
        MasterUsername="admin",
        MasterUserPassword="not-used-here-1",
    )
    volume = ec2.create_volume(AvailabilityZone="us-east-1a", Size=10)["VolumeId"]
    allow = {
        "instance_classes": ["db.t3.small"],
        "subnet_groups": ["private"],
        "security_group_ids": ["sg-1"],
        "parameter_groups": ["pg16"],
        "attach_to_instances": ["i-0123456789abcdef0"],
    }
    shop = target("shop", pg.port, stack.secret_arn, schedule=None)
    shop.update(
        restore_into=["copy"], physical={"method": "rds_instance", "db_instance_id": "shop-db", "restore": allow}
    )
    targets = [
        shop,
        target("copy", pg.port, stack.secret_arn, schedule=None),
        {"name": "billing", "physical": {"method": "aurora_cluster", "db_cluster_id": "billing"}},
        {"name": "disks", "physical": {"method": "ebs", "volume_ids": [volume], "restore": allow}},
        {"name": "gone", "physical": {"method": "rds_instance", "db_instance_id": "deleted-db"}},
    ]
    cfg = write_config(tmp_path_factory.mktemp("cfg") / "lifeboat.json", stack.bucket, targets)
    os.environ.update({**stack.env(), "LIFEBOAT_CONFIG": str(cfg), "LIFEBOAT_PG_ROOTS": str(pg_roots)})
    wiring.client.cache_clear()
    assert run_logical_backup(wiring.backup_services(), "shop", SLOT).status == "SUCCEEDED"
    for name in ("shop", "billing", "disks"):
        start_snapshot(wiring.snapshot_services(), name, SLOT)
    with chalice_client(lambda_app.app, project_dir=str(REPO)) as c:
        yield c
    os.environ.clear()
    os.environ.update(saved)
    wiring.client.cache_clear()


def _post(c: Any, path: str, body: Any) -> Any:
    raw = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return c.http.post(path, body=raw, headers={"Content-Type": "application/json"})


def test_responses_match_the_spec(module_api: Any) -> None:
    c = module_api
    created = _post(c, "/targets/shop/restores", {"backup_id": BACKUP_ID, "into": {"database": "contract_db"}})
    restore_id = json.loads(created.body)["restore_id"]
    for method, path, response in [
        ("get", "/targets/{target}/backups", c.http.get("/targets/shop/backups")),
        ("get", "/targets/{target}/backups", c.http.get("/targets/shop/backups?kind=weird")),
        ("get", "/targets/{target}/backups", c.http.get("/targets/nope/backups")),
        ("post", "/targets/{target}/backups", _post(c, "/targets/shop/backups", {"kind": "logical"})),
        ("post", "/targets/{target}/backups", _post(c, "/targets/shop/backups", {"kind": "weird"})),
        ("post", "/targets/{target}/restores", created),
        (
            "post",
            "/targets/{target}/restores",
            _post(c, "/targets/shop/restores", {"backup_id": BACKUP_ID, "into": {"database": "shop"}}),
        ),
        (
            "post",
            "/targets/{target}/restores",
            _post(
                c, "/targets/shop/restores", {"backup_id": BACKUP_ID, "into": {"target": "billing", "database": "x"}}
            ),
        ),
        (
            "post",
            "/targets/{target}/restores",
            _post(
                c,
                "/targets/shop/restores",
                {"backup_id": SNAPSHOTS[0], "new_id": "shop-copy", "instance_class": "db.x2g.16xlarge"},
            ),
        ),
        (
            "post",
            "/targets/{target}/restores",
            _post(c, "/targets/gone/restores", {"point_in_time": "latest", "new_id": "from-nothing"}),
        ),
        ("post", "/targets/{target}/restores", _post(c, "/targets/shop/restores", b"garbage")),
        ("get", "/targets/{target}/restores", c.http.get("/targets/shop/restores")),
        ("get", "/targets/{target}/restores/{restore_id}", c.http.get(f"/targets/shop/restores/{restore_id}")),
        ("get", "/targets/{target}/restores/{restore_id}", c.http.get(f"/targets/copy/restores/{restore_id}")),
        ("get", "/targets/{target}/restores/{restore_id}", c.http.get("/targets/shop/restores/r-0000")),
    ]:
        check_response(method, path, response)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)
names = st.sampled_from([*TARGETS, "nope", "shop_fuzz", "", "x" * 70, "a b", "ünï", "pg_catalog"]) | st.text(
    max_size=70
)
path_targets = (
    st.sampled_from(TARGETS) | st.sampled_from(["nope", "", "x" * 70, "a b", "ünï", "..", "%2F"]) | st.text(max_size=40)
)
backup_ids = st.sampled_from(
    [
        BACKUP_ID,
        *SNAPSHOTS,
        "logical:shop:20200101T000000Z",
        "snapshot:gone:20261129T030000Z",
        "logical:shop:99999999T999999Z",
        "logical::",
        "x",
    ]
) | st.text(max_size=60)
aws_ids = (
    st.sampled_from(
        [
            "db.t3.small",
            "db.x2g.16xlarge",
            "private",
            "sg-1",
            "pg16",
            "i-0123456789abcdef0",
            "us-east-1a",
            "eu-west-1",
            "",
            "a" * 300,
        ]
    )
    | st.text(max_size=20)
    | json_values
)
options = st.fixed_dictionaries(
    {},
    optional={
        "schemas": st.lists(st.text(max_size=20), max_size=3) | json_values,
        "tables": st.lists(st.text(max_size=20), max_size=3),
        "jobs": st.integers(-5, 40) | json_values,
        "clean": st.booleans() | json_values,
        "confirm": names,
        "no_owner": st.booleans(),
        "globals": st.booleans() | json_values,
        "extra": json_values,
    },
)
physical_fields = {
    "new_id": names,
    "instance_class": aws_ids,
    "subnet_group": aws_ids,
    "parameter_group": aws_ids,
    "security_group_ids": st.lists(aws_ids, max_size=6) | json_values,
    "region": aws_ids,
    "availability_zone": aws_ids,
    "attach_to_instance": aws_ids,
    "target": names,
}
# Shaped like the three request forms, with every field fuzzed; plus junk of every kind.
restore_bodies = st.one_of(
    st.fixed_dictionaries(
        {
            "backup_id": backup_ids,
            "into": st.fixed_dictionaries(
                {"database": names}, optional={"target": names, "connection": json_values, "host": st.text(max_size=30)}
            ),
        },
        optional={"options": options},
    ),
    st.fixed_dictionaries({"backup_id": backup_ids}, optional=physical_fields),
    st.fixed_dictionaries(
        {
            "point_in_time": st.sampled_from(["latest", "2026-11-29T03:00:00Z", "1999-01-01T00:00:00", "yesterday"])
            | json_values
        },
        optional={k: v for k, v in physical_fields.items() if k != "attach_to_instance"},
    ),
    st.dictionaries(
        st.sampled_from(["backup_id", "into", "options", "target", "point_in_time", "new_id"]), json_values, max_size=5
    ),
    json_values,
    st.binary(max_size=64),
)
# Well-formed bodies from realistic values: they pass the schema and reach the checks behind it (destinations,
# allow-lists, snapshots, identifiers in use, the restorable window, a source that is gone, the quotas).
allowed_or_not = st.sampled_from(["db.t3.small", "db.x2g.16xlarge", "private", "public", "pg16", "sg-1", "sg-2"])
valid_restores = st.one_of(
    st.fixed_dictionaries(
        {
            "backup_id": st.sampled_from([BACKUP_ID, "logical:shop:20200101T000000Z"]),
            "into": st.fixed_dictionaries(
                {"database": st.sampled_from(["fz_a", "fz_b", "shop"])},
                optional={"target": st.sampled_from([*TARGETS, "nope"])},
            ),
        },
        optional={
            "options": st.fixed_dictionaries(
                {},
                optional={
                    "clean": st.booleans(),
                    "confirm": st.sampled_from(["fz_a", "shop"]),
                    "jobs": st.integers(1, 16),
                    "schemas": st.just(["sales"]),
                    "tables": st.just(["sales.orders"]),
                    "globals": st.booleans(),
                },
            )
        },
    ),
    st.fixed_dictionaries(
        {"backup_id": st.sampled_from([*SNAPSHOTS, "snapshot:shop:20200101T000000Z"])},
        optional={
            "new_id": st.sampled_from(["shop-db", "billing", "fz-new", "fz-other"]),
            "instance_class": allowed_or_not,
            "subnet_group": allowed_or_not,
            "parameter_group": allowed_or_not,
            "security_group_ids": st.lists(allowed_or_not, max_size=2),
            "region": st.sampled_from(["us-east-1", "eu-west-1"]),
            "availability_zone": st.just("us-east-1a"),
            "attach_to_instance": st.sampled_from(["i-0123456789abcdef0", "i-unlisted"]),
        },
    ),
    st.fixed_dictionaries(
        {
            "point_in_time": st.sampled_from(
                ["latest", "2026-11-29T03:00:00Z", "2099-01-01T00:00:00Z", "2000-01-01T00:00:00"]
            ),
            "new_id": st.sampled_from(["shop-db", "billing", "fz-pit"]),
        },
        optional={"instance_class": allowed_or_not, "subnet_group": allowed_or_not},
    ),
)
backup_bodies = (
    st.fixed_dictionaries(
        {}, optional={"kind": st.sampled_from(["logical", "physical"]) | json_values, "target": names}
    )
    | json_values
    | st.binary(max_size=32)
)
restore_ids = st.sampled_from(["r-0000000000000000", "r-", "r-" + "f" * 60, "x"]) | st.text(min_size=1, max_size=50)


def _own_path(body: Any) -> str:
    """The target a well-formed body restores: most fuzzed bodies go to their own target's path."""
    if isinstance(body, dict) and isinstance(body.get("backup_id"), str) and body["backup_id"].count(":") >= 2:
        return str(body["backup_id"].split(":")[1])
    return "shop"


kinds = st.sampled_from(["", "?kind=logical", "?kind=snapshot", "?kind=x", "?kind=", "?other=1&kind=logical"])
requests = st.one_of(
    st.tuples(
        st.just("post"), st.just("/targets/{target}/restores"), st.sampled_from(TARGETS), st.just(""), valid_restores
    ),
    valid_restores.map(lambda body: ("post", "/targets/{target}/restores", _own_path(body), "", body)),
    restore_bodies.map(lambda body: ("post", "/targets/{target}/restores", _own_path(body), "", body)),
    st.tuples(st.just("post"), st.just("/targets/{target}/restores"), path_targets, st.just(""), restore_bodies),
    st.tuples(st.just("post"), st.just("/targets/{target}/backups"), path_targets, st.just(""), backup_bodies),
    st.tuples(st.just("get"), st.just("/targets/{target}/backups"), path_targets, kinds, st.none()),
    st.tuples(st.just("get"), st.just("/targets/{target}/restores"), path_targets, st.just(""), st.none()),
    st.tuples(st.just("get"), st.just("/targets/{target}/drills"), path_targets, st.just(""), st.none()),
    st.tuples(st.just("get"), st.just("/targets/{target}/restores/{restore_id}"), path_targets, restore_ids, st.none()),
)


@settings(
    max_examples=500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(request=requests)
def test_fuzzed_requests_never_get_a_5xx(module_api: Any, request: tuple[str, str, str, str, Any]) -> None:
    method, route, name, extra, body = request
    path = route.replace("{target}", quote(name, safe=""))
    if "{restore_id}" in route:
        path = path.replace("{restore_id}", quote(extra, safe=""))
    elif method == "get":
        path += extra
    response = _post(module_api, path, body) if method == "post" else module_api.http.get(path)
    assert response.status_code < 500, (method, path, body, response.body)
    if json.loads(response.body).keys() == {"message"}:  # the router's own answer: no such path
        assert response.status_code in (403, 404), response.body
    else:
        check_response(method, route, response)
