"""Run records in DynamoDB: claiming a backup slot so that a duplicate delivery does nothing.

A claim succeeds when the slot is new, when its last attempt FAILED (a retry is welcome), or when a
RUNNING attempt's lease ran out (its worker died). It fails while another attempt runs or after success.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from chalicelib.errors import StorageError


class JobStore:
    def __init__(self, client: Any, table: str) -> None:
        self.client = client
        self.table = table

    def claim(self, key: str, lease: timedelta, now: datetime | None = None, detail: dict[str, str] | None = None
              ) -> bool:
        from botocore.exceptions import ClientError

        now = now or datetime.now(UTC)
        item = {
            "pk": {"S": key},
            "status": {"S": "RUNNING"},
            "lease_until": {"N": str(int((now + lease).timestamp()))},
            "updated_at": {"S": now.isoformat()},
            "expires_at": {"N": str(int((now + timedelta(days=90)).timestamp()))},
            **{k: {"S": v} for k, v in (detail or {}).items()},
        }
        try:
            self.client.put_item(
                TableName=self.table, Item=item,
                ConditionExpression=(
                    "attribute_not_exists(pk) OR #s = :failed OR (#s = :running AND lease_until < :now)"),
                ExpressionAttributeNames={"#s": "status"},
                ExpressionAttributeValues={":failed": {"S": "FAILED"}, ":running": {"S": "RUNNING"},
                                           ":now": {"N": str(int(now.timestamp()))}},
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException":
                return False
            raise StorageError(f"cannot record the run in DynamoDB table {self.table!r}: {exc}") from exc
        return True

    def finish(self, key: str, status: str, detail: dict[str, str] | None = None) -> None:
        fields = {"status": status, "updated_at": datetime.now(UTC).isoformat(), **(detail or {})}
        names = {f"#f{i}": k for i, k in enumerate(fields)}
        values = {f":v{i}": {"S": v} for i, v in enumerate(fields.values())}
        try:
            self.client.update_item(TableName=self.table, Key={"pk": {"S": key}},
                                    UpdateExpression="SET " + ", ".join(f"#f{i} = :v{i}" for i in range(len(fields))),
                                    ExpressionAttributeNames=names, ExpressionAttributeValues=values)
        except Exception as exc:
            raise StorageError(f"cannot update run {key} in DynamoDB table {self.table!r}: {exc}") from exc

    def get(self, key: str) -> dict[str, str] | None:
        resp = self.client.get_item(TableName=self.table, Key={"pk": {"S": key}}, ConsistentRead=True)
        item = resp.get("Item")
        if not item:
            return None
        return {k: next(iter(v.values())) for k, v in item.items()}
