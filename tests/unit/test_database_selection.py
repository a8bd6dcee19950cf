"""database._selected: which tables get row counts, mirroring pg_dump's -n/-N/-t/-T pattern rules."""

from __future__ import annotations

from typing import Any

import pytest

from chalicelib.adapters.postgres import _selected
from chalicelib.config import Logical

TABLES = [
    ("public", "orders"),
    ("public", "order_items"),
    ("public", "audit_log"),
    ("public", "tmp_import"),
    ("public", "Orders"),
    ("sales", "invoices"),
    ("sales", "orders"),
    ("salt", "grains"),
    ("tmp_2024", "scratch"),
    ("Sales", "Ledger"),
]


def selected(**opts: Any) -> list[str]:
    logical = Logical(**opts)
    return [f"{s}.{t}" for s, t in TABLES if _selected(s, t, logical)]


def test_no_patterns_select_everything() -> None:
    assert selected() == [f"{s}.{t}" for s, t in TABLES]


def test_schema_include() -> None:
    assert selected(schemas=["sales"]) == ["sales.invoices", "sales.orders"]


def test_schema_wildcards() -> None:
    assert selected(schemas=["sal*"]) == ["sales.invoices", "sales.orders", "salt.grains"]
    assert selected(schemas=["sal?s"]) == ["sales.invoices", "sales.orders"]


def test_schema_exclude() -> None:
    assert selected(exclude_schemas=["public", "tmp_*"]) == [
        "sales.invoices",
        "sales.orders",
        "salt.grains",
        "Sales.Ledger",
    ]


def test_schema_include_and_exclude() -> None:
    assert selected(schemas=["sal*"], exclude_schemas=["salt"]) == ["sales.invoices", "sales.orders"]


def test_unquoted_patterns_are_case_folded() -> None:
    assert selected(schemas=["SALES"]) == ["sales.invoices", "sales.orders"]
    assert selected(tables=["public.ORDERS"]) == ["public.orders"]


def test_quoted_patterns_keep_case_and_are_literal() -> None:
    assert selected(schemas=['"Sales"']) == ["Sales.Ledger"]
    assert selected(schemas=['"sal*"']) == []


def test_qualified_table_patterns() -> None:
    assert selected(tables=["public.orders"]) == ["public.orders"]
    assert selected(tables=["public.order*"]) == ["public.orders", "public.order_items"]
    assert selected(tables=["*.orders"]) == ["public.orders", "sales.orders"]


def test_table_wildcards() -> None:
    assert selected(tables=["public.*_log", "sales.inv?ices"]) == ["public.audit_log", "sales.invoices"]


def test_table_exclude() -> None:
    assert selected(exclude_tables=["public.tmp_*", "public.audit_log"]) == [
        f"{s}.{t}" for s, t in TABLES if (s, t) not in {("public", "tmp_import"), ("public", "audit_log")}
    ]


def test_table_include_and_exclude() -> None:
    assert selected(tables=["public.*"], exclude_tables=["public.tmp_*", "public.order_items"]) == [
        "public.orders",
        "public.audit_log",
        "public.Orders",
    ]


def test_schema_and_table_exclusion_combine() -> None:
    assert selected(exclude_schemas=["public"], exclude_tables=["sales.orders"]) == [
        "sales.invoices",
        "salt.grains",
        "tmp_2024.scratch",
        "Sales.Ledger",
    ]


# pg_dump's own behaviour, checked against pg_dump 15 on a database with public.orders and sales.orders:
#   pg_dump -t orders                   -> dumps public.orders only (unqualified -t matches tables visible on the
#                                          default search_path: pg_dump runs "RESET search_path" and filters with
#                                          pg_table_is_visible)
#   pg_dump -n sales -t public.orders   -> dumps public.orders ("-n and -N have no effect when -t is used")
#   pg_dump -N public -t public.orders  -> dumps public.orders
# Row counts are taken with _selected; when they disagree with what pg_dump wrote, a full restore compares counts
# for tables that are not in the archive (spurious "restored row counts differ" and a dropped restore) or never
# checks tables that are.


@pytest.mark.parametrize("opts", [{"schemas": ["sales"]}, {"exclude_schemas": ["public"]}])
def test_schema_switches_do_not_filter_explicit_tables(opts: dict[str, list[str]]) -> None:
    assert selected(tables=["public.orders"], **opts) == ["public.orders"]


def test_unqualified_table_pattern_means_the_visible_table() -> None:
    assert selected(tables=["orders"]) == ["public.orders"]


@pytest.mark.parametrize(
    ("pattern", "expected"), [('"Sales"."Ledger"', ["Sales.Ledger"]), ('public."Orders"', ["public.Orders"])]
)
def test_quoted_name_parts(pattern: str, expected: list[str]) -> None:
    assert selected(tables=[pattern]) == expected
