"""Character rules for text from files or hooks on its way to a person or a protocol (stdlib, no I/O).

"Printable" is :meth:`str.isprintable`: controls, line and paragraph separators, format characters
(bidi overrides, zero-width joiners) and unassigned code points are not.
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
    """``value`` (None: ``""``) with each non-printable character as a visible escape, or with
    ``line_break`` set, the characters of :data:`LINE_BREAKS` as it."""
    text = _text(value)
    if text.isprintable():
        return text
    breaks = LINE_BREAKS if line_break is not None else frozenset()
    return "".join(ch if ch.isprintable() else line_break if ch in breaks else escape_char(ch) for ch in text)


def visible_line(value: object, limit: int) -> str:
    """One printable line of at most ``limit`` characters: line breaks and tabs become one space
    each, other non-printable characters escapes; stripped. It can add no line to a log or header."""
    return visible_controls(_text(value)[: limit * 2], line_break=" ").strip()[:limit]


def terminal_safe(value: object) -> str:
    """``value`` as text a terminal shows literally (:func:`visible_controls`); None is ``""``."""
    return visible_controls(value)


def blank_controls(value: object) -> str:
    """``str(value)`` with every non-printable character (CR and LF included) replaced by a space."""
    text = str(value)
    return text if text.isprintable() else "".join(ch if ch.isprintable() else " " for ch in text)


def one_line(value: object) -> str:
    """``str(value)`` as one line: non-printable characters become spaces, whitespace runs one space, stripped."""
    return " ".join(blank_controls(value).split())


def header_safe(value: object, limit: int = MAX_HEADER) -> str:
    """``value`` as one header-safe line (:func:`one_line`) of at most ``limit`` characters, a cut marked ``...``."""
    text = one_line(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def body_safe(value: object) -> str:
    """``value`` for one line of a mail body (:func:`one_line`): it cannot fake a section."""
    return one_line(value)


def _picture(code: int) -> str:
    """The Unicode control picture (ESC shows as U+241B, DEL as U+2421), else U+FFFD."""
    return chr(0x2400 + code) if code < 0x20 else "\u2421" if code == 0x7F else "\ufffd"


@functools.cache
def _html_stand_ins() -> dict[int, str]:
    """The str.translate table, built on first use: the tracker's hooks import this module, never render HTML."""
    ranges = (*_HTML_UNSAFE_RANGES, _SURROGATES)
    return {code: _picture(code) for low, high in ranges for code in range(low, high + 1)}


def control_pictures(value: object) -> str:
    """``str(value)`` for HTML: C0/C1 controls (not tab, newline), DEL, bidi overrides and isolates and lone
    surrogates as visible stand-ins; HTML escaping itself stays with the page."""
    return str(value).translate(_html_stand_ins())
