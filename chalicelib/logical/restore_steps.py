"""The steps of a logical restore before pg_restore runs, each in as few round trips as it can be, none skipped.

What a small restore spends outside pg_restore is these steps' round trips (measured: see restore_logical), so: the
manifest's reads and its one VerifyMac run on a thread while the maintenance session opens and looks for the target
database; a streamed archive's GET is opened before anything is created and its Content-Length is the size check (no
HEAD of the same version first); the server's major comes from the session's connection parameters; CREATE DATABASE is
one statement (a name taken since the look-up fails it the same way). Every refusal still comes before the database
is created.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import BinaryIO

from chalicelib.adapters.postgres import Login, connect
from chalicelib.adapters.s3 import BackupStore
from chalicelib.errors import ConflictError, IntegrityError
from chalicelib.logical.catalog import BackupId, Catalog, Manifest, ManifestObject
from chalicelib.logical.databases import database_comment


def resized(part: ManifestObject, size: int | None) -> IntegrityError:
    return IntegrityError(
        f"{part.key} is {'missing' if size is None else size} bytes but the manifest says"
        f" {part.size}: the object was changed or truncated; refusing to restore it"
    )


def check_objects(store: BackupStore, parts: list[ManifestObject]) -> None:
    """Each object's recorded version is there with its recorded size (downloads: before anything is created)."""
    for part in parts:
        head = store.head(part.key, version_id=part.version_id)
        if head is None or head.size != part.size:
            raise resized(part, head.size if head else None)


@contextmanager
def opened_checked(store: BackupStore, part: ManifestObject) -> Iterator[BinaryIO]:
    """The GET of the object's recorded version, opened before anything is created: its Content-Length is the size
    check a HEAD made before (one request instead of two); the body is closed when the block ends."""
    body, size = store.open_stream(part.key, part.version_id)
    with body:
        if size != part.size:
            raise resized(part, size)
        yield body


def believed_manifest(catalog: Catalog, bid: BackupId) -> Manifest:
    manifest = catalog.manifest(bid)  # complete: every object it lists is there (one listing of the backup's folder)
    catalog.check_signature(manifest)  # one VerifyMac for the manifest, whose digests vouch for every object
    return manifest


def manifest_and_comment(catalog: Catalog, bid: BackupId, login: Login, database: str) -> tuple[Manifest, str | None]:
    """The believed manifest and `database`'s comment (None: it does not exist), looked up side by side: the
    manifest's S3 and KMS round trips on a thread while this one opens the maintenance session (held_session is per
    thread) and reads the comment, which changes nothing. The manifest's refusal wins when both fail."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="lifeboat-manifest") as pool:
        reading = pool.submit(believed_manifest, catalog, bid)
        try:
            existing = database_comment(login, database)
        finally:
            manifest = reading.result()
    return manifest, existing


def server_major_of(login: Login) -> int:
    """The server's major from the maintenance session's connection (libpq reports it: no round trip)."""
    with connect(login) as conn:
        return int(conn.info.server_version) // 10000


def create_database(login: Login, name: str) -> None:
    """CREATE DATABASE, one statement: the name was found free a moment ago (database_comment), and a database
    created since makes CREATE fail, which is the same refusal."""
    import psycopg
    from psycopg import sql

    try:
        with connect(login) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name)))
    except psycopg.errors.DuplicateDatabase:
        raise ConflictError(
            f"database {name!r} already exists on {login.host}: restore into a new name"
            " (replacing a database needs clean=true and confirm=<name>)"
        ) from None
