"""The pii stage."""
