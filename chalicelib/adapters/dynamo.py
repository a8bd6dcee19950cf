"""The jobs table: the one module that knows its key formats and calls DynamoDB.

One table, keyed by the string `pk`, holds every kind of record; the key's prefix tells them apart:

    backup#<backup id>            a logical backup's slot claim          (JobStore, chalicelib.logical.dump)
    snapshot#<backup id>          a physical backup's slot claim         (JobStore, chalicelib.physical)
    fargate#backup#<backup id>    a backup handed to a Fargate task      (JobStore, chalicelib.fargate)
    fargate#restore#<restore id>  a restore handed to a Fargate task     (JobStore, chalicelib.fargate)
    dispatcher#cursor             the last tick the dispatcher covered   (DispatchCursor)
    restore#<restore id>          a restore job                          (RestoreJobTable, chalicelib.restore.model)
    drill#<drill id>              a restore drill's evidence record      (DrillTable, chalicelib.drills.evidence)
    drill-slot#<target>#<slot>    a scheduled drill's slot claim         (JobStore, chalicelib.drills.service)
    idempotency#restores#<hash>   Powertools Idempotency's record of a POST /restores with an Idempotency-Key

Every record expires through the table's TTL attribute `expires_at` (seconds since the epoch); drill records after
DRILL_RECORD_LIFETIME (a year and a month: an annual audit reads them; the bucket keeps the locked copy).
Drill records use the same two indexes with the value "drill" (`kind`; `running` while the drill runs).

Restore jobs are listed without reading the claims: two sparse global secondary indexes whose key
attributes only restore-job items carry (GLOBAL_SECONDARY_INDEXES; the stack and devstack create them):
- `by_kind`: `kind` = "restore", sorted by `created_at`. GET .../restores is a Query, newest first.
- `running`: `running` = "restore" while, and only while, the job is unfinished (PENDING or RUNNING), sorted
  by `created_at`. The restore sweeper reads the RUNNING ones (a filter on `status`, over unfinished jobs
  only), and the restore quotas count the unfinished ones of the last day (`active`). A filter on `by_kind`
  would have saved an index, but a filter is applied after the read: every two minutes the sweeper would
  read (and pay for) every restore job of the last 90 days to find the few that run. The second index
  costs one extra index write when a job is created and one when it ends, and nothing else.
Both indexes have a single partition key value ("restore"): restore jobs are made by people, a handful an
hour, far below one partition's write limit. Items written before the indexes existed carry neither
attribute and are not listed (they expire within 90 days, or are indexed again on their next write).

Slot claims: a claim succeeds when the slot is new, when its last attempt FAILED (a retry is welcome), or
when a RUNNING attempt's lease ran out (its worker died). It fails while another attempt runs or after success.

Errors: AWS refusals (ClientError) and transport failures (BotoCoreError) become StorageError; a failed
condition is an answer (False, None), not an error.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

from botocore.exceptions import BotoCoreError, ClientError

from chalicelib.adapters.aws_errors import error_code
from chalicelib.errors import StorageError

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.idempotency import DynamoDBPersistenceLayer
    from types_boto3_dynamodb import DynamoDBClient
    from types_boto3_dynamodb.type_defs import (
        AttributeDefinitionTypeDef,
        AttributeValueTypeDef,
        GlobalSecondaryIndexTypeDef,
        QueryInputTypeDef,
    )

# --- the key formats ---------------------------------------------------------------------------------

PK = "pk"  # the table's partition key (and its only key)
EXPIRES_AT = "expires_at"  # the table's TTL attribute
CURSOR_KEY = "dispatcher#cursor"
RESTORE_PREFIX = "restore#"
# Powertools writes `<key_prefix>#<hash of the Idempotency-Key>`.
IDEMPOTENCY_KEY_PREFIX = "idempotency#restores"
RECORD_LIFETIME = timedelta(days=90)


def backup_claim_key(backup_id: str) -> str:
    return f"backup#{backup_id}"


def snapshot_claim_key(backup_id: str) -> str:
    return f"snapshot#{backup_id}"


def delegation_key(kind: Literal["backup", "restore"], run_id: str) -> str:
    """A run handed to a Fargate task: <run_id> is the backup id or the restore id."""
    return f"fargate#{kind}#{run_id}"


def restore_job_key(restore_id: str) -> str:
    return RESTORE_PREFIX + restore_id


DRILL_PREFIX = "drill#"
DRILL_KIND = "drill"
DRILL_RECORD_LIFETIME = timedelta(days=400)


def drill_key(drill_id: str) -> str:
    return DRILL_PREFIX + drill_id


def drill_claim_key(target: str, slot: str) -> str:
    """A scheduled drill's slot (`slot`: its compact UTC stamp): one drill per slot whatever the deliveries."""
    return f"drill-slot#{target}#{slot}"


# --- the restore-job indexes -------------------------------------------------------------------------

BY_KIND_INDEX = "by_kind"
RUNNING_INDEX = "running"
KIND = "kind"  # "restore" on every restore job: the partition key of BY_KIND_INDEX
RUNNING = "running"  # "restore" on an unfinished (PENDING or RUNNING) restore job only: RUNNING_INDEX's key
CREATED_AT = "created_at"  # the sort key of both: ISO 8601 in UTC with microseconds, so it sorts as text
RESTORE_KIND = "restore"

# What the table definition adds for the indexes (devstack/local.py, the stack's JobsTable).
INDEX_ATTRIBUTE_DEFINITIONS: list[AttributeDefinitionTypeDef] = [
    {"AttributeName": KIND, "AttributeType": "S"},
    {"AttributeName": RUNNING, "AttributeType": "S"},
    {"AttributeName": CREATED_AT, "AttributeType": "S"},
]
GLOBAL_SECONDARY_INDEXES: list[GlobalSecondaryIndexTypeDef] = [
    {
        "IndexName": index,
        "KeySchema": [
            {"AttributeName": hash_key, "KeyType": "HASH"},
            {"AttributeName": CREATED_AT, "KeyType": "RANGE"},
        ],
        "Projection": {"ProjectionType": "INCLUDE", "NonKeyAttributes": ["doc", "status"]},
    }
    for index, hash_key in ((BY_KIND_INDEX, KIND), (RUNNING_INDEX, RUNNING))
]
# Attributes the table's own records use: a claim's detail may not overwrite them (nor join an index).
_RESERVED = frozenset({PK, EXPIRES_AT, KIND, RUNNING, CREATED_AT, "status", "lease_until", "updated_at", "doc"})


def _s(value: str) -> AttributeValueTypeDef:
    return {"S": value}


def _n(value: int) -> AttributeValueTypeDef:
    return {"N": str(value)}


def _epoch(t: datetime) -> int:
    return int(t.timestamp())


def _sortable(t: datetime) -> str:
    return t.astimezone(UTC).isoformat(timespec="microseconds")


def _put_if(
    client: DynamoDBClient,
    table: str,
    item: dict[str, AttributeValueTypeDef],
    condition: str,
    what: str,
    values: dict[str, AttributeValueTypeDef] | None = None,
    names: dict[str, str] | None = None,
) -> bool:
    """One conditional put: False when the condition failed (another writer was first), StorageError when DynamoDB
    refused or could not be reached. `names` defaults to `#s` → status, the attribute most conditions test."""
    names = {"#s": "status"} if names is None else names
    extra: dict[str, Any] = {"ExpressionAttributeNames": names} if names else {}
    if values:
        extra["ExpressionAttributeValues"] = values
    try:
        client.put_item(TableName=table, Item=item, ConditionExpression=condition, **extra)
    except ClientError as exc:
        if error_code(exc) == "ConditionalCheckFailedException":
            return False
        raise StorageError(f"cannot {what} in DynamoDB table {table!r}: {exc}") from exc
    except BotoCoreError as exc:
        raise StorageError(f"cannot reach DynamoDB to {what} in {table!r}: {exc}") from exc
    return True


def _key(pk: str) -> dict[str, AttributeValueTypeDef]:
    return {PK: _s(pk)}


# --- slot claims and delegations ---------------------------------------------------------------------


class JobStore:
    """Run records keyed by backup_claim_key, snapshot_claim_key or delegation_key."""

    def __init__(self, client: DynamoDBClient, table: str) -> None:
        self.client = client
        self.table = table

    def claim(
        self, key: str, lease: timedelta, now: datetime | None = None, detail: Mapping[str, str] | None = None
    ) -> bool:
        detail = _detail(detail)
        now = now or datetime.now(UTC)
        item: dict[str, AttributeValueTypeDef] = {
            PK: _s(key),
            "status": _s("RUNNING"),
            "lease_until": _n(_epoch(now + lease)),
            "updated_at": _s(now.isoformat()),
            EXPIRES_AT: _n(_epoch(now + RECORD_LIFETIME)),
            **{k: _s(v) for k, v in detail.items()},
        }
        return _put_if(
            self.client,
            self.table,
            item,
            "attribute_not_exists(pk) OR #s = :failed OR (#s = :running AND lease_until < :now)",
            f"record the run {key}",
            values={":failed": _s("FAILED"), ":running": _s("RUNNING"), ":now": _n(_epoch(now))},
        )

    def finish(self, key: str, status: str, detail: Mapping[str, str] | None = None) -> None:
        fields = {"status": status, "updated_at": datetime.now(UTC).isoformat(), **_detail(detail)}
        names = {f"#f{i}": k for i, k in enumerate(fields)}
        values = {f":v{i}": _s(v) for i, v in enumerate(fields.values())}
        try:
            self.client.update_item(
                TableName=self.table,
                Key=_key(key),
                UpdateExpression="SET " + ", ".join(f"#f{i} = :v{i}" for i in range(len(fields))),
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=values,
            )
        except (ClientError, BotoCoreError) as exc:
            raise StorageError(f"cannot update run {key} in DynamoDB table {self.table!r}: {exc}") from exc

    def get(self, key: str) -> dict[str, str] | None:
        try:
            item = self.client.get_item(TableName=self.table, Key=_key(key), ConsistentRead=True).get("Item")
        except (ClientError, BotoCoreError) as exc:
            raise StorageError(f"cannot read run {key} from DynamoDB table {self.table!r}: {exc}") from exc
        if not item:
            return None
        return {k: str(next(iter(v.values()))) for k, v in item.items()}


def _detail(detail: Mapping[str, str] | None) -> dict[str, str]:
    clash = _RESERVED & set(detail or {})
    if clash:
        raise ValueError(f"a run's detail may not set {sorted(clash)}: the jobs table's own attributes")
    return dict(detail or {})


# --- the dispatch cursor -----------------------------------------------------------------------------


class DispatchCursor:
    """The last tick dispatched, advanced only forwards (a conditional write)."""

    def __init__(self, client: DynamoDBClient, table: str) -> None:
        self.client, self.table = client, table

    def get(self) -> datetime | None:
        try:
            item = self.client.get_item(TableName=self.table, Key=_key(CURSOR_KEY), ConsistentRead=True).get("Item")
        except (ClientError, BotoCoreError) as exc:
            raise StorageError(f"cannot read the dispatch cursor from {self.table!r}: {exc}") from exc
        return datetime.fromisoformat(item["tick"]["S"]) if item else None

    def advance(self, tick: datetime) -> bool:
        """Move the cursor to `tick`; False when it already stands there or later."""
        return _put_if(
            self.client,
            self.table,
            {PK: _s(CURSOR_KEY), "tick": _s(tick.isoformat())},
            "attribute_not_exists(pk) OR tick < :t",
            "advance the dispatch cursor",
            values={":t": _s(tick.isoformat())},
            names={},
        )


# --- restore jobs ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RestoreRecord:
    """A restore job as the table holds it: `doc` is the whole job as JSON, stored and returned as is
    (chalicelib.restore.model reads and writes it); the rest is what conditions and indexes need."""

    restore_id: str
    status: str
    created_at: datetime
    doc: str


class RestoreJobTable:
    """Restore-job records: conditional transitions, and the two index queries that list them."""

    def __init__(self, client: DynamoDBClient, table: str) -> None:
        self.client, self.table = client, table

    def _item(self, record: RestoreRecord, lease_until: datetime | None) -> dict[str, AttributeValueTypeDef]:
        item: dict[str, AttributeValueTypeDef] = {
            PK: _s(restore_job_key(record.restore_id)),
            "status": _s(record.status),
            CREATED_AT: _s(_sortable(record.created_at)),
            "doc": _s(record.doc),
            EXPIRES_AT: _n(_epoch(record.created_at + RECORD_LIFETIME)),
            KIND: _s(RESTORE_KIND),
        }
        if record.status in ("PENDING", "RUNNING"):
            item[RUNNING] = _s(RESTORE_KIND)  # a full put: finishing drops it, and the job leaves the index
        if lease_until:
            item["lease_until"] = _n(_epoch(lease_until))
        return item

    def _put(
        self,
        record: RestoreRecord,
        lease_until: datetime | None,
        condition: str,
        values: dict[str, AttributeValueTypeDef] | None = None,
    ) -> bool:
        """One conditional put; False when the condition failed."""
        item = self._item(record, lease_until)
        what = f"write restore {record.restore_id}"
        if not values:
            return _put_if(self.client, self.table, item, condition, what, names={})
        return _put_if(self.client, self.table, item, condition, what, values=values)

    def create(self, record: RestoreRecord) -> None:
        if not self._put(record, None, "attribute_not_exists(pk)"):
            raise StorageError(f"restore {record.restore_id} already exists in {self.table!r}")

    def get(self, restore_id: str) -> str | None:
        """The job's document; None when there is no such job."""
        try:
            item = self.client.get_item(
                TableName=self.table, Key=_key(restore_job_key(restore_id)), ConsistentRead=True
            ).get("Item")
        except (ClientError, BotoCoreError) as exc:
            raise StorageError(f"cannot read restore {restore_id} from {self.table!r}: {exc}") from exc
        return item["doc"]["S"] if item else None

    def start(self, record: RestoreRecord, lease_until: datetime, now: datetime) -> bool:
        """Write the RUNNING `record` over a PENDING job, or over a RUNNING one whose lease ran out."""
        return self._put(
            record,
            lease_until,
            "#s = :pending OR (#s = :running AND lease_until < :now)",
            {":pending": _s("PENDING"), ":running": _s("RUNNING"), ":now": _n(_epoch(now))},
        )

    def update(self, record: RestoreRecord, lease_until: datetime | None = None) -> bool:
        """Write `record` over a job that has not finished; False when it has."""
        return self._put(
            record,
            lease_until,
            "#s = :running OR #s = :pending",
            {":running": _s("RUNNING"), ":pending": _s("PENDING")},
        )

    def recent(self, limit: int, pages: int | None = 1) -> list[str]:
        """The newest `limit` jobs' documents, newest first: a Query on the by_kind index (one page by default)."""
        return self._query(BY_KIND_INDEX, KIND, limit, pages=pages)

    def running(self, limit: int) -> list[str]:
        """The documents of up to `limit` RUNNING jobs, newest first (the running index, PENDING filtered out)."""
        return self._query(RUNNING_INDEX, RUNNING, limit, status="RUNNING")

    def active(self, limit: int, since: datetime) -> list[str]:
        """The documents of up to `limit` unfinished (PENDING or RUNNING) jobs created at `since` or later."""
        return self._query(RUNNING_INDEX, RUNNING, limit, since=since)

    def _query(
        self,
        index: str,
        hash_key: str,
        limit: int,
        pages: int | None = None,
        status: str | None = None,
        since: datetime | None = None,
    ) -> list[str]:
        return _index_query(self.client, self.table, index, hash_key, RESTORE_KIND, limit, pages, status, since)

    def idempotency_persistence(self) -> DynamoDBPersistenceLayer:
        """Powertools Idempotency's records in this table (IDEMPOTENCY_KEY_PREFIX keys, the same TTL)."""
        from aws_lambda_powertools.utilities.idempotency import DynamoDBPersistenceLayer

        return DynamoDBPersistenceLayer(
            table_name=self.table, key_attr=PK, expiry_attr=EXPIRES_AT, boto3_client=self.client
        )


def _index_query(
    client: DynamoDBClient,
    table: str,
    index: str,
    hash_key: str,
    value: str,
    limit: int,
    pages: int | None = None,
    status: str | None = None,
    since: datetime | None = None,
) -> list[str]:
    """The `doc` of up to `limit` records whose `hash_key` is `value` on `index`, newest first."""
    if limit <= 0:
        return []
    docs: list[str] = []
    condition, values = "#k = :k", {":k": _s(value)}
    names = {"#k": hash_key}
    if since is not None:
        condition += " AND #c >= :since"
        names["#c"] = CREATED_AT
        values[":since"] = _s(_sortable(since))
    request: QueryInputTypeDef = {
        "TableName": table,
        "IndexName": index,
        "KeyConditionExpression": condition,
        "ExpressionAttributeNames": names,
        "ExpressionAttributeValues": values,
        "ScanIndexForward": False,
        "Limit": limit,
    }
    if status is not None:
        request["FilterExpression"] = "#s = :s"
        names["#s"] = "status"
        values[":s"] = _s(status)
    try:
        while True:
            resp = client.query(**request)
            docs.extend(item["doc"]["S"] for item in resp.get("Items", []))
            pages = None if pages is None else pages - 1
            last = resp.get("LastEvaluatedKey")
            if not last or len(docs) >= limit or pages == 0:
                break
            request["ExclusiveStartKey"] = last
            request["Limit"] = limit - len(docs)
    except (ClientError, BotoCoreError) as exc:
        raise StorageError(f"cannot list {value} records from index {index!r} of {table!r}: {exc}") from exc
    return docs[:limit]


# --- restore drills ----------------------------------------------------------------------------------


class DrillTable:
    """Drill evidence records (`doc`: the drill as JSON, chalicelib.drills.model), on the restore jobs' indexes with
    the value "drill": listed newest first by `created_at` (the drill's start), the running ones by `running`."""

    def __init__(self, client: DynamoDBClient, table: str) -> None:
        self.client, self.table = client, table

    def put(self, drill_id: str, status: str, created_at: datetime, doc: str, lease_until: datetime | None) -> bool:
        """Write the drill's record unless it has finished already (False then: a finished record never changes)."""
        item: dict[str, AttributeValueTypeDef] = {
            PK: _s(drill_key(drill_id)),
            "status": _s(status),
            CREATED_AT: _s(_sortable(created_at)),
            "doc": _s(doc),
            EXPIRES_AT: _n(_epoch(created_at + DRILL_RECORD_LIFETIME)),
            KIND: _s(DRILL_KIND),
        }
        if status == "RUNNING":
            item[RUNNING] = _s(DRILL_KIND)
        if lease_until is not None:
            item["lease_until"] = _n(_epoch(lease_until))
        return _put_if(
            self.client,
            self.table,
            item,
            "attribute_not_exists(pk) OR #s = :running",
            f"record drill {drill_id}",
            values={":running": _s("RUNNING")},
        )

    def get(self, drill_id: str) -> str | None:
        try:
            item = self.client.get_item(TableName=self.table, Key=_key(drill_key(drill_id)), ConsistentRead=True)
        except (ClientError, BotoCoreError) as exc:
            raise StorageError(f"cannot read drill {drill_id} from {self.table!r}: {exc}") from exc
        found = item.get("Item")
        return found["doc"]["S"] if found else None

    def recent(self, limit: int, since: datetime | None = None) -> list[str]:
        """Documents of up to `limit` drills started at `since` or later, newest first."""
        return _index_query(self.client, self.table, BY_KIND_INDEX, KIND, DRILL_KIND, limit, since=since)

    def running(self, limit: int) -> list[str]:
        """Documents of up to `limit` drills recorded as RUNNING (their worker may have died), newest first."""
        return _index_query(self.client, self.table, RUNNING_INDEX, RUNNING, DRILL_KIND, limit)
