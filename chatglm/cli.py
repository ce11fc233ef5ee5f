"""How the command-line tools end on a user's mistake: one line, exit code 2, no traceback.

What a user can get wrong (a data file, a model or checkpoint folder, a flag) raises
ValueError (RecordError, CheckpointError, bad flags), KeyError (tensors that do not fit) or
OSError (missing files) with a message that names the file and says what to do. `--debug`
(or GLM2_DEBUG=1) shows the traceback instead, for a bug report.
"""
from __future__ import annotations

import os
import sys

USER_ERRORS = (ValueError, KeyError, OSError)


def run_cli(entry, name: str) -> None:
    debug = "--debug" in sys.argv or os.environ.get("GLM2_DEBUG", "") not in ("", "0")
    if "--debug" in sys.argv:
        sys.argv.remove("--debug")
    try:
        entry()
    except BrokenPipeError:  # `chat.py ... | head`: the reader left; nothing to report
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)
    except USER_ERRORS as e:
        if debug:
            raise
        message = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        print(f"{name}: error: {message} (--debug shows the traceback)", file=sys.stderr)
        sys.exit(2)
