"""The one exception type for mistakes a user can fix (bad file, bad flag, bad config).

Commands catch :class:`UserError` at the top level and print its message as one line with a
non-zero exit, so a user never sees a traceback for their own mistake.
"""

from __future__ import annotations

import os
import re

_CPP_LOCATION = re.compile(r"\[[^\]]*\.(?:cc|cpp|h|hpp):\d+\]\s*")


class UserError(Exception):
    """A problem with the user's input; the message names the file or flag and what to do."""


def first_line(e: BaseException, limit: int | None = None, *, sentence: bool = False) -> str:
    """The first line of an exception's message (its type's name when it has none), without the C++ source
    location torch puts in front; only its first sentence when ``sentence``; cut to ``limit`` characters."""
    lines = str(e).strip().splitlines()
    line = _CPP_LOCATION.sub("", lines[0]) if lines else type(e).__name__
    if sentence:
        line = line.split(". ")[0]
    if limit is not None and len(line) > limit:
        line = line[:limit] + ("..." if sentence else "")
    return line


def torch_load_error(path: os.PathLike | str, e: Exception, hint: str) -> UserError:
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
