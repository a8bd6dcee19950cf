"""Incremental base backups (PostgreSQL 17+, `wal.incremental`): which base the next one is taken against, and the
restore of a chain with pg_combinebackup.

Taking one: `ParentChooser` is the BaseRun's `parent_for`, called as each base backup starts (by hand, scheduled or
after a gap): it checks the server (17 or newer, `summarize_wal = on`; a clear ConfigError otherwise), reads the
bases and gaps as they are then, and picks the newest base as the parent (chains.choose_parent: a full one after
`wal.full_every` incrementals, after a gap, or when the server's WAL summaries no longer reach back to the parent's
start). basebackup.run_base_backup then streams `pg_basebackup --incremental=<parent's backup_manifest>`.

Restoring one (`restore_base`, on the recovering machine): every object of the chain is checked to be in the bucket
first, then each base (full first) is downloaded, checked (SHA-256, pg_verifybackup) and unpacked into a temporary
directory next to DIR, `pg_combinebackup -o DIR` combines them, and pg_verifybackup checks DIR against the manifest
pg_combinebackup wrote. The temporary directories go on success and on failure; on failure DIR is left empty.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import psycopg

from chalicelib.adapters.pgtools import ChildProcess, Toolbox, minimal_env
from chalicelib.adapters.postgres import Login, connect
from chalicelib.adapters.s3 import BackupStore
from chalicelib.errors import ConflictError, IntegrityError, PgToolError, RestoreError
from chalicelib.observability import logger
from chalicelib.pitr import recover
from chalicelib.pitr.basebackup import BaseBackup, BaseLayout, list_bases
from chalicelib.pitr.chains import chain_of, check_incremental_server, choose_parent
from chalicelib.pitr.sealing import Sealer
from chalicelib.pitr.walarchive import WalArchive
from chalicelib.pitr.walnames import WalLayout

_REACH = "SELECT EXISTS (SELECT 1 FROM pg_available_wal_summaries() WHERE tli = %s AND start_lsn <= %s::pg_lsn)"


def summarize_wal(login: Login) -> str:
    """The server's summarize_wal ('on' | 'off'; 'absent' before PostgreSQL 17)."""
    with connect(login) as conn:
        row = conn.execute("SELECT current_setting('summarize_wal', true)").fetchone()
    return str(row[0]) if row and row[0] is not None else "absent"


def summaries_reach(login: Login, parent: BaseBackup) -> bool:
    """Whether the server's WAL summaries reach back to `parent`'s start: pg_basebackup --incremental needs them from
    there on, and the server removes them after wal_summary_keep_time (default 10 days)."""
    with connect(login) as conn:
        try:
            row = conn.execute(_REACH, (parent.timeline, parent.start_lsn)).fetchone()
        except psycopg.errors.InsufficientPrivilege:  # no EXECUTE on the function here: pg_basebackup judges
            return True
    return bool(row and row[0])


@dataclass(frozen=True)
class ParentChooser:
    """A BaseRun's `parent_for` when the target's `wal.incremental` is set (see the module's docstring)."""

    target: str
    store: BackupStore
    prefix: str
    login: Login  # the replication login
    server_major: int
    full_every: int
    sealer: Sealer | None = None

    def __call__(self) -> BaseBackup | None:
        check_incremental_server(self.target, self.server_major, summarize_wal(self.login))
        bases = list_bases(self.store, BaseLayout(self.prefix, self.target), self.sealer)
        gaps = WalArchive(self.store, WalLayout(self.prefix, self.target)).gaps()
        parent, why = choose_parent(bases, self.full_every, self.server_major, gaps)
        if parent is not None and not summaries_reach(self.login, parent):
            why = f"the server's WAL summaries no longer reach base {parent.backup_id}'s start"
            parent = None
        logger.info(
            "incremental base backup" if parent else "full base backup",
            extra={"target": self.target, "parent": parent.backup_id if parent else None, "why": why},
        )
        return parent


def restore_base(
    store: BackupStore, toolbox: Toolbox, bases: Sequence[BaseBackup], base: BaseBackup, pgdata: Path
) -> None:
    """Put `base` into `pgdata` (absent or empty), checked: a full base unpacked, an incremental one combined with
    its chain (`bases`: where its ancestors are found)."""
    if base.parent is None:
        recover.unpack_base(store, base, pgdata)
        recover.verify_files(toolbox, base, pgdata)
        return
    chain = chain_of(base, bases)
    missing = missing_objects(store, chain)
    if missing:
        raise RestoreError(
            f"incremental base {base.backup_id} needs its whole chain, but {'; '.join(missing[:3])}: recover to a"
            " time before it (an older full base), or take a new full base backup"
        )
    combine_chain(store, toolbox, chain, pgdata)


def missing_objects(store: BackupStore, chain: Sequence[BaseBackup]) -> list[str]:
    """The chain's objects not in the bucket at the version their manifest recorded, each as a sentence."""
    missing = []
    for base in chain:
        for stored in base.objects:
            if store.head(stored.key, stored.version_id) is None:
                missing.append(f"base {base.backup_id} lacks s3://{store.bucket}/{stored.key}")
    return missing


def combine_chain(store: BackupStore, toolbox: Toolbox, chain: Sequence[BaseBackup], pgdata: Path) -> None:
    """Unpack and check each base of `chain` next to `pgdata`, pg_combinebackup them into `pgdata`, check it."""
    if pgdata.exists() and any(pgdata.iterdir()):
        raise ConflictError(f"{pgdata} is not empty: recover into a new (or empty) data directory")
    newest = chain[-1]
    tool = toolbox.pick("pg_combinebackup", newest.major, f"combining incremental base {newest.backup_id}")
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{pgdata.name}.lifeboat-chain-", dir=pgdata.parent))
    combined = False
    try:
        parts = []
        for base in chain:
            part = scratch / base.backup_id
            recover.unpack_base(store, base, part)
            recover.verify_files(toolbox, base, part)
            parts.append(str(part))
        pgdata.mkdir(mode=0o700, exist_ok=True)
        with ChildProcess(tool, ["-o", str(pgdata), *parts], minimal_env({}), capture_stdout=False) as child:
            try:
                child.check()
            except PgToolError as exc:
                raise IntegrityError(f"pg_combinebackup could not combine base {newest.backup_id}: {exc}") from None
        (pgdata / "pg_wal").mkdir(exist_ok=True)
        recover.verify_files(toolbox, newest, pgdata)
        combined = True
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        if not combined and pgdata.exists():  # whatever failed (an interrupt too): nothing half-made is left
            _clear(pgdata)
    pgdata.chmod(0o700)


def _clear(folder: Path) -> None:
    """Remove what is inside `folder`, not the folder (it may be a mount point)."""
    for path in folder.iterdir():
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
