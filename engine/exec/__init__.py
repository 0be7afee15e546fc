"""Execution of plan steps over one shard's bitmaps."""
