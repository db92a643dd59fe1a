"""The one error type for user faults.

:class:`InputError` is raised for anything the user can fix: a bad file, a bad parameter,
a missing model. Entry points map it, and only it, to a one-line message: exit code 2 on
the command line (:mod:`localdiffusion.cli`), HTTP 400 on the MONAI Label server
(:mod:`localdiffusion.serving.server`). Every other exception is a programming error and
keeps its traceback.
"""


class InputError(ValueError):
    """Bad user input: the message names the file (or parameter) and the problem, on one line
    (a library's multi-line text quoted in it is joined)."""

    def __init__(self, message: object):
        super().__init__(" ".join(line.strip() for line in str(message).splitlines() if line.strip()))
