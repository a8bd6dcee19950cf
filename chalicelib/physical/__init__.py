"""Physical backups: RDS instance and Aurora cluster snapshots, and EBS snapshots of PostgreSQL on EC2.

Start, never wait. `start_snapshot` asks AWS for a snapshot and returns; `sweep` (on a schedule) looks at
what became of the snapshots, locks each finished EBS snapshot for its retention and shares it with the vault
account (`protect`), marks it with `lifeboat:observed`, emits the metrics and starts the cross-region copy;
`prune` deletes what the GFS policy no longer needs (never a locked snapshot). Every snapshot this package
creates carries `lifeboat:managed=true`, its target and its slot: that tag, never a name pattern, is what
`sweep`, `prune` and `list_snapshots` act on, so automated RDS snapshots and snapshots made by anything else
are never touched.

One backup is one RDS snapshot, or the EBS snapshots of one slot (a "set", sharing `lifeboat:set`),
per region. A duplicate delivery of a slot creates nothing: RDS identifiers are derived from the slot,
EBS sets are looked up by their slot tag first (and claimed in the jobs table when one is configured).

Clients come from an injected factory `client_for(service, region)`; nothing here builds a boto3 client.

The modules, in the order they build on each other:

- `names`: tag keys, slot tags, RDS identifiers, label keys (pure).
- `model`: `SnapshotResource`, `SnapshotSet`, `SnapshotServices` (what is injected), `physical_target`.
- `driver`: the `Driver` interface every kind of snapshot implements, and AWS errors turned into advice.
- `rds`, `ebs`: the drivers (`RDS_INSTANCE`, `AURORA_CLUSTER`, `EBS`).
- `inventory`: `driver_for` a target, and `Inventory` (managed snapshots listed once per kind and region).
- `backup_mode`: pg_backup_start/pg_backup_stop around app-consistent EBS snapshots.
- `protect`: the EBS snapshot lock and the vault share of a finished snapshot.
- `start`: `start_snapshot`. `sweep`: `sweep`. `prune`: `prune`. `catalog`: `list_snapshots`.
"""
