"""Errors the CLI turns into one line on stderr and exit code 2."""


class BnlabError(Exception):
    """Bad user input or an unusable environment: `str(err)` is the whole message, one line."""


class ConfigError(BnlabError):
    """A config, override or sweep spec that does not validate."""


class DataError(BnlabError):
    """A dataset that cannot be found, read or verified."""


class RecordsError(BnlabError):
    """A run folder that cannot be written or read back."""
