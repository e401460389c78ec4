"""attention=drop and block=drop, checked against ORT running the (canonical) original graph with the
dropped block's contribution removed by hand: the value the block adds (or the stream leaving the
layer) is fed from outside, computed by separate ORT runs of the original."""

from __future__ import annotations

import pathlib

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from click.testing import CliRunner

import n6onnx
from n6onnx.testing import zoo
from n6onnx.api import canonicalize
from n6onnx.cli import main
from n6onnx.errors import BadArgumentError

MODELS = [("bert", "dynamo20"), ("gpt2", "dynamo20"), ("llama", "dynamo18")]  # post-LN, pre-LN, pre-RMSNorm


def _feeds(model: str, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    f = zoo.example_inputs(model, 2, 16)
    f["input_ids"] = rng.integers(1, 1000, size=(2, 16), dtype=np.int64)
    f["attention_mask"] = np.ones((2, 16), np.int64)
    f["attention_mask"][1, 12:] = 0  # padding: the bias is a mean over real tokens only
    return f


def _npz(path: pathlib.Path, model: str, n: int, seed: int) -> pathlib.Path:
    arrays = {}
    for k in range(n):
        for name, a in _feeds(model, seed * 100 + k).items():
            arrays[f"{name}/{k}"] = a
    np.savez(path, **arrays)
    return path


def _canonical(src, path) -> onnx.ModelProto:
    m = canonicalize(ir.load(src))
    proto = ir.to_proto(m)
    onnx.save(proto, path)
    return proto


def _run(proto_or_path, feeds, names=None) -> list[np.ndarray]:
    src = proto_or_path.SerializeToString() if isinstance(proto_or_path, onnx.ModelProto) else str(proto_or_path)
    sess = ort.InferenceSession(src, providers=["CPUExecutionProvider"])
    return sess.run(names, {k: v for k, v in feeds.items() if k in {i.name for i in sess.get_inputs()}})


def _values(proto: onnx.ModelProto, names: list[str], feeds) -> list[np.ndarray]:
    p = onnx.ModelProto()
    p.CopyFrom(proto)
    for n in names:
        p.graph.output.append(onnx.helper.make_empty_tensor_value_info(n))
    return _run(p, feeds, names)


def _override(proto: onnx.ModelProto, name: str, consumer_filter=None) -> onnx.ModelProto:
    """The original with the uses of value ``name`` reading a new graph input ``override``."""
    p = onnx.ModelProto()
    p.CopyFrom(proto)
    for node in p.graph.node:
        if consumer_filter is not None and not consumer_filter(node):
            continue
        for i, x in enumerate(node.input):
            if x == name:
                node.input[i] = "override"
    for o in p.graph.output:
        if o.name == name:  # a graph output: an Identity keeps its name
            o_name = o.name
            for node in p.graph.node:
                for j, y in enumerate(node.output):
                    if y == o_name:
                        node.output[j] = o_name + "__ref"
            p.graph.node.append(onnx.helper.make_node("Identity", ["override"], [o_name]))
    p.graph.input.append(onnx.helper.make_tensor_value_info("override", onnx.TensorProto.FLOAT, None))
    return p


def _real_mean(values: list[np.ndarray], masks: list[np.ndarray]) -> np.ndarray:
    rows = [v.reshape(m.shape[0], m.shape[1], -1)[m.astype(bool)] for v, m in zip(values, masks)]
    return np.concatenate(rows).astype(np.float64).mean(0)


@pytest.mark.parametrize("model,exporter", MODELS)
@pytest.mark.parametrize("calibrated", [False, True])
def test_attention_drop_equals_original_without_the_block(model, exporter, calibrated, zoo_export, tmp_path):
    src = zoo_export(model, exporter)
    canon = _canonical(src, tmp_path / "canon.onnx")
    calib = _npz(tmp_path / "calib.npz", model, 3, 1) if calibrated else None
    _, rep = n6onnx.rewrite(src, tmp_path / "drop.onnx", ["attention=drop:@1"], calibrate=calib)
    att = rep.reports["attention"]
    assert att.rewritten == 1 and att.sites[0].detail["index"] == 1 and att.sites[0].detail["bias"] == calibrated
    out_name, stream = att.sites[0].detail["output"], att.sites[0].detail["stream"]
    bias = np.zeros(1, np.float32)
    if calibrated:
        data = np.load(calib)
        batches = [{n: data[f"{n}/{k}"] for n in _feeds(model, 0)} for k in range(3)]
        bias = _real_mean([_values(canon, [out_name], f)[0] for f in batches],
                          [f["attention_mask"] for f in batches]).astype(np.float32)
    ref_model = _override(canon, out_name, lambda n: n.op_type == "Add" and stream in n.input)
    feeds = _feeds(model, 7)
    shape = _values(canon, [out_name], feeds)[0].shape
    want = _run(ref_model, {**feeds, "override": np.broadcast_to(bias, shape).astype(np.float32)})
    got = _run(tmp_path / "drop.onnx", feeds)
    assert [o.name for o in onnx.load(tmp_path / "drop.onnx").graph.input] == [i.name for i in canon.graph.input]
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)
    assert np.abs(got[0] - _run(canon, feeds)[0]).max() > 1e-3  # the block did contribute


@pytest.mark.parametrize("model,exporter", MODELS)
@pytest.mark.parametrize("index", [0, 1])
def test_block_drop_equals_original_without_the_layer(model, exporter, index, zoo_export, tmp_path):
    src = zoo_export(model, exporter)
    canon = _canonical(src, tmp_path / "canon.onnx")
    calib = _npz(tmp_path / "calib.npz", model, 3, 1)
    _, rep = n6onnx.rewrite(src, tmp_path / "drop.onnx", [f"block=drop:@{index}"], calibrate=calib)
    blk = rep.reports["block"]
    assert blk.rewritten == 1 and blk.seen == 2
    d = blk.sites[0].detail
    data = np.load(calib)
    batches = [{n: data[f"{n}/{k}"] for n in _feeds(model, 0)} for k in range(3)]
    deltas = [y - x for x, y in (_values(canon, [d["enters"], d["leaves"]], f) for f in batches)]
    bias = _real_mean(deltas, [f["attention_mask"] for f in batches]).astype(np.float32)
    feeds = _feeds(model, 7)
    x = _values(canon, [d["enters"]], feeds)[0]
    want = _run(_override(canon, d["leaves"]), {**feeds, "override": x + bias})
    got = _run(tmp_path / "drop.onnx", feeds)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)


def test_layers_chain_and_inspect_scores(zoo_export, tmp_path):
    src = zoo_export("bert", "dynamo20")
    calib = _npz(tmp_path / "calib.npz", "bert", 2, 1)
    rep = n6onnx.inspect(src, calibrate=calib)
    sites = rep.kinds["attention"].sites
    assert all(-1 <= s.detail["redundancy"] <= 1 and -1 <= s.detail["layer_redundancy"] <= 1 for s in sites)
    _, r = n6onnx.rewrite(src, None, ["block=drop:@0,1"])
    d = [s.detail for s in r.reports["block"].sites]
    assert d[0]["leaves"] == d[1]["enters"]  # layer 1 starts where layer 0 ends
    # drop:N picks the highest layer_redundancy; deterministic bytes
    best = max(sites, key=lambda s: (s.detail["layer_redundancy"], -s.detail["index"])).detail["index"]
    _, r1 = n6onnx.rewrite(src, tmp_path / "a.onnx", ["block=drop:1"], calibrate=calib)
    _, r2 = n6onnx.rewrite(src, tmp_path / "b.onnx", ["block=drop:1"], calibrate=calib)
    assert [s.detail["index"] for s in r1.reports["block"].sites] == [best]
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()


def test_disjoint_targets_compose_and_overlaps_are_refused(zoo_export, tmp_path):
    src = zoo_export("bert", "dynamo20")
    feeds = _feeds("bert", 3)
    _, rep = n6onnx.rewrite(src, tmp_path / "mix.onnx", ["attention=fftmix:@0", "attention=drop:@1"])
    att = rep.reports["attention"]
    assert att.rewritten == 2 and sorted(s.rule for s in att.sites) == ["attention.drop", "attention.fftmix"]
    _, ref = n6onnx.rewrite(src, tmp_path / "f.onnx", ["attention=fftmix:@0"])
    _, _ = n6onnx.rewrite(tmp_path / "f.onnx", tmp_path / "fd.onnx", ["attention=drop:@0"])  # block 1 is the 1st left
    np.testing.assert_allclose(_run(tmp_path / "mix.onnx", feeds)[0], _run(tmp_path / "fd.onnx", feeds)[0],
                               rtol=1e-5, atol=1e-5)
    for passes in (["attention=fftmix:@1", "attention=drop:@1"], ["block=drop:@0", "attention=drop:@0"],
                   ["attention=drop:@1", "block=drop:@1"], ["attention=drop:@0", "attention=fftmix:0,1"]):
        with pytest.raises(BadArgumentError, match="already rewritten"):
            n6onnx.rewrite(src, tmp_path / "no.onnx", passes)
    assert not (tmp_path / "no.onnx").exists()


@pytest.mark.parametrize("bad", ["attention=drop", "attention=drop:0", "attention=drop:x", "block=drop:@",
                                 "block=keep:1"])
def test_bad_options_and_data_less_ranking(bad, zoo_export, tmp_path):
    src = zoo_export("bert", "dynamo20")
    r = CliRunner().invoke(main, ["rewrite", str(src), "-o", str(tmp_path / "o.onnx"), "--pass", bad])
    assert r.exit_code != 0 and "Traceback" not in r.output and not (tmp_path / "o.onnx").exists()
    with pytest.raises(BadArgumentError, match="calibration data"):
        n6onnx.rewrite(src, None, ["block=drop:1"])
