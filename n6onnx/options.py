"""One validation layer for user options: numbers (finite, in a range) and the small grammars of
pass arguments (ratios like ``4/3``, counts, index lists).

Every check raises :class:`BadArgumentError` with the option's name, the value and the allowed
range, so the CLI (through the click types below) and the Python API (calling :func:`number`
directly) refuse nan, inf, negative, zero and divide-by-zero values the same way, before any work
starts. Ranges are also bounds on running time: a measurement of ``--seconds inf`` or a billion
blocks is refused rather than left to run forever.
"""

from __future__ import annotations

import fractions
import math
import re

import click

from .errors import BadArgumentError

_DIGITS = re.compile(r"[0-9]+")
_DECIMAL = r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?"
_RATIO = re.compile(rf"\s*({_DECIMAL})\s*(?:/\s*({_DECIMAL})\s*)?")


def _interval(lo, hi, lo_open: bool, hi_open: bool) -> str:
    left = "(" if lo_open else "["
    right = ")" if hi_open else "]"
    def fmt(x, none):
        return none if x is None else str(x) if isinstance(x, int) else format(x, "g")

    return f"{left}{fmt(lo, '-inf')}, {fmt(hi, 'inf')}{right}"


def number(option: str, value, lo=None, hi=None, *, lo_open: bool = False, hi_open: bool = False,
           integer: bool = False):
    """``value`` as a finite float (or int with ``integer``) in the interval; else BadArgumentError
    naming ``option``. None passes through (an option not given)."""
    if value is None:
        return None
    where = _interval(lo, hi, lo_open, hi_open)
    try:
        if integer:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            if isinstance(value, str):
                if not _DIGITS.fullmatch(value.strip().lstrip("-")):
                    raise ValueError
            v = int(value)
        else:
            v = float(value)
    except (TypeError, ValueError, OverflowError):
        kind = "a whole number" if integer else "a number"
        raise BadArgumentError(f"{option} needs {kind} in {where} (got {value!r})") from None
    if not integer and not math.isfinite(v):
        raise BadArgumentError(f"{option} must be a finite number in {where} (got {value!r})")
    if (lo is not None and (v < lo or (lo_open and v == lo))) or (hi is not None and (v > hi or (hi_open and v == hi))):
        raise BadArgumentError(f"{option} must be in {where} (got {value!r})")
    return v


class Number(click.ParamType):
    """A click type over :func:`number`: the same message on the command line as in the API."""

    def __init__(self, lo=None, hi=None, *, lo_open: bool = False, hi_open: bool = False, integer: bool = False,
                 word: str | None = None):
        self.lo, self.hi, self.lo_open, self.hi_open, self.integer = lo, hi, lo_open, hi_open, integer
        self.word = word  # a keyword accepted besides a number (e.g. "auto"), passed through as is
        self.name = ("integer" if integer else "float") + (f"|{word}" if word else "")

    def convert(self, value, param, ctx):
        if value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)
                             and self._ok(value)):
            return value
        if self.word is not None and isinstance(value, str) and value.strip().lower() == self.word:
            return self.word
        name = "/".join(param.opts) if param is not None else "value"
        try:
            return number(name, value, self.lo, self.hi, lo_open=self.lo_open, hi_open=self.hi_open,
                          integer=self.integer)
        except BadArgumentError as e:
            self.fail(str(e).removeprefix(f"{name} ") + (f", or {self.word!r}" if self.word else ""), param, ctx)

    def _ok(self, value) -> bool:
        try:
            number("", value, self.lo, self.hi, lo_open=self.lo_open, hi_open=self.hi_open, integer=self.integer)
        except BadArgumentError:
            return False
        return True

    def get_metavar(self, param, ctx=None):  # click 8.1 and 8.2 signatures
        return self.name.upper()


def ratio(option: str, text: str, lo: float, hi: float) -> float:
    """``A`` or ``A/B`` (decimal numbers, ASCII digits) in (lo, hi]; ``1/0``, ``nan``, ``inf`` refused."""
    m = _RATIO.fullmatch(text)
    if not m:
        raise BadArgumentError(f"{option} needs a number such as 4/3 or 2 (got {text!r})")
    num, den = fractions.Fraction(m.group(1)), fractions.Fraction(m.group(2) or 1)
    if den == 0:
        raise BadArgumentError(f"{option}: division by zero in {text!r}")
    v = num / den  # exact: no overflow for 1e400, no rounding at the bounds
    if not fractions.Fraction(lo) < v <= fractions.Fraction(hi):
        raise BadArgumentError(f"{option} must be in ({lo:g}, {hi:g}] (got {text!r})")
    return float(v)


def count(option: str, text: str, lo: int = 0) -> int:
    """A whole number written with ASCII digits, at least ``lo``."""
    if not _DIGITS.fullmatch(text.strip()):
        raise BadArgumentError(f"{option} needs a whole number written with digits 0-9 (got {text!r})")
    v = int(text)
    if v < lo:
        raise BadArgumentError(f"{option} must be >= {lo} (got {text!r})")
    return v


def is_count(text: str) -> bool:
    return bool(_DIGITS.fullmatch(text.strip()))
