"""A restored database's row counts, judged against the counts its backup recorded.

Counting after a restore is on the clock of every restore, so it costs two statements whatever the number of tables:
one lists the tables, one counts them all (a UNION ALL of `count(*)` per table, in batches of COUNT_BATCH), instead of
a round trip per table. The tables are the ones `adapters.snapshot_counts.count_rows` counts at backup time (ordinary
tables outside the system schemas and extensions), so the two sides compare like with like.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from chalicelib.adapters.snapshot_counts import counted_tables
from chalicelib.logical.selection import Selection

if TYPE_CHECKING:
    import psycopg

COUNT_BATCH = 500  # tables per counting statement: one round trip for any ordinary database, a bounded query text


def count_restored_rows(conn: psycopg.Connection[Any]) -> dict[str, int]:
    """Exact row counts of every ordinary table, keyed "schema.table": 1 + ceil(tables / COUNT_BATCH) statements."""
    from psycopg import sql

    tables = counted_tables(conn)  # the tables the backup counted, listed by the same query
    counts: dict[str, int] = {}
    for start in range(0, len(tables), COUNT_BATCH):
        batch = tables[start : start + COUNT_BATCH]
        query = sql.SQL(" UNION ALL ").join(
            sql.SQL("SELECT {}::int, count(*) FROM ONLY {}.{}").format(
                sql.Literal(start + i), sql.Identifier(schema), sql.Identifier(table)
            )
            for i, (schema, table) in enumerate(batch)
        )
        for index, count in conn.execute(query).fetchall():
            schema, table = tables[int(index)]
            counts[f"{schema}.{table}"] = int(count)
    return counts


def verify_counts(expected: dict[str, int] | None, actual: dict[str, int], selection: Selection) -> dict[str, Any]:
    """Compare restored row counts with the manifest's; a selective restore compares the tables it chose."""
    if expected is None:
        return {"match": None, "reason": "the backup recorded no row counts"}
    wanted = {t: n for t, n in expected.items() if t in selection.tables_in(expected)} if selection else expected
    mismatched = {t: {"expected": n, "restored": actual.get(t)} for t, n in wanted.items() if actual.get(t) != n}
    result: dict[str, Any] = {
        "match": not mismatched,
        "tables_checked": len(wanted),
        "rows_checked": sum(wanted.values()),
        "mismatches": mismatched,
    }
    if selection and not wanted:
        result.update(match=None, reason="the selection holds no tables of the backup")
    return result
