"""The quantization mode grammar, parsed in one place (API and CLI).

    int8            dynamic int8 (onnxruntime.quantization.quantize_dynamic), weights per channel
    int8:static     static QDQ int8 (quantize_static, MinMax calibration), needs calibration feeds
    int4[:BLOCK]    weight-only 4-bit MatMulNBits (MatMulNBitsQuantizer), BLOCK a power of two >= 16
                    (default 32)
"""

from __future__ import annotations

import dataclasses

import click

from ..errors import BadArgumentError

GRAMMAR = "int8, int8:static or int4[:BLOCK]"
DEFAULT_INT4_BLOCK = 32


@dataclasses.dataclass(frozen=True)
class QuantMode:
    kind: str  # "int8" | "int8:static" | "int4"
    block: int | None = None  # int4 only

    @property
    def needs_calibration(self) -> bool:
        return self.kind == "int8:static"

    def __str__(self) -> str:
        return f"int4:{self.block}" if self.kind == "int4" else self.kind


def parse_mode(text: str | QuantMode) -> QuantMode:
    """Parse a mode string; raises BadArgumentError with the grammar on anything else."""
    if isinstance(text, QuantMode):
        return text
    s = str(text).strip().lower()
    if s in ("int8", "int8:dynamic"):
        return QuantMode("int8")
    if s == "int8:static":
        return QuantMode("int8:static")
    if s == "int4" or s.startswith("int4:"):
        arg = s.partition(":")[2]
        if not arg:
            return QuantMode("int4", DEFAULT_INT4_BLOCK)
        try:
            block = int(arg)
        except ValueError:
            raise BadArgumentError(f"quantize mode {text!r}: the int4 block size must be an integer, got {arg!r}") from None
        if block < 16 or block & (block - 1):
            raise BadArgumentError(f"quantize mode {text!r}: the int4 block size must be a power of two >= 16, got {block}")
        return QuantMode("int4", block)
    raise BadArgumentError(f"unknown quantize mode {text!r}: expected {GRAMMAR}")


class QuantModeType(click.ParamType):
    """click parameter type for --quantize: a clear one-line usage error on a bad mode."""

    name = "MODE"

    def convert(self, value, param, ctx):
        try:
            return parse_mode(value)
        except BadArgumentError as e:
            self.fail(str(e), param, ctx)
