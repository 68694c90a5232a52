"""The command line's one error convention.

Any part of a command raises :class:`CLIError`; :func:`clfast.cli.main` turns it into
``clfast <command>: error: <message>`` on stderr and exit code 2. A usage error (a bad combination of
options, found after parsing) goes through the sub-command's ``argparse`` parser instead, which also
prints the usage line and exits with ``SystemExit(2)``, exactly as a malformed option does.
"""

from __future__ import annotations


class CLIError(Exception):
    """An error to report to the user of the command line, without a traceback."""

    def __init__(self, message: str, *, usage: bool = False) -> None:
        super().__init__(message)
        #: ``True``: report through ``parser.error`` (usage line, ``SystemExit(2)``); ``False``: return code 2.
        self.usage = usage
