"""first_line: the one line of a foreign exception that goes into a one-line user error."""

from __future__ import annotations

import pytest

import guidance
from guidance.errors import first_line


@pytest.mark.parametrize("error, expected", [
    (ValueError("bad value\nTraceback details\nmore"), "bad value"),
    (OSError("  padded  \n"), "padded"),
    (RuntimeError(""), "RuntimeError"),
    (KeyError(), "KeyError"),
    (ValueError(" \n "), "ValueError"),
])
def test_first_line_is_the_first_line_or_the_type_name(error, expected):
    assert first_line(error) == expected


def test_first_line_shortens_long_messages_to_160_characters():
    text = first_line(ValueError("x" * 500))
    assert len(text) == 160 and text.endswith("...")
    assert first_line(ValueError("y" * 160)) == "y" * 160
    assert len(first_line(ValueError("z" * 100), limit=80)) == 80


def test_first_line_is_exported():
    assert guidance.first_line is first_line and "first_line" in guidance.__all__
