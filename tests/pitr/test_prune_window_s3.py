"""`lifeboat wal-prune` with the default `wal.pitr_days` (7) over test_wal_prune's two weeks of bases in moto (fixed
clock): the WAL between an older kept base's end and the window goes, that base keeps its own segments and is
listed as a restore point (by wal-prune and by wal-window), a locked segment in between stays, the window's WAL is
whole."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

from chalicelib.adapters.s3 import S3Store
from chalicelib.cli import main as lifeboat_main
from chalicelib.pitr import commands
from devstack.local import target, write_config
from tests.pitr.test_wal_prune import BUCKET, NOW, POLICY, Clock, build, seg, segments, store

__all__ = ["store"]  # the fixture


def _run(config: Path, *argv: str) -> tuple[int, dict[str, Any]]:
    out = io.StringIO()
    code = lifeboat_main(["--config", str(config), *argv, "shop", "--json"], out)
    return code, json.loads(out.getvalue())


def test_older_kept_bases_keep_only_their_own_wal(
    store: S3Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bases = build(store, Clock(NOW))
    entry = target("shop", 5432, "arn:aws:secretsmanager:us-east-1:123456789012:secret:lifeboat/shop-AbCdEf")
    entry["wal"] = {}
    config = write_config(tmp_path / "c.json", BUCKET, [entry], retention_policies={"default": POLICY})
    monkeypatch.setattr(commands, "now_utc", lambda: NOW)

    code, dry = _run(config, "wal-prune", "--dry-run")
    assert code == 0, dry
    # Kept: 03-18 (locked), 03-22 (weekly), 03-29 .. 03-31. 7 days before NOW is 03-24 12:00: the window opens at
    # 03-22's start (segment 12); 03-18 keeps its own segments 4 and 5 only.
    assert dry["window_base"] == bases[6].backup_id and dry["cutoff"] == seg(12).name
    assert dry["restore_points"] == [bases[2].backup_id]
    store.lock(f"wal/shop/00000001/{seg(8).name}", "GOVERNANCE", NOW.replace(day=30, month=4))
    before = set(segments(store))

    code, report = _run(config, "wal-prune")
    assert code == 0, report
    left = set(segments(store))
    gone = {f"00000001/{seg(n).name}" for n in (0, 2, 3, 6, 7, 9, 10, 11)}
    gone |= {f"00000001/{seg(3).name}.partial", f"00000002/{seg(2, 2).name}", "00000002/00000002.history"}
    assert before - left == gone | {f"gaps/{seg(1).name}-{seg(3).name}.json"}
    assert {f"00000001/{seg(n).name}" for n in (1, 4, 5, 8, *range(12, 32))} <= left  # locked, own, the window
    assert f"wal/shop/00000001/{seg(8).name}" in report["locked"]

    code, window = _run(config, "wal-window")
    assert code == 0, window
    assert [p["base"] for p in window["restore_points"]] == [bases[2].backup_id]
    spans = window["spans"]
    assert [s["base"] for s in spans] == [b.backup_id for b in (bases[6], *bases[13:])]
    assert window["earliest"] == spans[0]["from"] and not window["broken"]
