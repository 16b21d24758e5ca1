"""Character rules for text read from files or hooks on its way to a person or a protocol.

Stdlib only, no I/O. One place for what the tracker, the mails, the terminal views and
the status page do with characters they must not pass on as they are:

- :func:`visible_line`: the tracker's rule where free text enters (failure reasons):
  line breaks and tabs become spaces, other non-printable characters visible escapes
  (``\\x1b``), stripped and cut; what is stored is one printable line.
- :func:`one_line` / :func:`header_safe` / :func:`body_safe`: mail text: every
  non-printable character (CR and LF included) becomes a space, runs of whitespace one
  space, so a value can never add a header or fake a line of the body.
- :func:`blank_controls`: the same per character, without touching whitespace runs
  (an indented line of stage output keeps its shape).
- :func:`visible_controls` / :func:`terminal_safe`: each non-printable character shown
  as an escape, so a terminal prints it literally and never obeys it.
- :func:`control_pictures`: for HTML, where tab and newline are harmless whitespace:
  C0/C1 controls, DEL, bidirectional overrides and isolates, lone surrogates become
  visible stand-ins (ESC shows as U+241B); HTML escaping itself stays with the page.

"Printable" is :meth:`str.isprintable`: controls, line and paragraph separators,
format characters (bidi overrides, zero-width joiners) and unassigned code points are not.
"""

from __future__ import annotations

import functools

MAX_HEADER = 200
# Characters that end or indent a line somewhere (str.splitlines, terminals): a space in one line.
LINE_BREAKS = frozenset("\t\n\v\f\r\x1c\x1d\x1e\x85\u2028\u2029")
# C0 and C1 controls (tab and newline are plain whitespace in HTML), DEL, the bidirectional
# overrides and isolates that can reorder what a person reads, and lone surrogates.
_HTML_UNSAFE_RANGES = ((0x00, 0x08), (0x0B, 0x1F), (0x7F, 0x9F), (0x200E, 0x200F), (0x202A, 0x202E), (0x2066, 0x2069))
_SURROGATES = (0xD800, 0xDFFF)


def _text(value: object) -> str:
    return "" if value is None else str(value)


def escape_char(char: str) -> str:
    """``char`` as a Python-style escape: ``\\x1b``, ``\\u202e``, ``\\U0001f600``."""
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def visible_controls(value: object, *, line_break: str | None = None) -> str:
    """``value`` (None: ``""``) with each non-printable character as a visible escape.

    With ``line_break`` set, the characters of :data:`LINE_BREAKS` become it instead.
    """
    text = _text(value)
    if text.isprintable():
        return text
    out = []
    for char in text:
        if char.isprintable():
            out.append(char)
        elif line_break is not None and char in LINE_BREAKS:
            out.append(line_break)
        else:
            out.append(escape_char(char))
    return "".join(out)


def visible_line(value: object, limit: int) -> str:
    """One printable line of at most ``limit`` characters: line breaks and tabs become one
    space each, other non-printable characters escapes; stripped. (The tracker's rule for
    free text from hooks: stored text can add no line to a log, a notify message or a header.)"""
    return visible_controls(_text(value)[: limit * 2], line_break=" ").strip()[:limit]


def terminal_safe(value: object) -> str:
    """``value`` as text a terminal shows literally: each non-printable character (ESC, CR,
    LF, other controls, bidi overrides) becomes an escape such as ``\\x1b``; None is ``""``."""
    return visible_controls(value)


def blank_controls(value: object) -> str:
    """``str(value)`` with every non-printable character (CR and LF included) replaced by a space."""
    text = str(value)
    return text if text.isprintable() else "".join(ch if ch.isprintable() else " " for ch in text)


def one_line(value: object) -> str:
    """``str(value)`` as one line: non-printable characters become spaces, whitespace runs one space, stripped."""
    return " ".join(blank_controls(value).split())


def shorten(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, the cut marked with ``...``."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def header_safe(value: object, limit: int = MAX_HEADER) -> str:
    """``value`` as one header-safe line of at most ``limit`` characters (:func:`one_line`, shortened)."""
    return shorten(one_line(value), limit)


def body_safe(value: object) -> str:
    """``value`` for one line of a mail body (:func:`one_line`): a reason cannot fake a section."""
    return one_line(value)


def _picture(code: int) -> str:
    if code < 0x20:
        return chr(0x2400 + code)  # the Unicode control pictures: ESC shows as ␛
    if code == 0x7F:
        return "\u2421"
    return "\ufffd"


@functools.cache
def _html_stand_ins() -> dict[int, str]:
    """The table for str.translate, built on first use (no regular expression, nothing at
    import: the tracker's hooks import this module and never render HTML)."""
    ranges = (*_HTML_UNSAFE_RANGES, _SURROGATES)
    return {code: _picture(code) for low, high in ranges for code in range(low, high + 1)}


def control_pictures(value: object) -> str:
    """``str(value)`` with HTML-unsafe characters (see the module docstring) as visible stand-ins."""
    return str(value).translate(_html_stand_ins())
