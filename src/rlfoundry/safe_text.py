"""Text from untrusted sources (completions, reward exceptions, data rows, config values), made
safe to print and short enough to read.

* :func:`escape_control` turns terminal control characters into visible escapes, so that a
  completion cannot move the cursor, rewrite earlier lines, change colours, ring the bell,
  set the window title or reorder text (bidirectional overrides) on the console or in a log.
* :func:`clip` and :func:`short_repr` bound the length of a value quoted in an error message,
  however large the value (a YAML alias bomb expands to gigabytes).
"""

from __future__ import annotations

import re
import reprlib
from typing import Any

# C0 controls except tab and newline, DEL, C1 controls, and the Unicode bidirectional
# formatting characters (LRE..RLO, LRI..PDI) and the line/paragraph separators.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_CONTROL_AND_LINES = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")

MAX_SHOWN = 200  # characters of a value quoted in an error message


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape_control(text: str, *, keep_newlines: bool = True) -> str:
    """``text`` with control characters written as ``\\xNN`` / ``\\uNNNN`` escapes.

    Tab and newline are kept unless ``keep_newlines`` is False (then they are escaped too,
    so the text stays on one line). Carriage return, backspace, ESC and the other C0/C1
    controls are always escaped."""
    pattern = _CONTROL if keep_newlines else _CONTROL_AND_LINES
    return pattern.sub(_escape, str(text))


def clip(text: str, limit: int = MAX_SHOWN) -> str:
    """``text`` cut to ``limit`` characters, the cut marked with its original length."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters)"


_repr = reprlib.Repr()
_repr.maxstring = 80
_repr.maxother = 80
_repr.maxlist = _repr.maxtuple = _repr.maxdict = _repr.maxset = 6
_repr.maxlevel = 3


def short_repr(value: Any, limit: int = MAX_SHOWN) -> str:
    """A bounded ``repr`` of ``value``: nested containers are elided (``...``) rather than
    rendered whole, so the cost and the size do not grow with the value."""
    try:
        text = _repr.repr(value)
    except Exception:  # a broken __repr__ of a user object must not hide the real error
        text = f"<{type(value).__name__}>"
    return clip(escape_control(text, keep_newlines=False), limit)
