"""Pure torch modules: the GPT trunk, multi-token heads and generation. No I/O, no prefect."""
