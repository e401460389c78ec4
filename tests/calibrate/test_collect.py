"""Collection of intermediate tensors from onnxruntime, against running the whole model."""

import numpy as np
import onnx_ir as ir

from n6onnx.calibrate import collect
from n6onnx.calibrate import bottleneck


def test_sweep_from_a_cut_equals_running_the_whole_prefix(zoo_export, token_npz):
    from n6onnx import feeds, runtime

    src = zoo_export("minilm", "dynamo18")
    model = ir.load(str(src))
    blocks = bottleneck.map_blocks(model)
    assert len(blocks) >= 2
    batches = feeds.load_npz(token_npz("minilm", 4), runtime.InferenceSession(str(src)))
    sweep = collect.Sweep(batches)
    proto = ir.to_proto(model)
    for i, b in enumerate(blocks):
        names = [b.up.node.outputs[0].name, b.residual.name]
        up = names[0]
        got = sweep.step(model, names, b.residual.name, full=[up])
        want = collect.collect(proto, names, batches, full=[up])
        for n in names:
            np.testing.assert_allclose(got[n], want[n], rtol=1e-4, atol=1e-4)
        # per batch, unflattened (padding kept): what FFT-Mix calibration needs
        assert len(got[("full", up)]) == len(batches)
        for g, w, feed in zip(got[("full", up)], want[("full", up)], batches):
            assert g.shape[:2] == feed["input_ids"].shape
            np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)
        assert ("full", b.residual.name) not in got  # the cut is kept by the sweep, returned only if asked
        if i:  # from the second step on, the pruned model starts at the previous residual stream
            sub = collect.with_outputs(proto, names, {blocks[i - 1].residual.name: np.zeros((1,), np.float32)})
            assert blocks[i - 1].residual.name in [v.name for v in sub.graph.input]
            assert len(sub.graph.node) < len(collect.with_outputs(proto, names).graph.node)
