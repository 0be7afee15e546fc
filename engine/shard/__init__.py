"""Shards: the unit of data ownership (a profile store, an event store, an executor)."""
