"""Chains of incremental base backups (PostgreSQL 17+), as pure functions over the bases `read_bases` believed.

An incremental base's manifest.json records `parent` (the base it was taken against) and `chain` (its ancestors, the
full base first). It is restorable only with its whole chain: each ancestor listed (a complete, believed manifest),
linked as recorded, of one target and major. Retention keeps a kept incremental's ancestors (`chain_closure`);
recovery treats an incremental like a base (its own start and end LSN) once its chain is whole (`chain_problem`);
the next base is taken against the newest when `choose_parent` says so.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from chalicelib.errors import ConfigError, RestoreError
from chalicelib.pitr.basebackup import BaseBackup

INCREMENTAL_MAJOR = 17  # pg_basebackup --incremental and pg_combinebackup


def chain_closure(kept_ids: Iterable[str], bases: Iterable[BaseBackup]) -> set[str]:
    """The kept ids and every ancestor a kept incremental needs (its recorded chain, and parent links among
    `bases`), so that no base goes while a base taken against it stays. Ids of absent ancestors are included. Pure."""
    by_id = {b.backup_id: b for b in bases}
    closure: set[str] = set()
    pending = list(kept_ids)
    while pending:
        backup_id = pending.pop()
        if backup_id in closure:
            continue
        closure.add(backup_id)
        base = by_id.get(backup_id)
        if base is not None:
            pending += [*base.chain, *([base.parent] if base.parent else [])]
    return closure


def chain_problem(base: BaseBackup, by_id: Mapping[str, BaseBackup]) -> str | None:
    """Why `base` cannot be restored from the bases listed (None: its chain is whole, or it is a full base). Pure."""
    if base.parent is None:
        return None
    ids = [*base.chain, base.backup_id]
    if not base.chain or base.chain[-1] != base.parent:
        return f"incremental base {base.backup_id} records parent {base.parent} but chain {base.chain}"
    missing = [i for i in ids if i not in by_id]
    if missing:
        return (
            f"incremental base {base.backup_id} needs base {', '.join(missing)} (its chain: {' <- '.join(ids)}),"
            " which is not in the bucket (deleted, or its manifest.json missing or not believed)"
        )
    for index, backup_id in enumerate(ids):
        link = by_id[backup_id]
        expected = (ids[index - 1], ids[:index]) if index else (None, [])
        if (link.parent, link.chain) != expected:
            return f"incremental base {base.backup_id}: base {backup_id} is not linked as its chain {ids} records"
        if link.major != base.major or link.target != base.target:
            return f"incremental base {base.backup_id}: base {backup_id} is of another major or target"
    return None


def restorable(bases: Sequence[BaseBackup]) -> tuple[list[BaseBackup], dict[str, str]]:
    """(the bases recovery may start from: full ones, incrementals with a whole chain; the others: id -> why). Pure."""
    by_id = {b.backup_id: b for b in bases}
    usable, refused = [], {}
    for base in bases:
        problem = chain_problem(base, by_id)
        if problem is None:
            usable.append(base)
        else:
            refused[base.backup_id] = problem
    return usable, refused


def chain_of(base: BaseBackup, bases: Sequence[BaseBackup]) -> list[BaseBackup]:
    """The bases recovery from `base` combines, the full base first and `base` last; RestoreError when a link is
    missing. Pure."""
    by_id = {b.backup_id: b for b in bases}
    problem = chain_problem(base, by_id)
    if problem is not None:
        raise RestoreError(f"{problem}: recover to a time before it, or take a new full base backup")
    return [by_id[i] for i in base.chain] + [base]


def choose_parent(
    bases: Sequence[BaseBackup], full_every: int, server_major: int, gaps: Sequence[Mapping[str, Any]]
) -> tuple[BaseBackup | None, str]:
    """(the base the next one is taken against, None for a full one; why). The newest base, when it is restorable,
    of the server's major, no gap was recorded since it started, and its chain holds fewer than `full_every`
    incrementals. Pure."""
    if not bases:
        return None, "no base backup yet"
    newest = max(bases, key=lambda b: b.started_at)
    by_id = {b.backup_id: b for b in bases}
    if newest.major != server_major:
        return None, f"the newest base {newest.backup_id} is PostgreSQL {newest.major}, the server {server_major}"
    problem = chain_problem(newest, by_id)
    if problem is not None:
        return None, problem
    if len(newest.chain) >= full_every:
        return None, f"base {newest.backup_id} ends a chain of {len(newest.chain)} incremental(s) (wal.full_every)"
    after = [g for g in gaps if datetime.fromisoformat(str(g.get("detected_at"))) > newest.started_at]
    if after:
        return None, f"a WAL gap was recorded after base {newest.backup_id} started"
    return newest, f"incremental against {newest.backup_id}"


def check_incremental_server(target: str, major: int, summarize_wal: str | None = None) -> None:
    """Refuse `wal.incremental` on a server that cannot take incremental bases, saying what to change (`summarize_wal`
    None: not checked). Pure."""
    if major < INCREMENTAL_MAJOR:
        raise ConfigError(
            f"target {target!r}: wal.incremental needs PostgreSQL {INCREMENTAL_MAJOR} or newer (pg_basebackup"
            f" --incremental), the server is PostgreSQL {major}: set wal.incremental to false (full base backups)"
        )
    if summarize_wal is not None and summarize_wal != "on":
        raise ConfigError(
            f"target {target!r}: wal.incremental needs summarize_wal = on on the server (it is {summarize_wal!r}):"
            " run ALTER SYSTEM SET summarize_wal = on; SELECT pg_reload_conf(); (or set it in the parameter group),"
            " or set wal.incremental to false"
        )
