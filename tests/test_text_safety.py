"""utils.text_safety: the one set of character rules for the tracker, the mails, the terminal and the page."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from utils import batch_tracker, mail_compose, page_format, text_safety, tracker_views
from utils.text_safety import (
    blank_controls,
    body_safe,
    control_pictures,
    header_safe,
    one_line,
    terminal_safe,
    visible_controls,
    visible_line,
)

HOSTILE = "exit 3\r\nBcc: evil@example.com\x1b[2J\t\u202egnp.exe\x00\u2028end"
ANY_TEXT = st.text(alphabet=st.characters(codec=None, exclude_categories=()), max_size=300)


def test_it_keeps_printable_text_as_it_is():
    plain = "plain text, caf\u00e9 \u2713 \U0001f600"
    for rule in (one_line, body_safe, header_safe, terminal_safe, visible_controls, blank_controls, control_pictures):
        assert rule(plain) == plain, rule.__name__
    assert visible_line(plain, 100) == plain


def test_it_makes_mail_text_one_line_with_spaces():
    assert header_safe("a\r\nb\x00c\td") == "a b c d"
    assert body_safe(HOSTILE) == "exit 3 Bcc: evil@example.com [2J gnp.exe end"
    assert header_safe("x" * 300) == "x" * 197 + "..." and len(header_safe("x" * 300)) == 200
    assert header_safe("a\nb", 253) == "a b" and header_safe(None) == "None"
    # Per character only: an indented line of stage output keeps its shape.
    assert blank_controls("    \x1bERROR\r") == "     ERROR "


def test_it_shows_controls_as_escapes_on_a_terminal():
    assert terminal_safe("a\nb\r\x1b[2J\u202e\x00") == "a\\x0ab\\x0d\\x1b[2J\\u202e\\x00"
    assert terminal_safe(None) == ""
    assert visible_controls("\U000e0001") == "\\U000e0001"  # a tag character: not printable, astral


def test_it_stores_free_text_as_one_printable_line():
    assert visible_line(HOSTILE, 500) == "exit 3  Bcc: evil@example.com\\x1b[2J \\u202egnp.exe\\x00 end"
    assert visible_line("  \n padded \t ", 500) == "padded"
    assert visible_line("y" * 50, 10) == "y" * 10
    assert visible_line(None, 10) == ""


def test_it_gives_html_visible_stand_ins_and_keeps_whitespace():
    assert (
        control_pictures("a\x1b[31m\x00\x7f\u202e\u2066\ud800\tb\n") == "a\u241b[31m\u2400\u2421\ufffd\ufffd\ufffd\tb\n"
    )
    assert page_format.escape("<b x='1'>\x1b") == "&lt;b x=&#x27;1&#x27;&gt;\u241b"
    assert page_format.escape(None) == "\u2013"


def test_it_is_the_rule_every_presenter_and_the_tracker_use():
    assert mail_compose.header_safe is text_safety.header_safe and mail_compose.body_safe is text_safety.body_safe
    assert tracker_views.terminal_safe is text_safety.terminal_safe
    limit = batch_tracker.MAX_REASON_LENGTH
    assert batch_tracker.clean_text(HOSTILE * 200) == visible_line(HOSTILE * 200, limit)


@given(ANY_TEXT)
def test_it_never_lets_a_control_character_through(text):
    for rule in (one_line, body_safe, header_safe, terminal_safe, visible_controls):
        assert rule(text).isprintable(), rule.__name__
    assert "\r" not in header_safe(text) and "\n" not in header_safe(text) and len(header_safe(text)) <= 200
    stored = visible_line(text, 80)
    assert stored.isprintable() and len(stored) <= 80 and stored == stored.strip()
    assert len(blank_controls(text)) == len(text) and blank_controls(text).isprintable()
    shown = control_pictures(text)
    assert not any(ch in shown for ch in "\x1b\x00\x7f\u202e\u2066") and len(shown) == len(text)
