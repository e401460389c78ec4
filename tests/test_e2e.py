"""Acceptance on real exported models: rewrite gelu=phi6 replaces every GELU, and the rewritten
model equals an independent computation (the torch model with Phi6 in place of GELU) within 1e-4,
with our library and with the function fallback alone."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import n6onnx
from n6onnx.testing import zoo
from n6onnx.ops import DOMAIN


CASES = [(m, e) for m in zoo.MODELS for e in zoo.EXPORTERS]


def torch_with_phi6(model: str):
    """The zoo model in torch with every GELU module replaced by Phi6."""
    import torch

    class Phi6(torch.nn.Module):
        def forward(self, x):
            c = torch.clamp(x, -2.0, 2.0)
            return c * c - c + 1.0

    m = zoo.load_torch_model(model)
    swapped = 0
    for parent in list(m.modules()):
        for name, child in list(parent.named_children()):
            if "gelu" in type(child).__name__.lower():
                setattr(parent, name, Phi6())
                swapped += 1
    return m, swapped


@pytest.mark.parametrize("model,exporter", CASES, ids=[f"{m}-{e}" for m, e in CASES])
def test_rewrite_equals_independent_phi6_model(model, exporter, zoo_export, tmp_path):
    import torch

    src = zoo_export(model, exporter)
    before = src.read_bytes()
    out = tmp_path / "rewritten.onnx"
    _, rep = n6onnx.rewrite(src, out, ["gelu=phi6"])
    assert src.read_bytes() == before  # input untouched
    assert rep.rewritten["gelu"] == zoo.ARCH_COUNTS[model]["gelu"]
    proto = onnx.load(str(out))
    n6_nodes = [n for n in proto.graph.node if n.domain == DOMAIN]
    assert len(n6_nodes) == zoo.ARCH_COUNTS[model]["gelu"]
    if n6_nodes:
        assert {f.name for f in proto.functions} == {n.op_type for n in n6_nodes}
    orig = onnx.load(str(src))
    assert [i.name for i in proto.graph.input] == [i.name for i in orig.graph.input]
    assert [o.name for o in proto.graph.output] == [o.name for o in orig.graph.output]

    feeds = zoo.example_inputs(model)
    tm, swapped = torch_with_phi6(model)
    assert swapped == zoo.ARCH_COUNTS[model]["gelu"]  # one GELU module per layer in the torch model
    with torch.no_grad():
        args = [torch.from_numpy(feeds[k]) for k in feeds]
        kwargs = dict(zip(feeds, args))
        if model in ("gpt2", "llama", "geglu", "mixtral"):
            kwargs["use_cache"] = False
        ref = tm(**kwargs, return_dict=True).last_hidden_state.numpy()
    for library in (True, False):
        s = n6onnx.InferenceSession(out, use_library=library)
        assert s.uses_library == library
        got = s.run(None, feeds)[0]
        err = np.abs(got - ref).max()
        assert err <= 1e-4, f"library={library}: max abs error {err}"
    if zoo.ARCH_COUNTS[model]["gelu"]:
        # and it really differs from the original (the swap is not a no-op)
        base = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
        assert np.abs(base - ref).max() > 1e-2
