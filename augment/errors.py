"""The one exception type for user mistakes: the CLI turns it into one line on stderr and exit 2."""


class UserError(Exception):
    """Bad input from the user (files, specs, options). Everything else is a bug and surfaces as such."""
