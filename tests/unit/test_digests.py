"""The manifest's part digests: a layout that does not tile the object, or disagrees with its digest, is refused."""

from __future__ import annotations

import hashlib

import pytest

from chalicelib.errors import IntegrityError
from chalicelib.logical.catalog import ManifestObject, PartDigest
from chalicelib.logical.digests import check_part_layout, composite_sha256

DATA = [b"a" * 10, b"b" * 10, b"c" * 3]


def _parts(chunks: list[bytes]) -> list[PartDigest]:
    parts, offset = [], 0
    for number, chunk in enumerate(chunks, start=1):
        parts.append(
            PartDigest(number=number, offset=offset, size=len(chunk), sha256=hashlib.sha256(chunk).hexdigest())
        )
        offset += len(chunk)
    return parts


def _object(parts: list[PartDigest], size: int = 23, digest: str | None = None) -> ManifestObject:
    digest = digest or composite_sha256([p.sha256 for p in parts])
    return ManifestObject(role="dump", key="k", size=size, sha256=digest, parts=parts)


def test_composite_is_sha256_over_binary_part_digests() -> None:
    expected = hashlib.sha256(b"".join(hashlib.sha256(c).digest() for c in DATA)).hexdigest()
    assert composite_sha256([hashlib.sha256(c).hexdigest() for c in DATA]) == expected


def test_a_whole_layout_is_returned() -> None:
    parts = _parts(DATA)
    assert check_part_layout(_object(parts)) == parts


def test_an_object_without_parts_has_no_layout() -> None:
    assert check_part_layout(ManifestObject(role="dump", key="k", size=3, sha256="00")) == []


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda ps: ps[:2], "cover 20 bytes"),  # the last part dropped
        (lambda ps: [ps[1], ps[0], ps[2]], "does not follow"),  # reordered
        (lambda ps: [ps[0], ps[1].model_copy(update={"offset": 11}), ps[2]], "does not follow"),  # a hole
    ],
)
def test_a_broken_layout_is_refused(change, message: str) -> None:  # type: ignore[no-untyped-def]
    parts = change(_parts(DATA))
    with pytest.raises(IntegrityError, match=message):
        check_part_layout(_object(parts))


def test_parts_that_disagree_with_the_recorded_digest_are_refused() -> None:
    with pytest.raises(IntegrityError, match="do not add up"):
        check_part_layout(_object(_parts(DATA), digest="0" * 64))
