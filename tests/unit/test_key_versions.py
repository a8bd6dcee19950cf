"""What the version listing says about a key (chalicelib.adapters.versions) and whether a manifest's object is there
(chalicelib.logical.history): pure, without S3."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from chalicelib.adapters.versions import KeyHistory, from_pages
from chalicelib.logical.history import TargetListing

T0 = datetime(2026, 11, 1, tzinfo=UTC)


def item(key: str, version: str, minutes: int, latest: bool = False) -> dict[str, Any]:
    return {"Key": key, "VersionId": version, "LastModified": T0 + timedelta(minutes=minutes), "IsLatest": latest}


def test_the_first_version_is_the_oldest_whatever_came_later() -> None:
    # S3 lists a key's versions newest first; two within one second keep that order.
    page = {
        "Versions": [item("m", "forged", 5), item("m", "second", 0), item("m", "original", 0), item("o", "x", 1, True)],
        "DeleteMarkers": [item("m", "marker", 9, latest=True)],
    }
    listing = TargetListing.of(from_pages([page]))
    history = listing.history("m")
    assert history.first is not None and history.first.version_id == "original"
    assert history.hidden and history.current is None
    assert [v.version_id for v in history.later] == ["second", "forged", "marker"]
    assert listing.present("m", "original") and not listing.present("m", "marker")
    assert not listing.present("m", None), "a manifest that recorded no version needs a current object"
    assert listing.present("o", None) and listing.present("o", "null")
    assert [v.key for v in from_pages([page], exact_key="o")] == ["o"]


def test_a_key_with_only_a_delete_marker_has_no_first_version() -> None:
    history = KeyHistory(tuple(from_pages([{"DeleteMarkers": [item("m", "marker", 0, latest=True)]}])))
    assert history.first is None and history.later == [] and history.hidden
    assert not TargetListing.of([]).present("m", "v1")
