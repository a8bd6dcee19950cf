"""The alarm topic and the alarms.

Failures are alarmed by Metrics Insights over the EMF metrics (any target); dead-man's switches watch
BackupSucceeded/SnapshotSucceeded per target (given when the template is built: targets.py), and
stack-wide through a log metric filter. Dead-letter queues and scheduled functions' errors are alarmed
from AWS's own metrics.
"""

from __future__ import annotations

import re
from typing import Any

from stack import names
from stack.template.app_model import QUEUE_LOGICAL, AppModel, metrics_service
from stack.template.intrinsics import Json, getatt, ref, sub
from stack.template.queues import DEAD_LETTER_AFTER
from stack.template.targets import SUCCESS, WatchedTarget, alarm_id_for

ANY_SUCCESS_METRIC = "BackupSucceededAnyTarget"  # from metric filters: no dimensions
FAILURE_METRICS = {
    "BackupFailed": "A logical backup failed. Its failure record is under failed/<target>/ in the bucket and in the"
    " backup worker's log; SQS retries the message up to 3 times.",
    "SnapshotFailed": "A snapshot could not be started, or RDS/EC2 reported it failed. See the backup worker's"
    " and the snapshot sweeper's logs.",
    "RestoreFailed": "A restore job failed (its job record, GET /restores/<id>, says why). See the restore"
    " worker's log.",
}


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


def monitoring_resources(model: AppModel, watched: list[WatchedTarget]) -> Json:
    service = metrics_service()
    return {
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
        **_target_switches(model.metrics_namespace, service, watched),
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
