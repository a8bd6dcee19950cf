"""openapi.json for the API's users: a valid OpenAPI document a client generator loads, one operationId per route of
app.py, and the stack's endpoint as its server."""

from __future__ import annotations

import json
import re
from typing import Any

from openapi_spec_validator import validate

from chalicelib import openapi
from tests.stack.conftest import REPO

SPEC: dict[str, Any] = json.loads((REPO / "openapi.json").read_text())


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.capitalize() for part in rest)


def test_openapi_json_is_a_valid_document() -> None:
    validate(SPEC)  # raises OpenAPIValidationError with the path of what is wrong


def test_every_route_of_the_app_has_its_operation_id() -> None:
    import app

    routes = {
        (path, method.lower()): _camel(entry.view_name)
        for path, methods in app.app.routes.items()
        for method, entry in methods.items()
    }
    documented = {
        (path, method): operation["operationId"]
        for path, operations in SPEC["paths"].items()
        for method, operation in operations.items()
    }
    assert documented == routes
    assert len(set(documented.values())) == len(documented)


def test_servers_name_the_stacks_endpoint_with_variables() -> None:
    (server,) = SPEC["servers"]
    names = set(re.findall(r"\{(\w+)\}", server["url"]))
    assert names == set(server["variables"]) == {"restApiId", "region", "basePath"}
    assert all(v["default"] for v in server["variables"].values())
    url = server["url"].format(**{k: v["default"] for k, v in server["variables"].items()})
    assert re.fullmatch(r"https://[A-Z_]+\.execute-api\.[a-z0-9-]+\.amazonaws\.com/api", url)
    assert "EndpointURL" in server["description"]


def test_openapi_json_is_current() -> None:
    assert openapi.build() == SPEC, "run: .venv/bin/python -m chalicelib.openapi > openapi.json"
