"""Point-in-time recovery for PostgreSQL that is not RDS: a WAL stream and base backups in S3, no agent on the host.

`walnames` (segment names, LSNs, key layout, continuity; pure), `walarchive` (segments in S3: zstd, SHA-256 in the
object's metadata, tags, Object Lock), `slot` (the replication slot and its safety), `receiver` (`lifeboat
wal-stream`), `basebackup`, `fetch` (`lifeboat wal-fetch`, PostgreSQL's restore_command), `recover`, `window` (the
recoverable window and its gaps), `prune` (`lifeboat wal-prune`: bases by the GFS policy, the WAL only they
needed), `commands`.
"""
