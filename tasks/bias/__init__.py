"""The bias stage: likelihood-based bias checks (CrowS-Pairs, WinoBias, Winogender, BBQ, probes) and BOLD."""
