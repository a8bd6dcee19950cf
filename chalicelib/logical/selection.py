"""Selective restores: what a `schemas`/`tables` selection means, resolved against the archive itself.

pg_restore's own `-n`/`-t` take exact names, `-t` a bare table name only, both together mean their
intersection, and neither brings the extensions a schema's tables use (a `citext` column fails on
`type "public.citext" does not exist`). A selection here is a union: every object of each named schema,
plus each named table (`table` in any schema, or `schema.table`). pg_restore resolves each name against
the archive's table of contents (`pg_restore -l -n S -t T`, one listing per name), so no TOC name is
ever parsed here; the chosen entries plus the archive's extensions become the `-L` list of the restore.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from chalicelib.errors import BadRequestError

# `<dump id>; <catalog oid> <object oid> <TYPE> ...`: the first three fields never contain names.
_TOC_ENTRY = re.compile(r"^(\d+); (\d+) \d+ (.*)$")
PG_EXTENSION_CATALOG = "3079"  # pg_extension's oid: the catalog of every EXTENSION entry


@dataclass(frozen=True)
class TableName:
    schema: str | None
    name: str

    def __str__(self) -> str:
        return f"{self.schema}.{self.name}" if self.schema else self.name


def _unquote(part: str, text: str) -> str:
    if part.startswith('"'):
        if len(part) < 2 or not part.endswith('"'):
            raise BadRequestError(f"table {text!r}: unbalanced double quote")
        return part[1:-1].replace('""', '"')
    return part


def parse_table(text: str) -> TableName:
    """`orders`, `sales.orders`, `"Sales"."Order.Lines"`: the first dot outside double quotes separates
    schema and table; quotes keep a name's case and dots. Names are matched exactly, as pg_restore does."""
    quoted = False
    for i, c in enumerate(text):
        if c == '"':
            quoted = not quoted
        elif c == "." and not quoted:
            schema, name = _unquote(text[:i], text), _unquote(text[i + 1 :], text)
            if not schema or not name:
                raise BadRequestError(f"table {text!r}: expected table or schema.table")
            return TableName(schema, name)
    name = _unquote(text, text)
    if not name:
        raise BadRequestError("a table name is empty")
    return TableName(None, name)


@dataclass(frozen=True)
class Selection:
    schemas: tuple[str, ...] = ()
    tables: tuple[TableName, ...] = ()

    @classmethod
    def of(cls, schemas: Iterable[str], tables: Iterable[str]) -> Selection:
        return cls(tuple(schemas), tuple(parse_table(t) for t in tables))

    def __bool__(self) -> bool:
        return bool(self.schemas or self.tables)

    def filters(self) -> list[tuple[str, list[str]]]:
        """(what, pg_restore arguments) for each name: one `pg_restore -l` listing each."""
        out = [(f"schema {s}", [f"--schema={s}"]) for s in self.schemas]
        for t in self.tables:
            args = [f"--schema={t.schema}", f"--table={t.name}"] if t.schema else [f"--table={t.name}"]
            out.append((f"table {t}", args))
        return out

    def schemas_needed(self, row_counts: Mapping[str, int] | None) -> list[str]:
        """The schemas the selected objects live in (pg_restore -n/-t restore neither the schema itself)."""
        wanted = [*self.schemas, *(t.schema for t in self.tables if t.schema)]
        wanted += sorted(key.partition(".")[0] for key in self.tables_in(row_counts or {}))
        return list(dict.fromkeys(wanted))

    def tables_in(self, row_counts: Mapping[str, int]) -> set[str]:
        """The backup's tables ("schema.table" keys of the manifest's row counts) this selection restores."""
        chosen = set()
        for key in row_counts:
            schema, _, table = key.partition(".")
            if schema in self.schemas or any(t.name == table and t.schema in (None, schema) for t in self.tables):
                chosen.add(key)
        return chosen

    def unknown_tables(self, row_counts: Mapping[str, int]) -> list[str]:
        """The table names that match no table of the backup (checked before anything is created)."""
        unknown = []
        for t in self.tables:
            if not any(
                key.partition(".")[2] == t.name and t.schema in (None, key.partition(".")[0]) for key in row_counts
            ):
                unknown.append(str(t))
        return unknown


def _lines(listing: str) -> list[str]:
    """pg_restore ends entries with "\n" and escapes newlines in names; str.splitlines would also split at the
    Unicode line separators a table name may contain, and so read a line an object's name planted."""
    return listing.split("\n")


def entry_ids(listing: str) -> list[str]:
    return [m.group(1) for line in _lines(listing) if (m := _TOC_ENTRY.match(line))]


def _schema_entry(rest: str, schemas: Iterable[str]) -> str | None:
    """The schema a SCHEMA entry (or its ACL or COMMENT) is about, when it is one of `schemas`. public exists
    in every new database: only its grants and comment are taken."""
    for schema in schemas:
        kinds = (
            ("ACL - SCHEMA", "COMMENT - SCHEMA")
            if schema == "public"
            else ("SCHEMA -", "ACL - SCHEMA", "COMMENT - SCHEMA")
        )
        for prefix in (f"{kind} {schema} " for kind in kinds):
            if rest.startswith(prefix) or rest == prefix.rstrip():
                return schema
    return None


def restore_list(full_listing: str, chosen: set[str], schemas: Iterable[str] = ()) -> tuple[str, set[str]]:
    """The `-L` list: the chosen entries, every extension (and its comment), and the CREATE SCHEMA (owner,
    grants, comment) of each schema the selection restores into, in archive order; and the schemas whose
    CREATE SCHEMA the archive holds (the others are created before the restore)."""
    wanted = list(schemas)
    lines, found = [], {"public"}
    for line in _lines(full_listing):
        m = _TOC_ENTRY.match(line)
        if not m:
            continue
        rest = m.group(3)
        schema = _schema_entry(rest, wanted)
        if schema is not None:
            found.add(schema)
        extension = (m.group(2) == PG_EXTENSION_CATALOG and rest.startswith("EXTENSION - ")) or rest.startswith(
            "COMMENT - EXTENSION "
        )
        if m.group(1) in chosen or schema is not None or extension:
            lines.append(line)
    return "\n".join(lines) + "\n", found
