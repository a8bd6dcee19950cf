"""SQS: the one place that sends messages (the backup queue, the restore queue).

What goes in a message, and its FIFO group and deduplication id, is the caller's business
(chalicelib.scheduling.dispatch, chalicelib.restore.model); this module only sends, and turns a refusal
into a StorageError that says which queue refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from botocore.exceptions import BotoCoreError, ClientError

from chalicelib.adapters.aws_errors import error_code
from chalicelib.errors import StorageError

if TYPE_CHECKING:
    from types_boto3_sqs import SQSClient
    from types_boto3_sqs.type_defs import SendMessageBatchRequestEntryTypeDef, SendMessageRequestTypeDef

MAX_BATCH = 10  # SQS's limit of messages in one SendMessageBatch


@dataclass(frozen=True)
class Message:
    body: str
    group_id: str | None = None  # FIFO queues only
    dedup_id: str | None = None  # FIFO queues only (without content-based deduplication)


class Queue:
    """A queue by URL, or by name (`chalice deploy` stages know only the names: .chalice/config.json), whose URL
    is then asked of SQS (GetQueueUrl) on first use."""

    def __init__(self, client: SQSClient, url: str) -> None:
        self.client, self._address = client, url
        self._url = url if "://" in url else None

    @property
    def url(self) -> str:
        if self._url is None:
            try:
                self._url = self.client.get_queue_url(QueueName=self._address)["QueueUrl"]
            except (ClientError, BotoCoreError) as exc:
                raise StorageError(f"cannot find the SQS queue named {self._address!r}: {_reason(exc)}") from exc
        return self._url

    @property
    def fifo(self) -> bool:
        return self._address.endswith(".fifo")

    def send(self, body: str, group_id: str | None = None, dedup_id: str | None = None) -> None:
        request: SendMessageRequestTypeDef = {"QueueUrl": self.url, "MessageBody": body}
        if group_id is not None:
            request["MessageGroupId"] = group_id
        if dedup_id is not None:
            request["MessageDeduplicationId"] = dedup_id
        try:
            self.client.send_message(**request)
        except (ClientError, BotoCoreError) as exc:
            raise StorageError(f"cannot send a message to {self.url}: {_reason(exc)}") from exc

    def send_batch(self, messages: Sequence[Message]) -> int:
        """Send up to MAX_BATCH messages in one request; how many SQS accepted. StorageError when SQS
        refuses the request or any message of it."""
        if not messages:
            return 0
        if len(messages) > MAX_BATCH:
            raise ValueError(f"SQS takes at most {MAX_BATCH} messages a batch, not {len(messages)}")
        entries = [_entry(i, m) for i, m in enumerate(messages)]
        try:
            resp = self.client.send_message_batch(QueueUrl=self.url, Entries=entries)
        except (ClientError, BotoCoreError) as exc:
            raise StorageError(f"cannot send messages to {self.url}: {_reason(exc)}") from exc
        failed = resp.get("Failed") or []
        if failed:
            raise StorageError(
                f"SQS refused {len(failed)} of {len(messages)} message(s) on {self.url}:"
                f" {failed[0].get('Code', '')} {failed[0].get('Message', '')}".rstrip()
            )
        return len(resp.get("Successful", []))


def _entry(index: int, message: Message) -> SendMessageBatchRequestEntryTypeDef:
    entry: SendMessageBatchRequestEntryTypeDef = {"Id": str(index), "MessageBody": message.body}
    if message.group_id is not None:
        entry["MessageGroupId"] = message.group_id
    if message.dedup_id is not None:
        entry["MessageDeduplicationId"] = message.dedup_id
    return entry


def _reason(exc: ClientError | BotoCoreError) -> str:
    code = error_code(exc)
    return f"{code}: {exc}" if code else str(exc)
