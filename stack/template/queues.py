"""The SQS queues the workers consume, each with a dead-letter queue, and the variables naming them.

Visibility timeouts are 6x the consumer's Lambda timeout (AWS's advice), read from .chalice/config.json;
after 3 receives a message moves to the dead-letter queue, which keeps it 14 days. How the queues' names
reach app.py and Chalice's event sources: app_model.py.
"""

from __future__ import annotations

from stack import names
from stack.template.app_model import QUEUE_LOGICAL, AppModel
from stack.template.intrinsics import Json, getatt, ref, sub

DEAD_LETTER_AFTER = 3  # receives before a message moves to its dead-letter queue
VISIBILITY_FACTOR = 6  # AWS: queue visibility >= 6x the consumer's timeout (room for throttled retries)
SQS_MAX_VISIBILITY = 43200


def queue_url_variables() -> Json:
    """LIFEBOAT_<KIND>_QUEUE_URL: each queue's URL, for the code that sends to it."""
    return {
        f"LIFEBOAT_{QUEUE_LOGICAL[k].upper()}_QUEUE_URL": ref(f"{QUEUE_LOGICAL[k]}Queue") for k in names.QUEUE_KINDS
    }


def queue_name_variables() -> Json:
    """LIFEBOAT_<KIND>_QUEUE: each queue's name, by reference (so the queues exist before the functions)."""
    return {
        f"LIFEBOAT_{QUEUE_LOGICAL[k].upper()}_QUEUE": getatt(f"{QUEUE_LOGICAL[k]}Queue", "QueueName")
        for k in names.QUEUE_KINDS
    }


def queue_resources(model: AppModel) -> Json:
    resources: Json = {}
    for kind in names.QUEUE_KINDS:
        logical = QUEUE_LOGICAL[kind]
        timeouts = [f.timeout for f in model.consumers(kind)] or [900]  # not consumed yet: Lambda's maximum
        visibility = min(SQS_MAX_VISIBILITY, VISIBILITY_FACTOR * max(timeouts))
        fifo: Json = {"FifoQueue": True} if kind in names.FIFO_KINDS else {}
        suffix = ".fifo" if fifo else ""
        resources[f"{logical}DeadLetterQueue"] = {
            "Type": "AWS::SQS::Queue",
            "Properties": {
                "QueueName": sub(f"pg-lifeboat-${{Stage}}-{kind}-dlq{suffix}"),
                "SqsManagedSseEnabled": True,
                "MessageRetentionPeriod": 14 * 86400,
                **fifo,
            },
        }
        resources[f"{logical}Queue"] = {
            "Type": "AWS::SQS::Queue",
            "Properties": {
                "QueueName": sub(f"pg-lifeboat-${{Stage}}-{kind}{suffix}"),
                "SqsManagedSseEnabled": True,
                "VisibilityTimeout": visibility,
                "MessageRetentionPeriod": 4 * 86400,
                "RedrivePolicy": {
                    "deadLetterTargetArn": getatt(f"{logical}DeadLetterQueue", "Arn"),
                    "maxReceiveCount": DEAD_LETTER_AFTER,
                },
                **fifo,
            },
        }
        for queue in (f"{logical}Queue", f"{logical}DeadLetterQueue"):
            resources[f"{queue}Policy"] = _tls_only_policy(queue)
    return resources


def _tls_only_policy(queue: str) -> Json:
    return {
        "Type": "AWS::SQS::QueuePolicy",
        "Properties": {
            "Queues": [ref(queue)],
            "PolicyDocument": {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Sid": "DenyInsecureTransport",
                        "Effect": "Deny",
                        "Principal": "*",
                        "Action": "sqs:*",
                        "Resource": getatt(queue, "Arn"),
                        "Condition": {"Bool": {"aws:SecureTransport": "false"}},
                    }
                ],
            },
        },
    }
