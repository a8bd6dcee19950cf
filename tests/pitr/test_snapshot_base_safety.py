"""What `lifeboat recover --snapshot-set` must never do, pure (no AWS, no server): follow a restored pg_wal symlink
out of DIR (on the source's own host it names the live server's WAL), write through a symlink, let recovery replay
into a tablespace path inside another data directory or a running server's; and believe a label that does not
belong to its set (its LABEL line names another backup, or backup mode ended before AWS created the snapshots).
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest

from chalicelib.errors import ConflictError, IntegrityError
from chalicelib.physical.model import SnapshotResource, SnapshotSet
from chalicelib.physical.names import COPY_OF_TAG, LABEL_TAG
from chalicelib.pitr.restored_dir import prepare, read_facts, refusal, unsafe_tablespace
from chalicelib.pitr.snapshotbase import UNSIGNED_LABEL, believed_label, parse_label
from tests.pitr.test_snapshot_base_pure import LABEL, LABELFILE, SET_ID, SLOT, STOPPED, control, document

URI = "s3://bucket/snapshots/vm/20261129T030000Z/backup_label.json"


def restored(tmp_path: Path) -> Path:
    pgdata = tmp_path / "data"
    (pgdata / "global").mkdir(parents=True)
    (pgdata / "global" / "pg_control").write_bytes(control())
    (pgdata / "PG_VERSION").write_text("16\n")
    return pgdata


def live_wal(tmp_path: Path) -> Path:
    """A live server's WAL directory with a segment not archived yet."""
    wal = tmp_path / "live" / "pg_wal"
    (wal / "archive_status").mkdir(parents=True)
    (wal / "000000010000000000000042").write_bytes(b"x" * 100)
    (wal / "archive_status" / "000000010000000000000042.ready").write_text("")
    return wal


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_a_pg_wal_symlink_is_replaced_never_followed(tmp_path: Path) -> None:
    pgdata, wal = restored(tmp_path), live_wal(tmp_path)
    before = files_under(wal)
    (pgdata / "pg_wal").symlink_to(wal)
    (pgdata / "pg_replslot").symlink_to(tmp_path / "elsewhere")  # dangling: replaced too
    assert refusal(read_facts(pgdata, LABEL), LABEL) == ""
    done = prepare(pgdata, LABEL)
    assert files_under(wal) == before  # the live server's WAL is untouched
    assert not (pgdata / "pg_wal").is_symlink() and files_under(pgdata / "pg_wal") == ["archive_status"]
    assert any(line.startswith(f"pg_wal was a symlink to {wal}") and "without following it" in line for line in done)
    assert not (pgdata / "pg_replslot").is_symlink() and (pgdata / "pg_replslot").is_dir()


def test_links_inside_pg_wal_and_pg_replslot_are_removed_not_followed(tmp_path: Path) -> None:
    pgdata, wal = restored(tmp_path), live_wal(tmp_path)
    before = files_under(wal)
    (pgdata / "pg_wal").mkdir()
    (pgdata / "pg_wal" / "archive_status").symlink_to(wal / "archive_status")
    (pgdata / "pg_wal" / "000000010000000000000042").symlink_to(wal / "000000010000000000000042")
    (pgdata / "pg_replslot").mkdir()
    (pgdata / "pg_replslot" / "slot").symlink_to(wal)
    prepare(pgdata, LABEL)
    assert files_under(wal) == before
    assert (
        files_under(pgdata / "pg_wal") == ["archive_status"] and not (pgdata / "pg_wal" / "archive_status").is_symlink()
    )
    assert list((pgdata / "pg_replslot").iterdir()) == []


def test_a_file_recover_writes_is_never_written_through_a_symlink(tmp_path: Path) -> None:
    pgdata = restored(tmp_path)
    elsewhere = tmp_path / "elsewhere.conf"
    elsewhere.write_text("precious\n")
    (pgdata / "postgresql.auto.conf").symlink_to(elsewhere)
    message = refusal(read_facts(pgdata, LABEL), LABEL)
    assert "postgresql.auto.conf is a symlink: recover writes it and never through a link" in message, message
    (pgdata / "postgresql.auto.conf").unlink()
    (pgdata / "backup_label").symlink_to(tmp_path / "nowhere")  # dangling: still a marker, refused
    assert "backup_label is a symlink" in refusal(read_facts(pgdata, LABEL), LABEL)
    (pgdata / "backup_label").unlink()
    (pgdata / "tablespace_map").symlink_to(elsewhere)  # should the check be skipped, the write itself refuses
    with pytest.raises(ConflictError, match="a symlink there is never followed"):
        prepare(pgdata, replace(LABEL, spcmapfile="16384 /mnt/ts\n"))
    assert elsewhere.read_text() == "precious\n"


def test_a_tablespace_inside_another_data_directory_is_refused(tmp_path: Path) -> None:
    pgdata = restored(tmp_path)
    other = tmp_path / "other"
    (other / "base" / "ts").mkdir(parents=True)
    (other / "PG_VERSION").write_text("16\n")
    (tmp_path / "link").symlink_to(other / "base" / "ts")  # judged where it leads
    label = replace(LABEL, spcmapfile=f"16384 {tmp_path / 'link'}\n")
    message = refusal(read_facts(pgdata, label), label)
    assert f"{other / 'base' / 'ts'} lies in the data directory {other}" in message, message
    assert "recovery would write into another server's files" in message
    before = files_under(pgdata)
    own = tmp_path / "ts"  # the set's own tablespace volume: fine
    own.mkdir()
    label = replace(LABEL, spcmapfile=f"16384 {own}\n")
    assert refusal(read_facts(pgdata, label), label) == "" and files_under(pgdata) == before


def test_a_running_server_s_directory_or_tablespace_is_refused(tmp_path: Path) -> None:
    pgdata = tmp_path / "data"
    live, ts = tmp_path / "srv" / "live", tmp_path / "srv" / "ts"
    assert "running server's directory" in unsafe_tablespace(tmp_path / "srv", pgdata, [live])
    assert "running server's directory" in unsafe_tablespace(ts, pgdata, [live, ts])
    assert unsafe_tablespace(tmp_path / "mine", pgdata, [live, ts]) == ""


def test_running_servers_are_found_by_their_working_directory(tmp_path: Path) -> None:
    pgdata = restored(tmp_path)
    live = tmp_path / "live"
    (live / "pg_tblspc").mkdir(parents=True)
    (live / "PG_VERSION").write_text("16\n")
    (live / "postmaster.pid").write_text("1\n")
    shared = tmp_path / "shared_ts"
    shared.mkdir()
    (live / "pg_tblspc" / "16384").symlink_to(shared)
    # a process whose working directory is `live` stands for its postmaster
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"], cwd=live)
    try:
        label = replace(LABEL, spcmapfile=f"16384 {shared}\n")
        message = refusal(read_facts(pgdata, label), label)
        assert f"{shared} is or holds or lies in {shared}, a running server's directory" in message, message
    finally:
        proc.kill()
        proc.wait()


def snapset(*, created: object = SLOT + timedelta(seconds=20), copy: bool = False) -> SnapshotSet:
    tags = {LABEL_TAG: URI, **({COPY_OF_TAG: "arn:snap-a"} if copy else {})}
    made = tuple(
        SnapshotResource("ebs", sid, "us-east-1", "available", "completed", tags, created=created)  # type: ignore[arg-type]
        for sid in ("snap-a", "snap-b")
    )
    return SnapshotSet("ebs", "vm", SLOT, "us-east-1", made)


def test_a_label_that_matches_its_set_is_believed() -> None:
    label, signature = believed_label(snapset(), document(), URI, None, None)
    assert label == LABEL and signature == UNSIGNED_LABEL


def test_a_label_stopped_before_aws_created_the_snapshots_is_refused() -> None:
    late = snapset(created=STOPPED + timedelta(seconds=1))
    with pytest.raises(IntegrityError, match=r"backup mode ended at .* before AWS created snapshot snap-b"):
        believed_label(late, document(), URI, None, None)
    with pytest.raises(IntegrityError, match="AWS gives no creation time"):
        believed_label(snapset(created=None), document(), URI, None, None)


def test_a_label_whose_label_line_names_another_backup_is_refused() -> None:
    other = LABELFILE.replace("snapshot:vm:20261129T030000Z", "snapshot:vm:20261128T030000Z")
    with pytest.raises(IntegrityError, match="says LABEL 'pg-lifeboat snapshot:vm:20261128T030000Z'"):
        believed_label(snapset(), document(labelfile=other), URI, None, None)
    with pytest.raises(IntegrityError, match="says LABEL nothing"):
        believed_label(snapset(), document(labelfile=LABELFILE.replace("LABEL:", "NOTE:")), URI, None, None)


def test_a_copy_a_mismatched_slot_and_another_label_key_are_refused() -> None:
    with pytest.raises(IntegrityError, match=r"is available \(a copy: AWS's creation time of a copy"):
        believed_label(snapset(copy=True), document(), URI, None, None)
    with pytest.raises(IntegrityError, match="disagrees with the creation time"):
        believed_label(snapset(created=SLOT + timedelta(days=2)), document(), URI, None, None)
    with pytest.raises(IntegrityError, match="has no backup label tag naming s3://bucket/other"):
        believed_label(snapset(), document(), "s3://bucket/other", None, None)
    assert parse_label(document(), SET_ID).stopped_at == STOPPED
