"""The `text:weight:stop` prompt parser on tricky and malformed strings."""

from __future__ import annotations

import math

import pytest

from guidance import InvalidInputError, Prompt, parse_prompt, parse_prompts
from guidance.validation import check_some_weight

INF = -math.inf


@pytest.mark.parametrize("text, expected", [
    ("a red circle", Prompt("a red circle", 1.0, INF)),
    ("a clock at 10:30", Prompt("a clock at 10:30", 1.0, INF)),
    ("a clock at 10:30 :2", Prompt("a clock at 10:30", 2.0, INF)),
    ("16:9 landscape:2", Prompt("16:9 landscape", 2.0, INF)),
    ("16:9", Prompt("16:9", 1.0, INF)),
    ("red:-1", Prompt("red", -1.0, INF)),
    ("a cat:1:0.5", Prompt("a cat", 1.0, 0.5)),
    ("a cat: 2 : -0.25 ", Prompt("a cat", 2.0, -0.25)),
    ("Photo: a cat", Prompt("Photo: a cat", 1.0, INF)),
    ("a b:1e-3", Prompt("a b", 1e-3, INF)),
    ("a b:.5", Prompt("a b", 0.5, INF)),
    ("  padded text  :3", Prompt("padded text", 3.0, INF)),
])
def test_parse_prompt_tricky_strings(text, expected):
    assert parse_prompt(text) == expected


@pytest.mark.parametrize("text, hint", [
    ("", "empty"),
    ("  ", "empty"),
    (":1", "empty"),
    ("a cat:", "empty weight"),
    ("a cat:1.2.3", "1.2.3"),
    ("a||b", "'|'"),
    ("a|", "'|'"),
])
def test_malformed_prompts_raise_a_one_line_invalid_input_error(text, hint):
    with pytest.raises(InvalidInputError) as info:
        parse_prompts(text)
    message = str(info.value)
    assert isinstance(info.value, ValueError)
    assert hint in message and "\n" not in message and len(message) < 200


def test_weights_summing_to_zero_cannot_be_normalised():
    with pytest.raises(InvalidInputError, match="sum to zero") as info:
        parse_prompts("a:1|b:-1", normalize_weights=True)
    assert "\n" not in str(info.value)


def test_weights_summing_to_zero_are_fine_without_normalising():
    assert [p.weight for p in parse_prompts("a:1|b:-1")] == [1.0, -1.0]


def test_parse_prompts_splits_on_pipes_and_keeps_order():
    assert parse_prompts("a red circle:2|a blue square:-0.5:0.1|10:30") == [
        Prompt("a red circle", 2.0, INF), Prompt("a blue square", -0.5, 0.1), Prompt("10:30", 1.0, INF)]


def test_parse_prompts_accepts_a_list_of_strings():
    assert parse_prompts(["a:2", "b|c:3"]) == [Prompt("a", 2.0), Prompt("b", 1.0), Prompt("c", 3.0)]


def test_normalize_weights_divides_by_absolute_sum():
    prompts = parse_prompts("a:3|b:-1|c:2", normalize_weights=True)
    assert [p.weight for p in prompts] == pytest.approx([0.75, -0.25, 0.5])
    negative = parse_prompts("a:-3|b:1", normalize_weights=True)
    assert [p.weight for p in negative] == pytest.approx([-1.5, 0.5])


def test_non_string_prompt_is_invalid_input():
    with pytest.raises(InvalidInputError):
        parse_prompt(3)  # type: ignore[arg-type]


@pytest.mark.parametrize("text, message", [
    ("a cat:1e999", "weight inf .* is not a finite number"),
    ("a cat:-1e999", "weight -inf .* is not a finite number"),
    ("a cat:1:1e999", "stop inf .* is not a finite number"),
])
def test_non_finite_weights_and_stops_are_one_line(text, message):
    with pytest.raises(InvalidInputError, match=message) as info:
        parse_prompt(text)
    assert "\n" not in str(info.value)


def test_a_stop_of_minus_infinity_means_no_stop():
    assert parse_prompt("a cat:1:-1e999") == Prompt("a cat", 1.0, INF)  # INF is -inf here, the default stop


def test_every_weight_zero_is_refused_but_one_non_zero_weight_is_enough():
    check_some_weight([2.0, 0.0])
    check_some_weight([])  # image prompts alone: nothing to check here
    with pytest.raises(InvalidInputError, match="every prompt weight is 0"):
        check_some_weight(p.weight for p in parse_prompts("a cat:0|a dog:0"))
