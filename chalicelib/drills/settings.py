"""A target's `drill` section: when to prove its backups restorable, which backup, where to, and what to check.

Validated with the rest of the configuration (chalicelib.config): the section's own fields here, what it names
(the scratch target, the physical allow-lists) by `drill_problem` from Config's cross-checks. Kept apart from
chalicelib.config so that file stays within its size; the models follow its conventions (frozen, no extra keys).
"""

from __future__ import annotations

import re
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from chalicelib.scheduling.schedules import Schedule, ScheduleSyntaxError

CHECK_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.:-]{0,79}$")
Pick = Literal["latest", "random", "oldest-kept"]
SNAPSHOT_DRILL_METHODS = ("rds_instance", "aurora_cluster")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)  # schemas built on first use (cold start)


class DrillCheck(_Model):
    """An assertion run in the restored database: its query must return one row of one column, true."""

    name: str = Field(description="how the check is reported, e.g. 'orders are recent'")
    sql: str = Field(min_length=1, max_length=4000, description="e.g. SELECT max(placed_at) > now() - '2 days'")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not CHECK_NAME.fullmatch(value):
            raise ValueError(f"{value!r}: a check name is 1-80 letters, digits, spaces and _ . : - (a letter first)")
        return value


class DrillInto(_Model):
    """Where a drill restores to. Logical: `target`, a configured target whose server takes the scratch database.
    Snapshots: the temporary instance's class and network (each must be in the target's physical.restore lists)."""

    target: str | None = Field(default=None, description="logical: the scratch server's target name")
    instance_class: str | None = None
    subnet_group: str | None = None
    security_group_ids: list[str] = Field(default_factory=list, max_length=5)


class Drill(_Model):
    schedule: str = Field(description="EventBridge cron(...) or rate(...), dispatched like backups")
    kind: Literal["logical", "snapshot"] | None = Field(
        default=None, description="default: logical when the target has a logical section, else snapshot"
    )
    pick: Pick = Field(default="latest", description="latest, random (within what is kept) or oldest-kept")
    into: DrillInto = Field(default_factory=DrillInto)
    checks: list[DrillCheck] = Field(default_factory=list, max_length=20)
    databases: list[str] = Field(
        default_factory=list, description="snapshot drills: databases that must exist (default: the connection's)"
    )
    max_age_days: int = Field(default=8, ge=1, le=366, description="alarm when no drill succeeded for this long")
    rto_seconds: int | None = Field(default=None, ge=1, le=7 * 86400, description="alarm when recovery takes longer")
    statement_timeout_seconds: int = Field(default=30, ge=1, le=3600, description="per check")
    owner: str | None = Field(default=None, max_length=200, description="who configured it (recorded as evidence)")

    @field_validator("schedule")
    @classmethod
    def _schedule(cls, value: str) -> str:
        try:
            Schedule.parse(value)
        except ScheduleSyntaxError as exc:
            raise ValueError(str(exc)) from None
        return value

    @model_validator(mode="after")
    def _unique_checks(self) -> Self:
        names = [c.name for c in self.checks]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"check names must be unique; {', '.join(map(repr, twice))} appear more than once")
        return self


def drill_kind(target: Any) -> Literal["logical", "snapshot"]:
    """The kind of drill a target (chalicelib.config.Target) runs."""
    drill: Drill = target.drill
    return drill.kind or ("logical" if target.logical is not None else "snapshot")


def drill_problem(target: Any, targets: dict[str, Any]) -> str | None:
    """What is wrong with a target's drill section given the other targets (chalicelib.config.Target objects: not
    imported, which would be a cycle); None when it is fine. The message names the target and the field."""
    drill: Drill | None = target.drill
    if drill is None:
        return None
    where = f"target {target.name!r}: drill"
    into = drill.into
    if drill_kind(target) == "logical":
        if target.logical is None:
            return f"{where}.kind is logical but the target has no logical section (no dumps to drill)"
        if into.instance_class or into.subnet_group or into.security_group_ids:
            return f"{where}.into: instance_class, subnet_group and security_group_ids are for snapshot drills"
        if not into.target:
            return f"{where}.into.target: name the configured target whose server takes the scratch database"
        scratch = targets.get(into.target)
        if scratch is None:
            return f"{where}.into.target names {into.target!r}, which is not a target"
        if into.target == target.name:
            return (
                f"{where}.into.target is the drilled target itself: a drill restores into a scratch server, never"
                " the production one; name another target (and list it in restore_into)"
            )
        if into.target not in target.restore_into:
            return (
                f"{where}.into.target {into.target!r} is not in the target's restore_into"
                f" ({', '.join(target.restore_into) or 'empty'}): add {into.target!r} to restore_into"
            )
        if scratch.connection is None:
            return f"{where}.into.target names {into.target!r}, which has no connection to restore into"
        return None
    return _snapshot_problem(target, drill, where)


def _snapshot_problem(target: Any, drill: Drill, where: str) -> str | None:
    physical = target.physical
    if physical is None:
        return f"{where}.kind is snapshot but the target has no physical section"
    if physical.method not in SNAPSHOT_DRILL_METHODS:
        return f"{where}: snapshot drills restore RDS instances and Aurora clusters, not {physical.method!r}"
    if drill.into.target:
        return f"{where}.into.target is for logical drills; a snapshot drill restores into a temporary instance"
    if (drill.checks or drill.databases) and target.connection is None:
        return f"{where}: checks and databases need the target's connection (the login used on the restored copy)"
    allow = physical.restore
    wanted: list[tuple[str, str, list[str | None], list[str]]] = [
        ("instance_class", "instance_classes", [drill.into.instance_class], allow.instance_classes),
        ("subnet_group", "subnet_groups", [drill.into.subnet_group], allow.subnet_groups),
        ("security_group_ids", "security_group_ids", [*drill.into.security_group_ids], allow.security_group_ids),
    ]
    for field, listed_in, values, allowed in wanted:
        for value in values:
            if value is not None and value not in allowed:
                listed = ", ".join(allowed) or "none"
                return (
                    f"{where}.into.{field} {value!r} is not in physical.restore.{listed_in} ({listed}):"
                    " add it there or choose an allowed one"
                )
    return None
