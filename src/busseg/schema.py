"""Checks of configuration sections: a *schema* maps each allowed key of a section to a check.

A check is a function returning ``None`` when the value is acceptable, else what is wrong with it
(``"must be in [0, 1], got 1.5"``). :func:`check_section` refuses keys the schema does not know
(an option the code would silently ignore is a typo or a misunderstanding) and values a check
rejects, with a :class:`ConfigError` naming the source file and the field.

This sits in the bottom layer so that the modules which own a section (the recipe's fields in
``engine/recipe.py``, the augmentation keys in ``data/augment.py``) write their schema next to the
code that reads it, with the same checks and the same error messages.
"""

from __future__ import annotations

from typing import Any, Callable

from busseg.errors import ConfigError

Check = Callable[[Any], "str | None"]


def is_number(value: Any) -> bool:
    """An int or float, not a bool (YAML's ``true`` is not a number here)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def number(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False,
           hi_open: bool = False, integer: bool = False) -> Check:
    """A number (an integer with ``integer``) in the interval given by ``lo``/``hi``."""
    left = "(" if lo_open else "["
    right = ")" if hi_open else "]"
    interval = f"{left}{'-inf' if lo is None else f'{lo:g}'}, {'inf' if hi is None else f'{hi:g}'}{right}"

    def check(value: Any) -> str | None:
        if integer and not (isinstance(value, int) and not isinstance(value, bool)):
            return f"must be an integer, got {value!r}"
        if not is_number(value):
            return f"must be a number, got {value!r}"
        if value != value or (lo is not None and (value < lo or (lo_open and value == lo))) \
                or (hi is not None and (value > hi or (hi_open and value == hi))):
            return f"must be in {interval}, got {value!r}"
        return None

    return check


def pair(element: Check, *, ordered: bool = True) -> Check:
    """A ``[a, b]`` list whose elements pass ``element`` (and ``a <= b`` when ``ordered``)."""

    def check(value: Any) -> str | None:
        if not isinstance(value, (list, tuple)) or len(value) != 2:
            return f"must be a pair [a, b], got {value!r}"
        for v in value:
            problem = element(v)
            if problem:
                return f"element {v!r}: {problem}"
        if ordered and value[0] > value[1]:
            return f"must be [min, max] with min <= max, got {list(value)!r}"
        return None

    return check


def choice(*options: Any) -> Check:
    return lambda value: None if value in options else f"must be one of {', '.join(map(str, options))}; got {value!r}"


def boolean(value: Any) -> str | None:
    return None if isinstance(value, bool) else f"must be true or false, got {value!r}"


PROBABILITY = number(0, 1)
NON_NEGATIVE = number(0)
POSITIVE = number(0, lo_open=True)


def check_section(section: dict, schema: dict[str, Check], where: str, source: str) -> None:
    """Refuse keys ``schema`` does not know and values its checks reject, naming the field."""
    unknown = sorted(set(section) - set(schema))
    if unknown:
        known = ", ".join(sorted(schema)) or "none"
        raise ConfigError(f"{source}: unknown option(s) {unknown} in {where}; known: {known}")
    for key, value in section.items():
        problem = schema[key](value)
        if problem:
            raise ConfigError(f"{source}: {where}.{key} {problem}")


__all__ = ["NON_NEGATIVE", "POSITIVE", "PROBABILITY", "Check", "boolean", "check_section", "choice", "is_number",
           "number", "pair"]
