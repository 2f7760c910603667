"""The one exception type for user mistakes: the CLI turns it into one line on stderr and exit 2."""


class EngineError(Exception):
    """The engine (Ray) gave up on a unit: its worker died more often than `--retries` allows, or the cluster went
    away. The CLI says it in one line and exits 1; finished work is kept and the same command continues."""


class UserError(Exception):
    """Bad input from the user (files, specs, options). Everything else is a bug and surfaces as such.
    `argument`: the library argument the message names, which the CLI shows as its flag."""

    def __init__(self, message: str, argument: str | None = None):
        super().__init__(message)
        self.argument = argument
