"""The tokenizer stage."""
