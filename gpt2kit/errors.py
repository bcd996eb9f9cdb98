"""The one exception type for mistakes a user can fix (bad file, bad flag, bad config).

Commands catch :class:`UserError` at the top level and print its message as one line with a
non-zero exit, so a user never sees a traceback for their own mistake.
"""

from __future__ import annotations

import os


class UserError(Exception):
    """A problem with the user's input; the message names the file or flag and what to do."""


def first_line(e: BaseException, limit: int | None = None) -> str:
    """The first line of an exception's message (its type's name when it has none), cut to ``limit`` characters."""
    lines = str(e).strip().splitlines()
    line = lines[0] if lines else type(e).__name__
    return line if limit is None else line[:limit]


def torch_load_error(path: "os.PathLike | str", e: Exception, hint: str) -> UserError:
    """One-line UserError for a file that ``torch.load(weights_only=True)`` refused or could not parse."""
    text = str(e)
    # torch names the offending global only when the file asks to import or build a Python object;
    # random or truncated bytes fail with other unpickler errors and are corruption, not a threat
    if "GLOBAL " in text or "Can only create new object" in text or "Can only build" in text:
        return UserError(
            f"{path}: refused to load: the file contains Python objects other than tensors and plain data "
            f"(it could run code); {hint}"
        )
    detail = type(e).__name__ if "Weights only load failed" in text else first_line(e, 200)
    return UserError(f"{path}: not a readable checkpoint ({detail}); it may be truncated or corrupt")
