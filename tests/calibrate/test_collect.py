"""Collection of intermediate tensors from onnxruntime, against running the whole model."""

import numpy as np
import onnx_ir as ir
import pytest

from n6onnx.calibrate import collect
from n6onnx.passes.ffn import prune


def test_sweep_from_a_cut_equals_running_the_whole_prefix(zoo_export, token_npz):
    from n6onnx import feeds, runtime

    src = zoo_export("minilm", "dynamo18")
    model = ir.load(str(src))
    blocks = prune.map_blocks(model)
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


def test_models_over_the_protobuf_limit_are_run_from_external_data(zoo_export, token_npz, tmp_path, monkeypatch):
    """Calibration sessions are built from in-memory models; above 2 GB protobuf cannot serialise
    them, so they go through a temporary file with external data. Forced here with a tiny limit:
    the calibrated model must be byte-identical to the in-memory path, and nothing is left behind."""
    import glob
    import tempfile

    import n6onnx
    from n6onnx import io

    src = zoo_export("bert", "dynamo18")
    data = token_npz("bert", 4)
    n6onnx.rewrite(src, tmp_path / "inline.onnx", ["gelu=phi6"], calibrate=data)
    monkeypatch.setattr(io, "EXTERNAL_DATA_THRESHOLD", 0)
    import onnx

    sessions, save = [], onnx.save_model

    def spy(proto, path, *a, **k):  # count the sessions built from a temporary external-data file
        if "n6onnx-session-" in str(path):
            sessions.append(path)
        return save(proto, path, *a, **k)

    monkeypatch.setattr(onnx, "save_model", spy)
    before = set(glob.glob(f"{tempfile.gettempdir()}/n6onnx-session-*"))
    n6onnx.rewrite(src, tmp_path / "external.onnx", ["gelu=phi6", "ffn=phi-bottleneck:2", "attention=fftmix:@0"],
                   calibrate=data)
    assert (tmp_path / "external.onnx.data").is_file()
    # (the output itself is saved inline: the lowered limit would otherwise apply to it too)
    n6onnx.rewrite(src, tmp_path / "external_gelu.onnx", ["gelu=phi6"], calibrate=data, external_data=False)
    assert (tmp_path / "external_gelu.onnx").read_bytes() == (tmp_path / "inline.onnx").read_bytes()
    assert len(sessions) >= 3  # input specs, the original's collection, the sweep steps, ...
    import gc

    gc.collect()
    assert set(glob.glob(f"{tempfile.gettempdir()}/n6onnx-session-*")) == before


def test_a_failed_temporary_copy_is_a_clear_error(zoo_export, token_npz, tmp_path, monkeypatch):
    """Disk full while writing the external-data copy: a clear error, no output, no temp folder."""
    import glob
    import tempfile

    import onnx
    import pytest

    import n6onnx
    from n6onnx import io
    from n6onnx.errors import N6Error

    monkeypatch.setattr(io, "EXTERNAL_DATA_THRESHOLD", 0)

    def full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(onnx, "save_model", full)
    before = set(glob.glob(f"{tempfile.gettempdir()}/n6onnx-session-*"))
    with pytest.raises(N6Error, match="2 GB limit.*No space left"):
        n6onnx.rewrite(zoo_export("bert", "dynamo18"), tmp_path / "o.onnx", ["gelu=phi6"],
                       calibrate=token_npz("bert", 2))
    assert not (tmp_path / "o.onnx").exists()
    assert set(glob.glob(f"{tempfile.gettempdir()}/n6onnx-session-*")) == before


def test_subgraph_proto_equals_pruning_the_whole_model_and_copies_only_what_it_keeps(zoo_export):
    src = zoo_export("minilm", "dynamo18")
    model = ir.load(str(src))
    blocks = prune.map_blocks(model)
    proto = ir.to_proto(model)
    names = [blocks[1].up.node.outputs[0].name, blocks[1].residual.name]
    for cut in (None, {blocks[0].residual.name: np.zeros((2, 3, 8), np.float32)}):
        got = collect.subgraph_proto(model, names, cut)
        want = collect.with_outputs(proto, names, cut)
        assert [n.SerializeToString() for n in got.graph.node] == [n.SerializeToString() for n in want.graph.node]
        assert sorted(t.SerializeToString() for t in got.graph.initializer) == \
            sorted(t.SerializeToString() for t in want.graph.initializer)
        assert [v.name for v in got.graph.input] == [v.name for v in want.graph.input]
        assert [v.name for v in got.graph.output] == names
    # from the cut on, the weights upstream of it (the embeddings, layer 0's attention) are not serialised
    got = collect.subgraph_proto(model, names, {blocks[0].residual.name: np.zeros((2, 3, 8), np.float32)})
    kept = {t.name for t in got.graph.initializer}
    assert blocks[0].up.weight.name in kept and len(kept) < len(model.graph.initializers) // 2
    assert not any("embeddings" in k or "layer.0.attention" in k for k in kept)


@pytest.mark.parametrize("shift", [0.0, 3.0, -5.0])
def test_dynamic_uint8_rounds_as_onnxruntime_dynamic_quantize_linear(shift):
    """The fit's rounded rows against ORT itself: DynamicQuantizeLinear, then DequantizeLinear."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    x = (np.random.default_rng(0).standard_normal((2, 16, 24)) * 2 + shift).astype(np.float32)
    x[0, 0, :3] = [0.5, -0.5, 1.5]  # ties
    g = helper.make_graph(
        [helper.make_node("DynamicQuantizeLinear", ["x"], ["q", "s", "z"]),
         helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(x.shape))])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 20)])
    want = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    got = collect.dynamic_uint8(x)
    assert np.abs(got - x).max() > 0  # it does round
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def test_collect_returns_the_largest_uint8_code_of_each_rounded_column():
    """``("codes", name)``: per column, the largest code onnxruntime's DynamicQuantizeLinear gives that tensor
    over all batches (ORT itself is the reference), masked positions excluded."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    g = helper.make_graph([helper.make_node("Mul", ["x", "k"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 5, 12]),
                           helper.make_tensor_value_info("attention_mask", TensorProto.INT64, [2, 5])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 5, 12])],
                          [helper.make_tensor("k", TensorProto.FLOAT, [], [1.5])])
    proto = helper.make_model(g, opset_imports=[helper.make_opsetid("", 20)])
    rng = np.random.default_rng(4)
    mask = np.ones((2, 5), np.int64)
    mask[1, 3:] = 0
    batches = [{"x": (rng.standard_normal((2, 5, 12)) + shift).astype(np.float32), "attention_mask": mask}
               for shift in (0.0, 2.0, -1.0)]
    got = collect.collect(proto, ["y"], batches, rounded=["y"])
    dq = helper.make_graph([helper.make_node("DynamicQuantizeLinear", ["y"], ["q", "s", "z"])], "q",
                           [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 5, 12])],
                           [helper.make_tensor_value_info("q", TensorProto.UINT8, [2, 5, 12])])
    sess = ort.InferenceSession(helper.make_model(dq, opset_imports=[helper.make_opsetid("", 20)]).SerializeToString(),
                                providers=["CPUExecutionProvider"])
    codes = [sess.run(["q"], {"y": b["x"] * np.float32(1.5)})[0][mask.astype(bool)] for b in batches]
    want = np.concatenate(codes, 0).max(0).astype(np.float32)
    np.testing.assert_array_equal(got[("codes", "y")], want)
    assert got["y"].shape == (3 * int(mask.sum()), 12)
