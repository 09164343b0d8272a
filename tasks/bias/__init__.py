"""The bias stage: likelihood-based bias checks, classifier consistency, corpus term counts, thresholds."""
