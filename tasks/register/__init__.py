"""The register stage: the model registry, the promotion gate, model cards, metric history."""
