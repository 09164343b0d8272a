"""Pipeline stages: one module per stage, each with its config model, plain functions and a thin Prefect task."""
