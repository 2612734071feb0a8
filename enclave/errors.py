"""Errors that the CLI and services report to people as one clear line."""


class EnclaveError(Exception):
    """A failure caused by input or state that a user can act on.

    The CLI prints ``error: <message>`` and exits non-zero instead of a traceback,
    so messages must name the offending thing (a file, a share, a dataset) and say
    what is wrong with it.
    """

    exit_code = 1
