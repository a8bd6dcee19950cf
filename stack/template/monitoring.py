"""The alarm topic, the alarms and the dashboard (dashboard.py).

Failures are alarmed by Metrics Insights over the EMF metrics (any target). The dead-man's switch that follows
the targets in SSM is one alarm on TargetsOverdue, a metric without a target dimension that the dispatcher
(which reads every target each tick) records every 15 minutes: CloudWatch refuses alarms on SEARCH
expressions, and a Metrics Insights alarm cannot see a target that stopped reporting, so the count is made
where the list of targets is known (chalicelib.scheduling.dispatch.backup_ages). A stack-wide switch counts any
success through a log metric filter; optional per-target switches on BackupSucceeded/SnapshotSucceeded are
fixed when the template is built (targets.py; the only per-target watch of snapshots). Dead-letter queues and
scheduled functions' errors are alarmed from AWS's own metrics.
"""

from __future__ import annotations

import re
from typing import Any

from stack import names
from stack.template.app_model import QUEUE_LOGICAL, AppModel, metrics_service
from stack.template.dashboard import dashboard_resources
from stack.template.intrinsics import Json, camel, getatt, ref, sub
from stack.template.queues import DEAD_LETTER_AFTER
from stack.template.targets import SUCCESS, WatchedTarget, alarm_id_for

ANY_SUCCESS_METRIC = "BackupSucceededAnyTarget"  # from metric filters: no dimensions
OVERDUE_METRIC = "TargetsOverdue"  # the dispatcher's count of overdue targets (dimension service only)
OVERDUE_PERIOD = 1800  # two of the dispatcher's 15-minute measurements: one missed tick is no missing data
MAX_DASHBOARD_ALARMS = 100  # CloudWatch's limit for an alarm status widget
FAILURE_METRICS = {
    "BackupFailed": "A logical backup failed. Its failure record is under failed/<target>/ in the bucket and in the"
    " backup worker's log; SQS retries the message up to 3 times.",
    "SnapshotFailed": "A snapshot could not be started, or RDS/EC2 reported it failed. See the backup worker's"
    " and the snapshot sweeper's logs.",
    "RestoreFailed": "A restore job failed (its job record, GET /restores/<id>, says why). See the restore"
    " worker's log.",
    "DrillFailed": "A restore drill failed: a backup could not be restored, a check failed, or a drill's worker died."
    " `lifeboat drills TARGET` (or GET /targets/<target>/drills) shows the record and its reason; the evidence is"
    " under drills/<target>/ in the bucket.",
    "DrillRtoExceeded": "A restore drill succeeded but its recovery took longer than the target's drill.rto_seconds."
    " The dashboard's 'Recovery time' graph and `lifeboat drills --report` show the trend.",
}
DRILLS_OVERDUE_METRIC = "DrillsOverdue"  # the drills' sweeper's count of targets without a recent good drill
WAL_HEARTBEAT_METRIC = "WalStreamHeartbeat"  # chalicelib.pitr.receiver: pg_receivewal ran a whole flush interval
WAL_NOT_STREAMING_SECONDS = 900  # more than any sensible wal.flush_seconds (default 60)
WAL_SLOT_METRIC = "WalSlotProblems"  # from the WAL log groups' metric filters (fargate.py)


def wal_log_group(stage: str, target: str) -> str:
    """The log group of a target's WAL stream task (one per target: its own filters and retention)."""
    return f"/ecs/pg-lifeboat-{stage}-wal-{target}"


def alarm(name: str, description: str, **properties: Any) -> Json:
    return {
        "Type": "AWS::CloudWatch::Alarm",
        "Properties": {
            "AlarmName": sub(f"pg-lifeboat-${{Stage}}-{name}"),
            "AlarmDescription": description,
            "AlarmActions": [ref("AlarmTopic")],
            "OKActions": [ref("AlarmTopic")],
            **properties,
        },
    }


def metrics_insights_sum(metric: str, namespace: str, service: str) -> str:
    """A CloudWatch Metrics Insights query (not SQL run anywhere) over every target of the service."""
    return f"SELECT SUM({metric}) FROM SCHEMA(\"{namespace}\", service, target) WHERE service = '{service}'"  # noqa: S608


def monitoring_resources(model: AppModel, watched: list[WatchedTarget], wal_targets: list[str] | None = None) -> Json:
    wal_targets = wal_targets or []
    service = metrics_service()
    resources: Json = {
        "AlarmTopic": {"Type": "AWS::SNS::Topic", "Properties": {"TopicName": sub("pg-lifeboat-${Stage}-alarms")}},
        "AlarmEmailSubscription": {
            "Type": "AWS::SNS::Subscription",
            "Condition": "HasAlarmEmail",
            "Properties": {"TopicArn": ref("AlarmTopic"), "Protocol": "email", "Endpoint": ref("AlarmEmail")},
        },
        **_failure_alarms(model.metrics_namespace, service),
        **_dead_letter_alarms(),
        **_schedule_alarms(model),
        **_stack_wide_switch(model),
        **_overdue_switch(model, service),
        **_drills_overdue_switch(model, service),
        **_target_switches(model.metrics_namespace, service, watched),
        **wal_stream_alarms(model.metrics_namespace, service, wal_targets),
    }
    alarms = [k for k, v in resources.items() if v["Type"] == "AWS::CloudWatch::Alarm"][:MAX_DASHBOARD_ALARMS]
    conditions = {k: resources[k]["Condition"] for k in alarms if "Condition" in resources[k]}
    return {**resources, **dashboard_resources(model.metrics_namespace, service, alarms, conditions)}


def _drills_overdue_switch(model: AppModel, service: str) -> Json:
    """Restore drills that follow the targets in SSM: the sweeper (every 15 minutes, with drills configured) counts
    the targets whose last successful drill is older than their drill.max_age_days. Missing data is not breaching:
    a stack without drills records nothing (the sweeper's own failures have its errors alarm)."""
    if "snapshot_sweeper" not in {fn.name for fn in model.functions}:
        return {}
    return {
        "DrillsOverdueAlarm": alarm(
            "drills-overdue",
            "A target with a drill section has had no successful restore drill within its drill.max_age_days (or"
            " never). The dashboard's 'Drill overdue' graph and `lifeboat drills` name the target; the snapshot"
            " sweeper's log has 'targets without a recent successful drill'.",
            Namespace=model.metrics_namespace,
            MetricName=DRILLS_OVERDUE_METRIC,
            Dimensions=[{"Name": "service", "Value": service}],
            Statistic="Maximum",
            Period=OVERDUE_PERIOD,
            EvaluationPeriods=1,
            Threshold=1,
            ComparisonOperator="GreaterThanOrEqualToThreshold",
            TreatMissingData="notBreaching",
        )
    }


def wal_stream_alarms(namespace: str, service: str, wal_targets: list[str]) -> Json:
    """Per WAL stream (fargate.py; condition HasFargate, as its service): not streaming, slot trouble, a gap."""
    resources: Json = {}
    for target in wal_targets:
        dims = [{"Name": "service", "Value": service}, {"Name": "target", "Value": target}]
        logical = f"WalStream{camel(target)}"
        beat = alarm(
            f"wal-not-streaming-{target}",
            f"The WAL stream of {target} has not streamed for {WAL_NOT_STREAMING_SECONDS // 60} minutes (no"
            f" {WAL_HEARTBEAT_METRIC}): the server is unreachable, the login or slot is refused, or the task is"
            " not running. Meanwhile the replication slot makes the server keep WAL: run `lifeboat wal-status"
            f" {target}` and read the log group"
            f" {wal_log_group('<stage>', target)}.",
            Namespace=namespace,
            MetricName=WAL_HEARTBEAT_METRIC,
            Dimensions=dims,
            Statistic="Sum",
            Period=WAL_NOT_STREAMING_SECONDS,
            EvaluationPeriods=1,
            Threshold=1,
            ComparisonOperator="LessThanThreshold",
            TreatMissingData="breaching",
        )
        slot = alarm(
            f"wal-slot-{target}",
            f"The WAL stream of {target} found its replication slot gone or its WAL lost (wal_status lost, or the"
            " server no longer has the WAL to resume from): the archive has a gap and a new base backup is needed"
            f" (`lifeboat base-backup {target}`). `lifeboat wal-status {target}` shows the slot.",
            Namespace=namespace,
            MetricName=WAL_SLOT_METRIC,
            Dimensions=[{"Name": "target", "Value": target}],
            Statistic="Sum",
            Period=300,
            EvaluationPeriods=1,
            Threshold=1,
            ComparisonOperator="GreaterThanOrEqualToThreshold",
            TreatMissingData="notBreaching",
        )
        gap = alarm(
            f"wal-gap-{target}",
            f"A gap was recorded in the WAL of {target} (wal/{target}/gaps/ in the bucket): recovery cannot cross"
            f" it. Take a new base backup (`lifeboat base-backup {target}`); `lifeboat wal-status {target}` lists"
            " the gaps.",
            Namespace=namespace,
            MetricName="WalGaps",
            Dimensions=dims,
            Statistic="Sum",
            Period=300,
            EvaluationPeriods=1,
            Threshold=1,
            ComparisonOperator="GreaterThanOrEqualToThreshold",
            TreatMissingData="notBreaching",
        )
        for suffix, resource in (("NotStreamingAlarm", beat), ("SlotAlarm", slot), ("GapAlarm", gap)):
            resources[f"{logical}{suffix}"] = {**resource, "Condition": "HasFargate"}
    return resources


def _overdue_switch(model: AppModel, service: str) -> Json:
    """The dead-man's switch over every target in SSM, whatever targets exist (the module's docstring)."""
    if "dispatcher" not in {fn.name for fn in model.functions}:
        return {}
    return {
        "BackupsOverdueAlarm": alarm(
            "backups-overdue",
            "Dead-man's switch over every target in SSM: a target's latest scheduled backup, past its grace (a"
            " quarter of the interval, at least an hour), is not complete, or its backups cannot be listed. The"
            " dashboard's 'Overdue' graph and `lifeboat status` name the target; the dispatcher's log has"
            " 'targets overdue'. Missing data (the dispatcher stopped measuring) counts as breaching.",
            Namespace=model.metrics_namespace,
            MetricName=OVERDUE_METRIC,
            Dimensions=[{"Name": "service", "Value": service}],
            Statistic="Maximum",
            Period=OVERDUE_PERIOD,
            EvaluationPeriods=1,
            Threshold=1,
            ComparisonOperator="GreaterThanOrEqualToThreshold",
            TreatMissingData="breaching",
        )
    }


def _failure_alarms(namespace: str, service: str) -> Json:
    """The functions emit *Failed with dimensions (service, target): a Metrics Insights query sums one over
    every target, so a new target is watched without changing the stack."""
    return {
        f"{metric}Alarm": alarm(
            re.sub(r"(?<!^)(?=[A-Z])", "-", metric).lower(),
            f"{metric} >= 1 in 5 minutes, any target. {meaning}",
            Metrics=[
                {
                    "Id": "failed",
                    "ReturnData": True,
                    "Period": 300,
                    "Expression": metrics_insights_sum(metric, namespace, service),
                }
            ],
            ComparisonOperator="GreaterThanOrEqualToThreshold",
            Threshold=1,
            EvaluationPeriods=1,
            TreatMissingData="notBreaching",
        )
        for metric, meaning in FAILURE_METRICS.items()
    }


def _dead_letter_alarms() -> Json:
    resources: Json = {}
    for kind in names.QUEUE_KINDS:
        logical = QUEUE_LOGICAL[kind]
        resources[f"{logical}DeadLetterAlarm"] = alarm(
            f"{kind}-dead-letters",
            f"Messages gave up after {DEAD_LETTER_AFTER} attempts and wait in the {kind} dead-letter queue"
            " (a crash or timeout never recorded as BackupFailed lands here too). Inspect, fix, then redrive.",
            Namespace="AWS/SQS",
            MetricName="ApproximateNumberOfMessagesVisible",
            Dimensions=[{"Name": "QueueName", "Value": getatt(f"{logical}DeadLetterQueue", "QueueName")}],
            Statistic="Maximum",
            Period=300,
            EvaluationPeriods=1,
            Threshold=1,
            ComparisonOperator="GreaterThanOrEqualToThreshold",
            TreatMissingData="notBreaching",
        )
    return resources


def _schedule_alarms(model: AppModel) -> Json:
    resources: Json = {}
    for fn in model.functions:
        if fn.schedule_seconds is None:
            continue
        # Frequent schedules: failures in three consecutive periods (one blip does not page). Hourly or
        # rarer (a daily cron): the one failed run.
        period = -(-max(300, fn.schedule_seconds) // 60) * 60
        runs = 3 if period <= 3600 else 1
        period = min(period, 86400)
        resources[f"{fn.logical_id}ErrorsAlarm"] = alarm(
            f"{fn.name.replace('_', '-')}-errors",
            f"Scheduled function {fn.name} failed in {runs} consecutive period(s) of {period // 60} minutes: its"
            " work is not being done. See its log group.",
            Namespace="AWS/Lambda",
            MetricName="Errors",
            Dimensions=[{"Name": "FunctionName", "Value": names.function_name(model.stage, fn.name)}],
            Statistic="Sum",
            Period=period,
            EvaluationPeriods=runs,
            DatapointsToAlarm=runs,
            Threshold=1,
            ComparisonOperator="GreaterThanOrEqualToThreshold",
            TreatMissingData="notBreaching",
        )
    return resources


def success_filter(log_group: Json, metric: str, namespace: str) -> Json:
    """Counts a log group's EMF lines recording `metric` into the stack-wide ANY_SUCCESS_METRIC."""
    return {
        "LogGroupName": log_group,
        "FilterPattern": f"{{ $.{metric}[0] >= 1 }}",
        "MetricTransformations": [
            {"MetricNamespace": namespace, "MetricName": ANY_SUCCESS_METRIC, "MetricValue": "1", "Unit": "Count"}
        ],
    }


def _stack_wide_switch(model: AppModel) -> Json:
    """Stack-wide dead-man's switch. Metrics Insights alarms see 3 hours only, and EMF has no target-less
    success metric: metric filters on the logs of the functions that report successes count them, of
    any target and kind, into one metric."""
    ns = model.metrics_namespace
    present = {fn.name: fn for fn in model.functions}
    reporters = [(metric, present[fname]) for metric, fname in SUCCESS.values() if fname in present]
    resources: Json = {}
    for metric, fn in reporters:
        resources[f"{fn.logical_id}{metric}Filter"] = {
            "Type": "AWS::Logs::MetricFilter",
            "Properties": success_filter(ref(f"{fn.logical_id}LogGroup"), metric, ns),
        }
    if reporters:
        resources["NoBackupAlarm"] = alarm(
            "no-backup",
            "Dead-man's switch: no backup (logical or snapshot) of any target succeeded within"
            " NoBackupAlarmPeriodSeconds. Check the dispatcher, the queues and the workers' logs. In ALARM from"
            " the first deploy until a backup succeeds.",
            Namespace=ns,
            MetricName=ANY_SUCCESS_METRIC,
            Statistic="Sum",
            Period=ref("NoBackupAlarmPeriodSeconds"),
            EvaluationPeriods=1,
            Threshold=1,
            ComparisonOperator="LessThanThreshold",
            TreatMissingData="breaching",
        )
    return resources


def _target_switches(namespace: str, service: str, watched: list[WatchedTarget]) -> Json:
    """A dead-man's switch per watched target: no success with its dimensions within its window."""
    resources: Json = {}
    for target in watched:
        metric = SUCCESS[target.kind][0]
        resources[alarm_id_for(target.name, target.kind)] = alarm(
            f"no-{'backup' if target.kind == 'logical' else 'snapshot'}-{target.name}",
            f"Dead-man's switch: no {metric} for target {target.name} (expected every"
            f" {target.interval // 60} minutes) in the last {target.window // 60} minutes.",
            Namespace=namespace,
            MetricName=metric,
            Dimensions=[{"Name": "service", "Value": service}, {"Name": "target", "Value": target.name}],
            Statistic="Sum",
            Period=target.window,
            EvaluationPeriods=1,
            Threshold=1,
            ComparisonOperator="LessThanThreshold",
            TreatMissingData="breaching",
        )
    return resources
