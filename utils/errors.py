"""The tracker's one domain exception and the CLI's exit codes.

Every error a caller can act on is a :class:`TrackerError`; its ``exit_code`` and
``label`` are all the CLI needs to report it (``batch_tracker: <label>: <message>``),
so the mapping happens at one boundary (:func:`utils.tracker_cli.main`).
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
