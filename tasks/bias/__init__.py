"""Bias: the bias stage (likelihood checks, classifier consistency, thresholds), word-pair counterfactuals
and demographic term counts (also used by the counterfactual augmentation of tokenize)."""
