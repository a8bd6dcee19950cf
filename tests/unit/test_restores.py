"""restores: row-count verification and the pg_restore command line."""

from __future__ import annotations

from pathlib import Path

import pytest

from chalicelib.errors import BadRequestError, LifeboatError
from chalicelib.logical.restore import RestoreOptions, pg_restore_args, validate_database_name, verify_counts
from chalicelib.logical.selection import Selection

EXPECTED = {"public.orders": 120, "public.customers": 30, "sales.invoices": 7, "public.empty": 0}


def test_full_restore_matches() -> None:
    actual = {**EXPECTED, "public.created_later": 5}  # extra tables do not matter
    assert verify_counts(EXPECTED, actual, Selection()) == {
        "match": True,
        "tables_checked": 4,
        "rows_checked": 157,
        "mismatches": {},
    }


def test_full_restore_mismatch_and_missing_table() -> None:
    actual = {"public.orders": 119, "public.customers": 30, "public.empty": 0}
    result = verify_counts(EXPECTED, actual, Selection())
    assert result["match"] is False
    assert result["mismatches"] == {
        "public.orders": {"expected": 120, "restored": 119},
        "sales.invoices": {"expected": 7, "restored": None},
    }
    assert (result["tables_checked"], result["rows_checked"]) == (4, 157)


@pytest.mark.parametrize(
    "selection", [Selection.of(["sales"], []), Selection.of([], ["invoices"]), Selection.of([], ["sales.invoices"])]
)
def test_selective_restore_compares_only_what_it_chose(selection: Selection) -> None:
    result = verify_counts(EXPECTED, {"sales.invoices": 7}, selection)
    assert result == {"match": True, "tables_checked": 1, "rows_checked": 7, "mismatches": {}}


def test_selective_restore_mismatch() -> None:
    result = verify_counts(EXPECTED, {"sales.invoices": 6}, Selection.of(["sales"], []))
    assert result["match"] is False
    assert result["mismatches"] == {"sales.invoices": {"expected": 7, "restored": 6}}


def test_selective_restore_that_restored_nothing_does_not_match() -> None:
    result = verify_counts(EXPECTED, {}, Selection.of([], ["public.orders"]))
    assert result["match"] is False
    assert result["mismatches"] == {"public.orders": {"expected": 120, "restored": None}}


def test_a_selected_table_is_compared_even_when_another_schema_has_one_of_that_name() -> None:
    expected = {"public.invoices": 3, "sales.invoices": 7}
    result = verify_counts(expected, {"sales.invoices": 7}, Selection.of([], ["sales.invoices"]))
    assert result == {"match": True, "tables_checked": 1, "rows_checked": 7, "mismatches": {}}


def test_no_counts_recorded() -> None:
    assert verify_counts(None, {"public.orders": 1}, Selection()) == {
        "match": None,
        "reason": "the backup recorded no row counts",
    }


def test_empty_database_matches() -> None:
    assert verify_counts({}, {}, Selection())["match"] is True


def test_pg_restore_args_default() -> None:
    assert pg_restore_args("shop_restored", RestoreOptions()) == [
        "--dbname=dbname='shop_restored'",
        "--exit-on-error",
        "--no-password",
        "--single-transaction",
    ]


def test_pg_restore_args_everything() -> None:
    opts = RestoreOptions(schemas=("sales", "Weird Schema"), tables=("orders", "it's"), no_owner=True, no_acl=True)
    assert pg_restore_args("shop_restored", opts, single_transaction=False, list_file=Path("/tmp/x/restore.list")) == [
        "--dbname=dbname='shop_restored'",
        "--exit-on-error",
        "--no-password",
        "--no-owner",
        "--no-acl",
        "--use-list=/tmp/x/restore.list",
    ]


@pytest.mark.parametrize("name", ["x host=evil.example.com", "postgresql://evil.example.com/x"])
def test_a_database_name_is_never_read_as_a_connection_string(name: str) -> None:
    try:
        validate_database_name(name)
    except LifeboatError:
        return  # refused before it reaches pg_restore: fixed
    assert f"--dbname={name}" not in pg_restore_args(name, RestoreOptions())


@pytest.mark.parametrize("name", ["a", "shop_restored", "x" * 63, "é" * 31])
def test_valid_database_names(name: str) -> None:
    assert validate_database_name(name) == name


@pytest.mark.parametrize("name", ["", "x" * 64, "é" * 32, "bad\x00name"])
def test_invalid_database_names(name: str) -> None:
    with pytest.raises(LifeboatError, match="must be 1-63 bytes"):
        validate_database_name(name)


def test_invalid_database_name_is_a_bad_request() -> None:
    with pytest.raises(BadRequestError):
        validate_database_name("x" * 64)
