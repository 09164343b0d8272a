"""User-facing errors: what was wrong, where (file, line, key), and what to do."""


class UserError(Exception):
    """An expected problem with the user's input or config; the CLI prints it without a traceback."""


class ConfigError(UserError):
    """A pipelines.yaml problem; the message names the file and the key path."""


class RunInterrupted(Exception):
    """The run was asked to stop (SIGTERM) and saved its progress: rerun to resume, do not retry."""
