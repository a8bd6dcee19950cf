"""storage.PartPlan: part sizes that grow so an upload of unknown length still fits S3's limits."""

from __future__ import annotations

import pytest

from chalicelib.adapters.s3 import S3_MAX_OBJECT, S3_MAX_PART, S3_MAX_PARTS, S3_MIN_PART, GiB, MiB, PartPlan

TiB = 1024 * GiB
FIXED = 10**9  # parts_per_step beyond any part number: a plan that never grows


def test_s3_limits() -> None:
    limits = {"min part": S3_MIN_PART, "max part": S3_MAX_PART, "parts": S3_MAX_PARTS, "object": S3_MAX_OBJECT}
    assert limits == {"min part": 5 * MiB, "max part": 5 * GiB, "parts": 10_000, "object": 5 * TiB}


def test_default_plan_doubles_every_thousand_parts() -> None:
    plan = PartPlan()
    assert {plan.size(n) for n in range(1, 1001)} == {8 * MiB}
    assert plan.size(1001) == 16 * MiB
    assert plan.size(2000) == 16 * MiB
    assert plan.size(2001) == 32 * MiB
    assert plan.size(10_000) == 4 * GiB


def test_default_capacity_reaches_s3_object_limit() -> None:
    capacity = PartPlan().capacity()
    assert capacity == 1000 * 8 * MiB * (2**10 - 1)
    assert capacity >= S3_MAX_OBJECT


def test_fixed_8_mib_plan_caps_near_78_gib() -> None:
    plan = PartPlan(parts_per_step=FIXED)
    assert plan.capacity() == 10_000 * 8 * MiB
    assert 78 * GiB < plan.capacity() < 79 * GiB
    assert plan.size(10_000) == 8 * MiB


@pytest.mark.parametrize(
    "plan",
    [
        PartPlan(),
        PartPlan(parts_per_step=FIXED),
        PartPlan(base=5 * MiB),
        PartPlan(base=512 * MiB),
        PartPlan(parts_per_step=3000),
        PartPlan(parts_per_step=1),
        PartPlan(base=64 * MiB, parts_per_step=7),
    ],
)
def test_sizes_stay_within_s3_part_limits(plan: PartPlan) -> None:
    sizes = [plan.size(n) for n in range(1, S3_MAX_PARTS + 1)]
    assert max(sizes) <= S3_MAX_PART
    # Every part but the last of a stream is a full planned part, so only planned sizes need the minimum.
    assert min(sizes) >= S3_MIN_PART
    assert sizes == sorted(sizes)


@pytest.mark.parametrize(
    "plan",
    [
        PartPlan(),
        PartPlan(parts_per_step=FIXED),
        PartPlan(base=5 * MiB),
        PartPlan(base=512 * MiB),
        PartPlan(parts_per_step=3000),
        PartPlan(parts_per_step=1),
        PartPlan(base=64 * MiB, parts_per_step=7),
    ],
)
def test_capacity_is_the_sum_of_all_parts(plan: PartPlan) -> None:
    assert sum(plan.size(n) for n in range(1, S3_MAX_PARTS + 1)) == plan.capacity()


def test_huge_base_is_capped_at_5_gib() -> None:
    plan = PartPlan(base=512 * MiB, parts_per_step=1)
    assert [plan.size(n) for n in range(1, 6)] == [512 * MiB, 1 * GiB, 2 * GiB, 4 * GiB, 5 * GiB]
    assert plan.size(10_000) == 5 * GiB


def test_every_allowed_part_size_reaches_the_object_limit() -> None:
    from pydantic import ValidationError

    from chalicelib.config import Settings

    def allowed(mib: int) -> bool:
        try:
            Settings(bucket="acme-pg-backups", part_size_mib=mib)
        except ValidationError:
            return False
        return True

    sizes = [mib for mib in range(1, 1025) if allowed(mib)]
    assert sizes  # the setting exists and accepts something
    assert [mib for mib in sizes if PartPlan(base=mib * MiB).capacity() < S3_MAX_OBJECT] == []
