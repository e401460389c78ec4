"""finalize: a causal FFTMix node gets the fallback overload its bound inputs/outputs need, the
model's IR version allows overloads, and the rewritten model runs on stock onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
import pytest

from n6onnx.ops import REGISTRY
from n6onnx.passes.finalize import check, finalize


@pytest.mark.parametrize("with_past,outputs", [(True, 2), (False, 1), (False, 2)])
def test_causal_fftmix_gets_its_overload(with_past, outputs):
    rng = np.random.default_rng(0)
    f32 = ir.TensorType(ir.DataType.FLOAT)
    X = ir.Value(name="X", type=f32, shape=ir.Shape([1, 5, 4]))
    P = ir.Value(name="Past", type=f32, shape=ir.Shape([1, 3, 4])) if with_past else None
    Fs = [ir.Value(name=f"F{w}", const_value=ir.tensor(rng.uniform(-1, 1, (w, 4)).astype(np.float32))) for w in (6, 12, 24)]
    n = ir.Node("n6onnx", "FFTMix", [X, *Fs] + ([P] if with_past else []), attributes=[ir.AttrInt64("causal", 1)],
                num_outputs=outputs)
    for o, name in zip(n.outputs, ("Y", "Present")):
        o.name, o.type, o.shape = name, f32, ir.Shape([None] * 3)
    g = ir.Graph([X] + ([P] if with_past else []), list(n.outputs), nodes=[n], initializers=Fs, name="g",
                 opset_imports={"": 18})
    m = ir.Model(g, ir_version=9)
    assert finalize(m) == ["FFTMix"]
    want = "causal" + ("_past" if with_past else "") + ("_present" if outputs == 2 else "")
    assert n.overload == want and m.ir_version == 10 and list(m.functions) == [("n6onnx", "FFTMix", want)]
    proto = ir.serde.serialize_model(m)
    check(proto)
    feeds = {"X": rng.normal(size=(1, 5, 4)).astype(np.float32)}
    if with_past:
        feeds["Past"] = rng.normal(size=(1, 3, 4)).astype(np.float32)
    got = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    ref = REGISTRY["FFTMix"].reference(feeds["X"], *[f.const_value.numpy() for f in Fs], feeds.get("Past"), causal=1)
    for gv, rv in zip(got, ref):
        np.testing.assert_allclose(gv, rv, rtol=1e-5, atol=1e-5)
