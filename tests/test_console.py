"""The human summaries of n6onnx.console."""

from __future__ import annotations

import types

from n6onnx import console


def _healing(kernel, asked):
    return types.SimpleNamespace(int8_kernel=kernel, config={"int8_kernel": asked})


def test_the_int8_products_line_says_whose_kernel_it_mirrored():
    assert console._products(_healing("saturating", "auto")) == (
        "pair sums clipped to int16 (this CPU's kernel; --int8-kernel names a deployment's)")
    assert console._products(_healing("exact", "exact")) == "exact (as --int8-kernel asked)"
    assert console._products(_healing("saturating", "saturating")) == (
        "pair sums clipped to int16 (as --int8-kernel asked)")


def test_a_named_saturating_kernel_with_no_integer_matmul_is_not_reported_as_asked():
    """A static QDQ model whose rounded MatMuls onnxruntime all fuses into float Gemms has nothing to clip: the
    line must not claim the exact products were what --heal-int8-kernel saturating asked for."""
    said = console._products(_healing("exact", "saturating"))
    assert said.startswith("exact (") and "as --int8-kernel asked" not in said
    assert "--int8-kernel saturating asked, but" in said and "integer kernel" in said
