"""Plumbing shared by every stage: config base, store layout, document shards, accounting."""
