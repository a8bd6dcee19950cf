"""Which driver a target uses, and the managed snapshots that exist (listed once per kind and region)."""

from __future__ import annotations

from chalicelib.config import Physical
from chalicelib.physical.driver import Driver
from chalicelib.physical.ebs import EBS
from chalicelib.physical.model import SnapshotKind, SnapshotServices, SnapshotSet, group_sets
from chalicelib.physical.rds import AURORA_CLUSTER, RDS_INSTANCE


def driver_for(physical: Physical) -> Driver:
    return {"rds_instance": RDS_INSTANCE, "aurora_cluster": AURORA_CLUSTER, "ebs": EBS}[physical.method]


class Inventory:
    """Managed snapshots listed once per (kind, region) for the length of one sweep/prune/list call."""

    def __init__(self, svc: SnapshotServices) -> None:
        self.svc = svc
        self._cache: dict[tuple[SnapshotKind, str], list[SnapshotSet]] = {}

    def sets(self, driver: Driver, region: str, target: str) -> list[SnapshotSet]:
        key = (driver.kind, region)
        if key not in self._cache:
            self._cache[key] = group_sets(driver.list_managed(self.svc, region))
        return [s for s in self._cache[key] if s.target == target]
