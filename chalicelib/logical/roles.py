"""Roles from a backup's globals.sql (`pg_dumpall --globals-only --no-role-passwords`), applied with care.

A restore into a fresh server fails on the first `ALTER ... OWNER TO` or `GRANT` that names a role the
server lacks. `apply_globals` creates the roles the server does not have, with the attributes and
settings the dump gave them, and their memberships; it never alters a role that exists (the bootstrap
superuser included: pg_dumpall writes `CREATE ROLE postgres;`, an error on every server), never
creates tablespaces (their directories belong to the source machine), and reports what it did.
Passwords are not in the dump: created roles cannot log in until an operator sets one.
"""

from __future__ import annotations

import re
from typing import Any

from chalicelib.adapters.postgres import Login, connect

_IDENT = r'(?:"(?:[^"]|"")+"|[A-Za-z_][A-Za-z0-9_$]*)'
_CREATE_ROLE = re.compile(rf"^CREATE ROLE ({_IDENT});$")
_ALTER_ROLE = re.compile(rf"^ALTER ROLE ({_IDENT}) ")
_GRANT_ROLE = re.compile(rf"^GRANT ({_IDENT}) TO ({_IDENT})[ ;]")


def _name(ident: str) -> str:
    return ident[1:-1].replace('""', '"') if ident.startswith('"') else ident.lower()


def statements(sql_text: str) -> list[str]:
    """pg_dumpall --globals-only writes one statement a line; comments, blank lines and SETs are dropped."""
    out = []
    for raw in sql_text.splitlines():
        line = raw.strip()
        if line and not line.startswith(("--", "SET ", "\\")):
            out.append(line)
    return out


def plan(sql_text: str, existing: set[str]) -> tuple[list[tuple[str, str]], list[str]]:
    """(statements to run, each with the role it creates or alters; statements skipped, each with why)."""
    run: list[tuple[str, str]] = []
    skipped: list[str] = []
    created: set[str] = set()
    for stmt in statements(sql_text):
        if m := _CREATE_ROLE.match(stmt):
            role = _name(m.group(1))
            if role in existing:
                skipped.append(f"{stmt} (the role exists: left as it is)")
            else:
                created.add(role)
                run.append((stmt, role))
        elif m := _ALTER_ROLE.match(stmt):
            role = _name(m.group(1))
            if role in created:
                run.append((stmt, role))
            else:
                skipped.append(f"{stmt} (an existing role is never altered)")
        elif m := _GRANT_ROLE.match(stmt):
            granted, member = _name(m.group(1)), _name(m.group(2))
            if granted in created or member in created:
                run.append((stmt, member))
            else:
                skipped.append(f"{stmt} (between existing roles: left as it is)")
        else:
            skipped.append(f"{stmt} (not a role: tablespaces and other globals are not restored)")
    return run, skipped


def apply_globals(login: Login, sql_text: str) -> dict[str, list[str]]:
    """Create the missing roles; each statement in its own savepoint, so one refusal (e.g. SUPERUSER on a
    managed server) is reported and the rest still applies."""
    import psycopg  # heavy: imported only by restores that ask for roles

    conn: Any
    with connect(login) as conn:
        existing = {str(r[0]) for r in conn.execute("SELECT rolname FROM pg_roles").fetchall()}
        todo, skipped = plan(sql_text, existing)
        created: list[str] = []
        failed: list[str] = []
        for stmt, role in todo:
            try:
                with conn.transaction():
                    conn.execute(stmt.encode())
            except psycopg.Error as exc:
                failed.append(f"{stmt} ({str(exc).strip().splitlines()[0]})")
                continue
            if stmt.startswith("CREATE ROLE"):
                created.append(role)
    return {"created": created, "skipped": skipped, "failed": failed}
