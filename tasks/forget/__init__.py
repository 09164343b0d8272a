"""Forgetting a source: remove its documents from the store, its token shards, its index entries; taint its models."""
