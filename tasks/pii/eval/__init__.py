"""The PII evaluation set (pii_eval.jsonl) and the script that writes it (generate.py)."""
