"""The CloudWatch dashboard `pg-lifeboat-<stage>`: per target, what `lifeboat status` says.

Targets live in SSM and change without a redeploy, so no widget names a target: each graph is a SEARCH
expression over the `target` dimension of the app's EMF metrics (dimensions service, target), and a target
appears on the dashboard with its first data point. SEARCH finds metrics that reported in the last two weeks.

The body is a JSON string; the region and the alarms' ARNs are known at deploy time only, so the string is
a Fn::Join of the JSON text around them (not a Fn::Sub: the graphs' dynamic labels are `${PROP(...)}`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Mapping
from typing import Any

from stack.template.intrinsics import Json, getatt, sub

REGION = "@@REGION@@"  # placeholders in the body's JSON text, joined with their intrinsics by dashboard_body
_ALARM = "@@ALARM:{}@@"
# An alarm that exists under a condition (the WAL streams' need HasFargate): its entry, comma included, is an Fn::If.
_ALARM_IF = "@@ALARMIF:{}@@"
_PLACEHOLDER = re.compile(r'@@(REGION|ALARM:[A-Za-z0-9]+)@@|, "@@ALARMIF:([A-Za-z0-9]+)@@"')
TARGET_LABEL = "${PROP('Dim.target')}"
METRIC_AND_TARGET_LABEL = "${PROP('Dim.target')} ${PROP('MetricName')}"


def search(namespace: str, service: str, metric: str, stat: str, period: int) -> str:
    """Every target's time series of `metric`, whatever targets exist when the graph is drawn."""
    query = f'{{{namespace},service,target}} service="{service}" MetricName="{metric}"'
    return f"SEARCH('{query}', '{stat}', {period})"


def _graph(title: str, metrics: list[list[Any]], *, stacked: bool = False, **properties: Any) -> Json:
    return {
        "type": "metric",
        "properties": {
            "title": title,
            "region": REGION,
            "view": "timeSeries",
            "stacked": stacked,
            "metrics": metrics,
            **properties,
        },
    }


def _searches(
    namespace: str, service: str, metrics: list[str], stat: str, period: int, label: str = TARGET_LABEL
) -> list[list[Any]]:
    return [
        [{"id": f"s{i}", "expression": search(namespace, service, m, stat, period), "label": label}]
        for i, m in enumerate(metrics)
    ]


def widgets(namespace: str, service: str, alarm_ids: list[str], conditional: Collection[str] = ()) -> list[Json]:
    """The widgets, top to bottom: freshness, size and duration, failures, snapshots, drills, WAL, restores, alarms
    (`conditional`: alarms listed only when their condition holds, after the others).
    (long because it is the dashboard's layout, one widget after the other)"""
    hour, day = 3600, 86400
    left_axis: dict[str, Any] = {"yAxis": {"left": {"min": 0}}}
    freshness = [
        {
            "type": "text",
            "properties": {
                "markdown": "## pg-lifeboat: every target\nOne line per target (a SEARCH over the `target`"
                " dimension: targets added in SSM appear with their first data point). The dispatcher measures"
                " each target's newest complete backup every 15 minutes; **overdue** means the latest scheduled"
                " slot, past its grace (a quarter of the interval, at least an hour), has no complete backup."
                " `lifeboat status` shows the same per target, with reasons."
            },
        },
        {
            "type": "metric",
            "properties": {
                "title": "Targets overdue",
                "region": REGION,
                "view": "singleValue",
                "metrics": [[namespace, "TargetsOverdue", "service", service, {"stat": "Maximum", "period": 900}]],
            },
        },
        _graph(
            "Age of the newest good backup (hours)",
            [
                [
                    {
                        "id": "age",
                        "expression": search(namespace, service, "NewestBackupAgeSeconds", "Maximum", 900),
                        "visible": False,
                    }
                ],
                [{"id": "hours", "expression": "age / 3600", "label": TARGET_LABEL}],
            ],
            **left_axis,
        ),
        _graph(
            "Overdue against its schedule (1 = late)",
            _searches(namespace, service, ["BackupOverdue"], "Maximum", 900),
            yAxis={"left": {"min": 0, "max": 1}},
        ),
    ]
    backups = [
        _graph("Backup size (bytes)", _searches(namespace, service, ["BackupBytes"], "Maximum", day), **left_axis),
        _graph(
            "Backup duration (seconds)", _searches(namespace, service, ["BackupDuration"], "Maximum", day), **left_axis
        ),
        _graph(
            "Backups succeeded and failed",
            _searches(namespace, service, ["BackupSucceeded", "BackupFailed"], "Sum", hour, METRIC_AND_TARGET_LABEL),
            stacked=True,
        ),
    ]
    snapshots = [
        _graph("Managed snapshots", _searches(namespace, service, ["ManagedSnapshots"], "Maximum", hour), **left_axis),
        _graph(
            "Snapshots succeeded, failed, copied",
            _searches(
                namespace,
                service,
                ["SnapshotSucceeded", "SnapshotFailed", "SnapshotCopied"],
                "Sum",
                hour,
                METRIC_AND_TARGET_LABEL,
            ),
            stacked=True,
        ),
        _graph(
            "Snapshot duration (seconds)",
            _searches(namespace, service, ["SnapshotDuration"], "Maximum", day),
            **left_axis,
        ),
    ]
    restores = [
        _graph(
            "Restores succeeded and failed",
            _searches(namespace, service, ["RestoreSucceeded", "RestoreFailed"], "Sum", hour, METRIC_AND_TARGET_LABEL),
            stacked=True,
        ),
        _graph(
            "Backups dispatched, messages rejected",
            [
                [namespace, "BackupsDispatched", "service", service, {"stat": "Sum", "period": hour}],
                [namespace, "BackupMessageRejected", "service", service, {"stat": "Sum", "period": hour}],
            ],
        ),
        {
            "type": "alarm",
            "properties": {
                "title": "Alarms",
                "alarms": [_ALARM.format(a) for a in alarm_ids if a not in conditional]
                + [_ALARM_IF.format(a) for a in alarm_ids if a in conditional],
                "sortBy": "stateUpdatedTimestamp",
            },
        },
    ]
    return _layout(
        [freshness, backups, snapshots, _drill_widgets(namespace, service), _wal_widgets(namespace, service), restores]
    )


def _drill_widgets(namespace: str, service: str) -> list[Json]:
    """Restore drills (chalicelib.drills), per target: outcomes, recovery time against the RTO, overdue."""
    day = 86400
    return [
        {
            "type": "metric",
            "properties": {
                "title": "Targets without a recent good drill",
                "region": REGION,
                "view": "singleValue",
                "metrics": [[namespace, "DrillsOverdue", "service", service, {"stat": "Maximum", "period": 900}]],
            },
        },
        _graph(
            "Drills succeeded, failed, over RTO",
            _searches(
                namespace,
                service,
                ["DrillSucceeded", "DrillFailed", "DrillRtoExceeded"],
                "Sum",
                day,
                METRIC_AND_TARGET_LABEL,
            ),
            stacked=True,
        ),
        _graph(
            "Recovery time of drills (seconds)",
            _searches(namespace, service, ["RecoverySeconds"], "Maximum", day),
            yAxis={"left": {"min": 0}},
        ),
        _graph(
            "Drill overdue (1 = late)",
            _searches(namespace, service, ["DrillOverdue"], "Maximum", 900),
            yAxis={"left": {"min": 0, "max": 1}},
        ),
    ]


def _wal_widgets(namespace: str, service: str) -> list[Json]:
    """WAL streams (chalicelib.pitr.receiver), per target: streaming, segments archived, gaps."""
    return [
        _graph(
            "WAL stream heartbeats (0 = not streaming)",
            _searches(namespace, service, ["WalStreamHeartbeat"], "Sum", 300),
            yAxis={"left": {"min": 0}},
        ),
        _graph(
            "WAL segments archived",
            _searches(namespace, service, ["WalSegmentsArchived"], "Sum", 3600),
            yAxis={"left": {"min": 0}},
        ),
        _graph(
            "WAL gaps recorded", _searches(namespace, service, ["WalGaps"], "Sum", 3600), yAxis={"left": {"min": 0}}
        ),
    ]


def _layout(rows: list[list[Json]]) -> list[Json]:
    """Rows of equal-width widgets on the dashboard's 24-column grid; the text widget is a short row of its own."""
    placed: list[Json] = []
    y = 0
    for row in rows:
        graphs = row
        if row and row[0]["type"] == "text":
            placed.append({**row[0], "x": 0, "y": y, "width": 24, "height": 3})
            y, graphs = y + 3, row[1:]
        width = 24 // len(graphs)
        for i, widget in enumerate(graphs):
            placed.append({**widget, "x": i * width, "y": y, "width": width, "height": 6})
        y += 6
    return placed


def dashboard_body(
    namespace: str, service: str, alarm_ids: list[str], conditions: Mapping[str, str] | None = None
) -> Json:
    """The DashboardBody: a Fn::Join of the JSON text around the region and the alarms' ARNs. `conditions`: the
    alarms that exist under a condition, and its name (their entries are Fn::If, after the unconditional ones)."""
    conditions = conditions or {}
    body = {"start": "-P7D", "periodOverride": "inherit", "widgets": widgets(namespace, service, alarm_ids, conditions)}
    text = json.dumps(body)
    parts: list[Any] = []
    position = 0
    for m in _PLACEHOLDER.finditer(text):
        parts.append(text[position : m.start()])
        name, conditional = m.group(1), m.group(2)
        if conditional:
            entry = {"Fn::Join": ["", [', "', getatt(conditional, "Arn"), '"']]}
            parts.append({"Fn::If": [conditions[conditional], entry, ""]})
        else:
            parts.append({"Ref": "AWS::Region"} if name == "REGION" else getatt(name.removeprefix("ALARM:"), "Arn"))
        position = m.end()
    parts.append(text[position:])
    return {"Fn::Join": ["", [p for p in parts if p != ""]]}


def dashboard_resources(
    namespace: str, service: str, alarm_ids: list[str], conditions: Mapping[str, str] | None = None
) -> Json:
    return {
        "Dashboard": {
            "Type": "AWS::CloudWatch::Dashboard",
            "Properties": {
                "DashboardName": sub("pg-lifeboat-${Stage}"),
                "DashboardBody": dashboard_body(namespace, service, alarm_ids, conditions),
            },
        }
    }
