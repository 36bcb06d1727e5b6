"""The one exception family for problems a user can fix.

The CLI turns any `MLPlaygroundError` into a single line on stderr and exit code 2; everything
else is a bug and keeps its traceback (exit 1). So raise these only with a message that tells the
user what to do next.
"""


class MLPlaygroundError(Exception):
    """A user-facing problem: bad config, missing data, a checkpoint that is not there."""


class ConfigError(MLPlaygroundError):
    """The configuration (preset, file or override) is invalid."""


class DataError(MLPlaygroundError):
    """A corpus or prepared dataset is missing or unreadable."""


class CheckpointError(MLPlaygroundError):
    """A checkpoint is missing, incomplete or does not fit the model."""


class TrainingError(MLPlaygroundError):
    """Training cannot go on (for example the device or dtype is not available)."""
