"""Bias: word-pair counterfactuals, demographic term counts, and the checks of the bias stage."""
