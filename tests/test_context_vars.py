"""Coercion rules of context-variable seeds (the rules are written in catalog/context_vars.py)."""

from __future__ import annotations

import math

import pytest

from catalog.context_vars import ContextVarError, ContextVarErrors, ContextVarSpec, ValueLimits, coerce, coerce_seeds

S = ContextVarSpec(name="s", type="string")
I = ContextVarSpec(name="i", type="int")  # noqa: E741 - S, I, F, B: one letter per type in the tables below
F = ContextVarSpec(name="f", type="float")
B = ContextVarSpec(name="b", type="bool")
E = ContextVarSpec(name="e", type="enum", enum_values=("gold", "Silver", "bronze"))


@pytest.mark.parametrize(
    ("spec", "raw", "expected"),
    [
        (S, "x", "x"),
        (S, 7, "7"),
        (S, True, "true"),
        (S, 2.5, "2.5"),
        (I, 42, 42),
        (I, "42", 42),
        (I, " -7 ", -7),
        (I, 42.0, 42),
        (I, "+3", 3),
        (F, "2.5", 2.5),
        (F, 3, 3.0),
        (F, " 1e3 ", 1000.0),
        (B, True, True),
        (B, "yes", True),
        (B, "TRUE", True),
        (B, "1", True),
        (B, "on", True),
        (B, 1, True),
        (B, "no", False),
        (B, "False", False),
        (B, "0", False),
        (B, "off", False),
        (B, 0, False),
        (E, "gold", "gold"),
        (E, "GOLD", "gold"),
        (E, "silver", "Silver"),
        (E, " bronze ", "bronze"),
    ],
)
def test_accepted(spec, raw, expected):
    value = coerce(spec, raw)
    assert value == expected and type(value) is type(expected)


@pytest.mark.parametrize(
    ("spec", "raw"),
    [
        (S, None),
        (S, {"a": 1}),
        (S, [1]),
        (I, "4.2"),
        (I, "4e2"),
        (I, True),
        (I, 4.5),
        (I, "forty"),
        (I, ""),
        (F, "nan"),
        (F, "inf"),
        (F, math.inf),
        (F, False),
        (F, "two"),
        (B, "maybe"),
        (B, 2),
        (B, ""),
        (B, 1.0),
        (E, "platinum"),
        (E, 1),
    ],
)
def test_refused_with_the_reason(spec, raw):
    with pytest.raises(ValueError) as info:
        coerce(spec, raw)
    assert str(info.value).startswith(f"{spec.name}: cannot coerce")


def test_ambiguous_case_insensitive_enum_is_refused():
    spec = ContextVarSpec(name="e", type="enum", enum_values=("a", "A"))
    assert coerce(spec, "a") == "a" and coerce(spec, "A") == "A"
    with pytest.raises(ValueError):
        coerce(spec, " a ")


def test_seeds_collect_every_problem():
    specs = (I, B, ContextVarSpec(name="end_user_id", type="string", source="system"))
    with pytest.raises(ContextVarErrors) as info:
        coerce_seeds(specs, {"i": "x", "nope": 1, "end_user_id": "u1", "b": "yes"})
    kinds = {e.name: e.kind for e in info.value.errors}
    assert kinds == {"i": "coercion", "nope": "unknown", "end_user_id": "system"}
    assert coerce_seeds(specs, {"i": "5", "b": "yes"}) == {"i": 5, "b": True}


@pytest.mark.parametrize(
    "bad",
    [
        {"name": "1abc", "type": "string"},
        {"name": "e", "type": "enum"},
        {"name": "s", "type": "string", "enum_values": ["a"]},
        {"name": "session_id", "type": "string"},
    ],
)
def test_bad_specs(bad):
    with pytest.raises(ValueError):
        ContextVarSpec(**bad)


# --- bounds (issue #16: every seed travels inside the browser's token) --------------------------------------


def test_values_out_of_the_default_bounds_are_refused_with_a_range_error():
    for spec, value, needle in (
        (I, 99999999999999999999999, "out of range"),
        (I, "99999999999999999999999", "out of range"),
        (I, "9" * 5000, "out of range"),
        (F, 1e300, "out of range"),
        (S, "x" * 1025, "at most 1024 characters"),
    ):
        with pytest.raises(ContextVarError) as caught:
            coerce(spec, value)
        assert caught.value.kind == "range" and needle in caught.value.reason
        assert len(caught.value.reason) < 200  # the value itself is never echoed whole
    assert coerce(I, 2**53 - 1) == 2**53 - 1
    assert coerce(S, "x" * 1024) == "x" * 1024


def test_a_spec_declares_its_own_bounds_and_limits_apply_otherwise():
    small = ContextVarSpec(name="code", type="string", max_length=4)
    seats = ContextVarSpec(name="seats", type="int", minimum=1, maximum=500)
    with pytest.raises(ContextVarError, match="at most 4 characters"):
        coerce(small, "ABCDE")
    with pytest.raises(ContextVarError, match="between 1 and 500"):
        coerce(seats, 0)
    assert coerce(seats, "500") == 500
    tight = ValueLimits(max_string_chars=3, max_abs_int=10, max_abs_float=1.0)
    with pytest.raises(ContextVarErrors):
        coerce_seeds((S, I), {"s": "abcd", "i": 11}, tight)
    assert coerce_seeds((S, I), {"s": "abc", "i": -10}, tight) == {"s": "abc", "i": -10}


@pytest.mark.parametrize(
    "bad",
    [
        {"name": "x", "type": "int", "max_length": 3},
        {"name": "x", "type": "string", "minimum": 0},
        {"name": "x", "type": "int", "minimum": 5, "maximum": 1},
    ],
)
def test_bounds_must_fit_the_type(bad):
    with pytest.raises(ValueError):
        ContextVarSpec(**bad)
