"""The evaluate stage: GLUE, SuperGLUE and your own tasks, fine-tuned or scored by log-likelihood."""
