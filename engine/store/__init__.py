"""Per-shard storage: id map, attribute columns with bitmap indexes, event store."""
