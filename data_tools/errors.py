"""Error types for data tools.

User mistakes and bad inputs raise one of these, never ``assert``: the CLI turns them into a
one-line message and a non-zero exit code, while library callers can catch them by type.
Messages name the file, episode and event involved, so the fix is obvious without a traceback.
"""


class DataToolsError(Exception):
    """Base class: an input or usage problem the user can fix."""


class DatasetFormatError(DataToolsError):
    """A LeRobot dataset on disk does not match the v3.0 layout this package reads."""


class EventError(DataToolsError):
    """An event in ``events.jsonl`` is malformed or does not fit its episode."""


class OutputExistsError(DataToolsError):
    """The output folder exists and does not look like something this tool may replace."""
