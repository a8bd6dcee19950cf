"""An archive's table of contents, read by pg_restore itself (`pg_restore --list`), for selective restores.

A streamed custom-format archive carries no data offsets, so its head (as much as `pg_restore --list`
reads) lists like the whole; a downloaded archive or a directory is listed where it lies.
"""

from __future__ import annotations

import contextlib
import subprocess
from pathlib import Path

from chalicelib.adapters.pgtools import ChildProcess, PgTool, minimal_env
from chalicelib.adapters.s3 import BackupStore
from chalicelib.errors import BadRequestError, RestoreError
from chalicelib.logical.selection import Selection, entry_ids, restore_list

CHUNK = 1024 * 1024
MAX_TOC_HEAD = 256 * 1024 * 1024  # far beyond the table of contents of 100,000 tables


def listing(tool: PgTool, archive: Path, filters: list[str]) -> str:
    """`pg_restore --list` of an archive, restricted by -n/-t filters (pg_restore matches the names)."""
    child = ChildProcess(tool, ["--list", *filters, str(archive)], minimal_env({}))
    with child:
        out = child.stdout.read()
        child.check()
    return out.decode("utf-8", "replace")


def archive_head(store: BackupStore, key: str, tool: PgTool, path: Path, version_id: str | None = None) -> None:
    """The head of a streamed custom-format archive (the version `version_id`: the manifest's), as much as
    `pg_restore --list` reads of it: the table of contents, without the data. Streamed archives carry no data
    offsets, so the head lists like the whole."""
    body, _ = store.open_stream(key, version_id)
    child = ChildProcess(tool, ["--list"], minimal_env({}), stdin=subprocess.PIPE, capture_stdout=False)
    written = 0
    with child, body, path.open("wb") as head:
        try:
            while child.poll() is None and (chunk := body.read(CHUNK)):
                head.write(chunk)
                written += len(chunk)
                if written > MAX_TOC_HEAD:
                    raise RestoreError(
                        f"{key}: the table of contents is not within the first {MAX_TOC_HEAD}"
                        " bytes; restore the whole backup, or select on a worker with jobs > 1"
                    )
                child.stdin_pipe.write(chunk)
        except BrokenPipeError:
            pass  # pg_restore has read the table of contents and exited
        finally:
            with contextlib.suppress(BrokenPipeError):
                child.stdin_pipe.close()
        child.check()


def resolve_selection(
    store: BackupStore,
    key: str,
    local: Path | None,
    tool: PgTool,
    selection: Selection,
    schemas: list[str],
    tmp: Path,
    version_id: str | None = None,
) -> tuple[Path, list[str]]:
    """The `-L` list of a selective restore, and the schemas to create first (those the archive has no
    CREATE SCHEMA for); a name that matches nothing is refused before anything exists."""
    archive = local
    if archive is None:
        archive = tmp / "toc-head.dump"
        archive_head(store, key, tool, archive, version_id)
    chosen: set[str] = set()
    empty = []
    for what, filters in selection.filters():
        ids = entry_ids(listing(tool, archive, filters))
        if not ids:
            empty.append(what)
        chosen.update(ids)
    if empty:
        raise BadRequestError(
            f"the backup has no {', '.join(empty)}: names are exact and case-sensitive"
            " (tables as table or schema.table)"
        )
    text, in_archive = restore_list(listing(tool, archive, []), chosen, schemas)
    path = tmp / "restore.list"
    path.write_text(text)
    return path, [s for s in schemas if s not in in_archive]
