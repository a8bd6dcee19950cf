"""When a custom-format restore streams into one pg_restore and when it downloads for `pg_restore -j`
(chalicelib.logical.download.restore_strategy), and how an object is cut into verified pieces (plan_pieces). Pure."""

from __future__ import annotations

import hashlib

import pytest

from chalicelib.errors import IntegrityError
from chalicelib.logical.catalog import ManifestObject, PartDigest
from chalicelib.logical.digests import composite_sha256
from chalicelib.logical.download import PARALLEL_MIN_BYTES, Piece, plan_pieces, restore_strategy

MiB = 1024 * 1024


@pytest.mark.parametrize(
    ("size", "jobs", "cores", "expected"),
    [
        (500 * MiB, 1, 8, ("stream", 1)),  # one job always streams: no waiting for a download
        (500 * MiB, 0, 8, ("stream", 1)),
        (500 * MiB, 2, 2, ("stream", 1)),  # as many jobs as cores: measured, -j does not pay
        (500 * MiB, 4, 2, ("stream", 1)),
        (500 * MiB, 4, 1, ("stream", 1)),
        (PARALLEL_MIN_BYTES - 1, 4, 8, ("stream", 1)),  # too small to win back the download
        (PARALLEL_MIN_BYTES, 2, 4, ("download", 2)),
        (5 * 1024 * MiB, 4, 8, ("download", 4)),
    ],
)
def test_restore_strategy(size: int, jobs: int, cores: int, expected: tuple[str, int]) -> None:
    assert restore_strategy(size, jobs, cores) == expected


def _object(data: bytes, part: int) -> ManifestObject:
    parts = [
        PartDigest(
            number=i + 1, offset=o, size=len(data[o : o + part]), sha256=hashlib.sha256(data[o : o + part]).hexdigest()
        )
        for i, o in enumerate(range(0, len(data), part))
    ]
    return ManifestObject(
        role="dump", key="k", size=len(data), sha256=composite_sha256([p.sha256 for p in parts]), parts=parts
    )


def test_recorded_parts_are_the_pieces_each_verified_against_its_digest() -> None:
    obj = _object(bytes(range(256)) * 40, 4096)  # 10,240 bytes: parts of 4,096, 4,096, 2,048
    pieces = plan_pieces(obj, file=3, range_size=1000)
    assert [(p.file, p.offset, p.size) for p in pieces] == [(3, 0, 4096), (3, 4096, 4096), (3, 8192, 2048)]
    assert [p.part for p in pieces] == obj.parts


def test_an_object_without_parts_is_cut_into_ranges_checked_whole_later() -> None:
    obj = ManifestObject(role="dump", key="k", size=2500, sha256="0" * 64)
    assert plan_pieces(obj, 0, range_size=1000) == [
        Piece(0, 0, 1000, None),
        Piece(0, 1000, 1000, None),
        Piece(0, 2000, 500, None),
    ]
    assert plan_pieces(ManifestObject(role="dump", key="k", size=0, sha256="0" * 64), 0) == []


def test_parts_that_do_not_tile_the_object_are_refused_before_any_read() -> None:
    obj = _object(b"x" * 10_000, 4096)
    gap = obj.model_copy(update={"parts": [obj.parts[0], obj.parts[2]]})
    with pytest.raises(IntegrityError, match="does not follow"):
        plan_pieces(gap, 0)
