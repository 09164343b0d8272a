"""Prefect flows that compose the stages, and the `llmpipe` command line."""
