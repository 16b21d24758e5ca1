"""The tracker's one domain exception and the CLI's exit codes.

A :class:`TrackerError`'s ``exit_code`` and ``label`` are all :func:`utils.tracker_cli.main` needs
to report it (``batch_tracker: <label>: <message>``).
"""

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
