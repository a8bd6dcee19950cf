"""Selective restores (names, TOC lists) and the roles plan from globals.sql: pure logic."""

from __future__ import annotations

import pytest

from chalicelib.errors import BadRequestError
from chalicelib.logical.roles import plan
from chalicelib.logical.selection import Selection, TableName, entry_ids, parse_table, restore_list

COUNTS = {"public.orders": 1, "sales.orders": 2, "sales.customers": 3, "Weird.Order.Lines": 4}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("orders", TableName(None, "orders")),
        ("sales.customers", TableName("sales", "customers")),
        ('"Weird"."Order.Lines"', TableName("Weird", "Order.Lines")),
        ('"a""b"', TableName(None, 'a"b')),
        ("Mixed.Case", TableName("Mixed", "Case")),  # exact, as pg_restore matches
    ],
)
def test_parse_table(text: str, expected: TableName) -> None:
    assert parse_table(text) == expected


@pytest.mark.parametrize("text", ['"open', "sales.", ".orders", '""'])
def test_bad_table_names_are_refused(text: str) -> None:
    with pytest.raises(BadRequestError):
        parse_table(text)


def test_a_selection_is_a_union_of_schemas_and_tables() -> None:
    sel = Selection.of(["public"], ["sales.customers"])
    assert sel.tables_in(COUNTS) == {"public.orders", "sales.customers"}
    assert sel.filters() == [
        ("schema public", ["--schema=public"]),
        ("table sales.customers", ["--schema=sales", "--table=customers"]),
    ]
    assert sel.schemas_needed(COUNTS) == ["public", "sales"]
    assert Selection.of([], ["orders"]).schemas_needed(COUNTS) == ["public", "sales"]


def test_an_unqualified_table_matches_every_schema() -> None:
    assert Selection.of([], ["orders"]).tables_in(COUNTS) == {"public.orders", "sales.orders"}


def test_unknown_tables() -> None:
    sel = Selection.of([], ["sales.orders", "billing.orders", "nope", '"Weird"."Order.Lines"'])
    assert sel.unknown_tables(COUNTS) == ["billing.orders", "nope"]


LISTING = """;
; Archive created at 2026-11-29 03:00:00 UTC
;
; Selected TOC Entries:
;
5; 2615 16385 SCHEMA - sales postgres
2; 3079 16386 EXTENSION - citext
4411; 0 0 COMMENT - EXTENSION citext
220; 1259 16500 TABLE sales customers postgres
221; 1259 16510 TABLE public my table postgres
4400; 0 16500 TABLE DATA sales customers postgres
4401; 0 16510 TABLE DATA public my table postgres
"""


def test_restore_list_keeps_order_and_adds_extensions() -> None:
    assert entry_ids(LISTING) == ["5", "2", "4411", "220", "221", "4400", "4401"]
    text, found = restore_list(LISTING, {"220", "4400"}, ["sales", "audit"])
    assert text.splitlines() == [
        "5; 2615 16385 SCHEMA - sales postgres",
        "2; 3079 16386 EXTENSION - citext",
        "4411; 0 0 COMMENT - EXTENSION citext",
        "220; 1259 16500 TABLE sales customers postgres",
        "4400; 0 16500 TABLE DATA sales customers postgres",
    ]
    assert found == {"public", "sales"}  # audit has no CREATE SCHEMA in this archive: the restore creates it


GLOBALS = """--
-- PostgreSQL database cluster dump
--
SET default_transaction_read_only = off;
CREATE ROLE postgres;
ALTER ROLE postgres WITH SUPERUSER INHERIT CREATEROLE CREATEDB LOGIN REPLICATION BYPASSRLS;
CREATE ROLE app_owner;
ALTER ROLE app_owner WITH NOSUPERUSER INHERIT NOCREATEROLE NOCREATEDB NOLOGIN NOREPLICATION NOBYPASSRLS;
CREATE ROLE "Report Reader";
ALTER ROLE "Report Reader" WITH NOSUPERUSER INHERIT NOCREATEROLE NOCREATEDB LOGIN NOREPLICATION NOBYPASSRLS;
ALTER ROLE "Report Reader" SET search_path TO 'sales';
GRANT app_owner TO "Report Reader" GRANTED BY postgres;
GRANT pg_read_all_data TO postgres GRANTED BY postgres;
CREATE TABLESPACE fast OWNER postgres LOCATION '/mnt/fast';
"""


def test_roles_plan_creates_only_missing_roles_and_never_alters_existing_ones() -> None:
    run, skipped = plan(GLOBALS, existing={"postgres", "pg_read_all_data"})
    assert run == [
        ("CREATE ROLE app_owner;", "app_owner"),
        (
            "ALTER ROLE app_owner WITH NOSUPERUSER INHERIT NOCREATEROLE NOCREATEDB NOLOGIN NOREPLICATION NOBYPASSRLS;",
            "app_owner",
        ),
        ('CREATE ROLE "Report Reader";', "Report Reader"),
        (
            'ALTER ROLE "Report Reader" WITH NOSUPERUSER INHERIT NOCREATEROLE NOCREATEDB LOGIN NOREPLICATION'
            " NOBYPASSRLS;",
            "Report Reader",
        ),
        ("ALTER ROLE \"Report Reader\" SET search_path TO 'sales';", "Report Reader"),
        ('GRANT app_owner TO "Report Reader" GRANTED BY postgres;', "Report Reader"),
    ]
    assert [s.split(" (")[0] for s in skipped] == [
        "CREATE ROLE postgres;",
        "ALTER ROLE postgres WITH SUPERUSER INHERIT CREATEROLE CREATEDB LOGIN REPLICATION BYPASSRLS;",
        "GRANT pg_read_all_data TO postgres GRANTED BY postgres;",
        "CREATE TABLESPACE fast OWNER postgres LOCATION '/mnt/fast';",
    ]


def test_a_name_cannot_plant_list_lines() -> None:
    """pg_restore escapes newlines in names, not Unicode line separators: those must not split entries."""
    planted = "222; 1259 16520 TABLE public c\u20284401; 0 16510 TABLE DATA public stuff postgres\u2028x postgres"
    listing = LISTING + planted + "\n" + "9; 0 0 EXTENSION - fake postgres\n"  # an EXTENSION type outside pg_extension
    assert entry_ids(listing)[-2:] == ["222", "9"]
    text, _ = restore_list(listing, {"220"})
    assert "stuff" not in text and "fake" not in text
