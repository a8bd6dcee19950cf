"""The databases a restore creates, comments, renames and drops: from a maintenance session, never inside a database
being renamed or dropped; a replaced database is kept under a new name, never dropped."""

from __future__ import annotations

from typing import Any

from chalicelib.adapters.postgres import Login, connect, database_exists
from chalicelib.errors import ConflictError, RestoreError

MAX_IDENTIFIER = 63


def create_database(login: Login, name: str) -> None:
    from psycopg import sql

    if database_exists(login, name):
        raise ConflictError(
            f"database {name!r} already exists on {login.host}: restore into a new name"
            " (replacing a database needs clean=true and confirm=<name>)"
        )
    with connect(login) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name)))


def drop_database(login: Login, name: str) -> None:
    from psycopg import sql

    with connect(maintenance_login(login, name)) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def maintenance_login(login: Login, *avoid: str) -> Login:
    """A session for CREATE/DROP/RENAME DATABASE that is not inside a database being renamed or dropped
    (a session cannot rename the database it is connected to, and terminating its users would end it)."""
    if login.database not in avoid:
        return login
    return login.with_database("postgres" if "postgres" not in avoid else "template1")


def marker(state: str, restore_id: str, backup_id: str) -> str:
    return f"pg-lifeboat {state} {restore_id} from {backup_id}"


def database_comment(login: Login, name: str) -> str | None:
    """None when the database does not exist, else its comment ('' without one)."""
    with connect(login) as conn:
        row = conn.execute(
            "SELECT coalesce(shobj_description(oid, 'pg_database'), '') FROM pg_database WHERE datname = %s", (name,)
        ).fetchone()
    return None if row is None else str(row[0])


def set_comment(login: Login, name: str, text: str) -> None:
    from psycopg import sql

    with connect(login) as conn:
        conn.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(sql.Identifier(name), sql.Literal(text)))


def rename_database(conn: Any, old: str, new: str) -> None:
    from psycopg import sql

    conn.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(sql.Identifier(old), sql.Identifier(new)))


class SwapError(RestoreError):
    """The verified copy could not be put in place; `original_in_place` says whether the name was restored."""

    def __init__(self, message: str, original_in_place: bool) -> None:
        super().__init__(message)
        self.original_in_place = original_in_place


def swap(login: Login, database: str, work: str, stamp: str) -> str:
    """Put the verified copy in place of `database`; the old one is kept under a new name, not dropped.

    Runs from a maintenance session (never inside either database). If the second rename fails, the
    original is renamed back, so the name always points at a complete database.
    """
    import psycopg

    kept = f"{database[:40]}_replaced_{stamp}"[:MAX_IDENTIFIER]
    with connect(maintenance_login(login, database, work)) as conn:
        try:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                (database,),
            )
            rename_database(conn, database, kept)
        except psycopg.Error as exc:
            raise SwapError(
                f"cannot set database {database!r} aside ({str(exc).strip()}): the restoring user"
                f" {login.user} must own it (or have CREATEDB and be a member of its owner);"
                " it is unchanged",
                original_in_place=True,
            ) from None
        try:
            rename_database(conn, work, database)
        except psycopg.Error as exc:
            cause = str(exc).strip()
            try:
                rename_database(conn, kept, database)
            except psycopg.Error as back:
                raise SwapError(
                    f"the verified copy could not be renamed to {database!r} ({cause}) and the"
                    f" original could not be renamed back ({str(back).strip()}): the original is"
                    f" {kept!r} and the verified copy {work!r}; rename one of them to {database!r}",
                    original_in_place=False,
                ) from None
            raise SwapError(
                f"the verified copy could not be renamed to {database!r} ({cause}); the original"
                " database was put back under its name, unchanged",
                original_in_place=True,
            ) from None
    return kept


def create_schemas(login: Login, database: str, schemas: list[str]) -> None:
    """pg_restore -n restores the schema's objects but not the schema itself: create it first."""
    from psycopg import sql

    if schemas:
        with connect(login.with_database(database)) as conn:
            for schema in schemas:
                conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
