"""The tracker's domain exception, whose ``exit_code`` and ``label`` the CLI reports, and the exit codes."""

EXIT_OK = 0
EXIT_PROBLEM = 1
EXIT_USAGE = 2
EXIT_STORAGE = 3


class TrackerError(Exception):
    """Base of the tracker's domain errors; ``exit_code`` is the CLI's exit status."""

    exit_code = EXIT_USAGE
    label = "error"


class UsageError(TrackerError):
    """The command line is malformed."""
