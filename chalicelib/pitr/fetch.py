"""`lifeboat wal-fetch NAME PATH`: PostgreSQL's restore_command. Its exit code is what recovery acts on.

PostgreSQL asks restore_command for files that may not exist (the next segment past the end of the archive, the
history file of a timeline nobody created) and treats a plain non-zero exit as "not in the archive": recovery then
ends there and, with recovery_target_action=promote, the server opens. A damaged segment reported that way would
end recovery silently early. PostgreSQL aborts recovery (FATAL, the server does not start) when the command exits
with a status above 125 (what a shell reports for "command not found" or a signal). So:

    0    fetched, verified (SHA-256 of the segment, zstd frame checksum), written to PATH
    1    not in the archive: the end of the WAL
    255  damaged, or S3 could not be asked: recovery must stop, not end early (the message goes to the server log)
"""

from __future__ import annotations

import os
from pathlib import Path

from chalicelib.errors import LifeboatError
from chalicelib.observability import logger
from chalicelib.pitr.walarchive import WalArchive

FETCHED = 0
MISSING = 1
FATAL = 255  # > 125: PostgreSQL aborts recovery instead of treating it as the end of the archive


def wal_fetch(archive: WalArchive, name: str, path: Path) -> tuple[int, str]:
    """(exit code, message) for PostgreSQL's request of `name` into `path` (see the module's docstring)."""
    try:
        found = archive.fetch(name)
    except LifeboatError as exc:
        return FATAL, f"wal-fetch {name}: {exc}; recovery is stopped rather than ended early"
    if found is None:
        return MISSING, f"wal-fetch {name}: not in the archive"
    data, key = found
    tmp = path.with_name(path.name + ".lifeboat-tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        return FATAL, f"wal-fetch {name}: cannot write {path}: {exc.strerror}"
    logger.info("wal-fetch", extra={"wal_file": name, "key": key, "bytes": len(data)})
    return FETCHED, f"wal-fetch {name}: {len(data)} bytes from {key}"
