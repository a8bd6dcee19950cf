"""CloudFormation intrinsic functions, written as the JSON the template holds, and Chalice's logical ids."""

from __future__ import annotations

from typing import Any

Json = dict[str, Any]


def ref(name: str) -> Json:
    return {"Ref": name}


def sub(text: str) -> Json:
    return {"Fn::Sub": text}


def getatt(resource: str, attribute: str) -> Json:
    return {"Fn::GetAtt": [resource, attribute]}


def if_(condition: str, then: Any, otherwise: Any = None) -> Json:
    """Fn::If; without `otherwise`, the property is left out (AWS::NoValue) when the condition is false."""
    return {"Fn::If": [condition, then, ref("AWS::NoValue") if otherwise is None else otherwise]}


def not_empty(value: Any) -> Json:
    """A condition: the (string) value is not empty."""
    return {"Fn::Not": [{"Fn::Equals": [value, ""]}]}


def camel(name: str) -> str:
    """The logical id Chalice derives from a name (snake_case to CamelCase)."""
    from chalice.utils import to_cfn_resource_name

    return str(to_cfn_resource_name(name))
