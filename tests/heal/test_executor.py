"""The student executor equals onnxruntime on every zoo export, original and rewritten."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnx_ir as ir
import pytest
import torch
from click.testing import CliRunner

import n6onnx
from n6onnx import feeds as F
from n6onnx.cli import main
from n6onnx.errors import BadArgumentError
from n6onnx.heal import executor
from n6onnx.heal.executor import GraphModule, UnsupportedOpError, check_supported, unsupported_ops
from n6onnx.ops import DOMAIN, REGISTRY
from n6onnx.runtime import session_for

from .test_heal import _npz

MODELS = ["bert", "gpt2", "geglu", "llama", "minilm", "mixtral", "vit"]
EXPORTERS = ["dynamo18", "dynamo20", "torchscript"]


def _compare(proto: onnx.ModelProto, seed: int = 0, device: str = "cpu") -> float:
    """The student's largest output error relative to onnxruntime's (the student on ``device``)."""
    s = session_for(proto)
    fd = F.random_feeds(s, 1, seed=seed)[0]
    ref = s.run(None, fd)
    with torch.no_grad():
        out = GraphModule(proto).to_device(device)(fd)
    assert list(out) == [o.name for o in s.get_outputs()]
    assert all(o.device.type == torch.device(device).type for o in out.values())
    return max(float(np.abs(r - o.cpu().numpy()).max() / (np.abs(r).max() + 1e-12)) for r, o in zip(ref, out.values()))


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("model", MODELS)
def test_original_equals_ort(zoo_export, model, exporter):
    assert _compare(onnx.load(zoo_export(model, exporter))) < 1e-5


REWRITES = [("bert", "gelu=phi6"), ("gpt2", "gelu=phi6"), ("geglu", "gelu=zetaln2"), ("vit", "gelu=phi6"),
            ("llama", "ffn=phi-bottleneck:1"), ("gpt2", "ffn=phi-bottleneck:1"), ("bert", "attention=fftmix:@1"),
            ("vit", "attention=fftmix:@1"), ("bert", "attention=egyptian"), ("mixtral", "moe=phi"),
            ("mixtral", "moe=egyptian")]


@pytest.mark.parametrize("exporter", ["dynamo20", "torchscript"])
@pytest.mark.parametrize("model,spec", REWRITES)
def test_rewritten_equals_ort(zoo_export, model, spec, exporter):
    m, rep = n6onnx.rewrite(zoo_export(model, exporter), None, [spec])
    assert sum(rep.rewritten.values()) >= 1
    proto = ir.to_proto(m)
    if not spec.startswith("ffn"):  # the bottleneck only prunes units: no n6 node in a SiLU model
        assert any(n.domain == "n6onnx" for n in proto.graph.node)
    assert _compare(proto) < 1e-5


def test_unsupported_op_is_refused_by_name():
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 3])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 3])
    g = onnx.helper.make_graph([onnx.helper.make_node("Relu", ["x"], ["r"]),
                                onnx.helper.make_node("Hardmax", ["r"], ["y"])], "g", [x], [y])
    m = onnx.helper.make_model(g, opset_imports=[onnx.helper.make_opsetid("", 18)])
    assert unsupported_ops(m) == ["ai.onnx:Hardmax"]
    with pytest.raises(UnsupportedOpError, match="Hardmax"):
        check_supported(m)
    with pytest.raises(UnsupportedOpError, match="Hardmax"):
        GraphModule(m)


def test_gradients_reach_only_trainable(zoo_export):
    proto = onnx.load(zoo_export("bert", "dynamo20"))
    names = [t.name for t in proto.graph.initializer if t.data_type == onnx.TensorProto.FLOAT and len(t.dims) == 2]
    g = GraphModule(proto, trainable=names[:1])
    fd = F.random_feeds(session_for(proto), 1, seed=0)[0]
    out = next(iter(g(fd).values()))
    out.pow(2).mean().backward()
    assert g.parameter(names[0]).grad is not None and float(g.parameter(names[0]).grad.abs().sum()) > 0
    assert all(g.parameter(n).grad is None for n in names[1:])


def test_an_op_form_the_student_cannot_run_is_a_clear_error():
    """Pad with mode=reflect: the op type is supported, this form is not: UnsupportedOpError (an
    N6Error, one line in the CLI), never NotImplementedError."""
    from onnx import TensorProto, helper

    g = helper.make_graph(
        [helper.make_node("Pad", ["x", "pads"], ["y"], mode="reflect")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 6])],
        [helper.make_tensor("pads", TensorProto.INT64, [4], [0, 1, 0, 1])])
    proto = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    module = GraphModule(proto)
    with pytest.raises(UnsupportedOpError, match="Pad with a mode other than constant"):
        module({"x": torch.zeros(1, 4)})


def test_causal_fftmix_node_runs_with_past():
    """A causal FFTMix node with Past/PastLength bound and both outputs runs in the student (heal's
    executor passes the node's inputs and attributes to n6onnx.torch.functional) like the reference."""
    rng = np.random.default_rng(7)
    X = rng.normal(size=(2, 4, 5)).astype(np.float32)
    past = rng.normal(size=(2, 6, 5)).astype(np.float32)
    taps = [rng.uniform(-1, 1, (w, 5)).astype(np.float32) for w in (6, 12, 24)]
    f = onnx.TensorProto.FLOAT
    inits = [onnx.numpy_helper.from_array(t, f"F{w}") for t, w in zip(taps, (6, 12, 24))]
    inits.append(onnx.numpy_helper.from_array(np.array(30, np.int64), "pl"))
    node = onnx.helper.make_node("FFTMix", ["X", "F6", "F12", "F24", "Past", "pl"], ["Y", "Present"], domain="n6onnx", causal=1)
    g = onnx.helper.make_graph([node], "g", [onnx.helper.make_tensor_value_info("X", f, [2, 4, 5]), onnx.helper.make_tensor_value_info("Past", f, [2, 6, 5])],
                      [onnx.helper.make_tensor_value_info("Y", f, [2, 4, 15]), onnx.helper.make_tensor_value_info("Present", f, [2, None, 5])],
                      initializer=inits)
    m = onnx.helper.make_model(g, opset_imports=[onnx.helper.make_opsetid("", 18), onnx.helper.make_opsetid("n6onnx", 1)])
    out = GraphModule(m)({"X": torch.from_numpy(X), "Past": torch.from_numpy(past)})
    ref = n6onnx.ops.REGISTRY["FFTMix"].reference(X, *taps, past, np.array(30, np.int64), causal=1)
    np.testing.assert_allclose(out["Y"].detach().numpy(), ref[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(out["Present"].detach().numpy(), ref[1])


def test_causal_gqa_attention_node_runs_with_its_attributes():
    """The student runs n6 nodes through n6onnx.torch.functional with every attribute of the node:
    a causal grouped-query EgyptianAttention decode chunk equals the op's numpy reference."""
    spec = REGISTRY["EgyptianAttention"]
    sample = next(s for s in spec.samples("float32") if s.id == "causal_chunk_Lq7_Lk30")
    vis = [onnx.helper.make_tensor_value_info(k, onnx.helper.np_dtype_to_tensor_dtype(v.dtype), list(v.shape))
           for k, v in sample.feeds.items()]
    node = onnx.helper.make_node(spec.name, list(sample.feeds), ["Y"], domain=DOMAIN, **sample.attrs)
    out = onnx.helper.make_tensor_value_info("Y", onnx.TensorProto.FLOAT, [None] * 3)
    m = onnx.helper.make_model(onnx.helper.make_graph([node], "g", vis, [out]),
                               opset_imports=[onnx.helper.make_opsetid("", 18), onnx.helper.make_opsetid(DOMAIN, 1)],
                               functions=[spec.function(18)])
    with torch.no_grad():
        got = GraphModule(m)(sample.feeds)["Y"].numpy()
    want = spec.reference(*[sample.feeds.get(n) for n in spec.inputs], **sample.attrs)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_bf16_training_forward_is_close_and_leaves_inference_float(zoo_export):
    """``train_dtype``: where gradients are recorded, the student runs under bf16 autocast (outputs
    come back float32, within bf16's rounding of the float run, gradients reach the weights);
    without gradients it is the float32 student, bit for bit."""
    proto = onnx.load(zoo_export("bert", "dynamo20"))
    s = session_for(proto)
    fd = F.random_feeds(s, 1, seed=0)[0]
    name = next(t.name for t in proto.graph.initializer if t.name.endswith("weight") and len(t.dims) == 2)
    ref_m, m = GraphModule(proto), GraphModule(proto, trainable=[name])
    m.train_dtype = torch.bfloat16
    with torch.no_grad():
        ref = next(iter(ref_m(fd).values()))
        assert torch.equal(next(iter(m(fd).values())), ref)
    out = next(iter(m(fd).values()))
    assert out.dtype == torch.float32 and not torch.equal(out, ref)
    err = float((out.detach() - ref).abs().max() / ref.abs().max())
    assert err < 0.05  # bf16 keeps 8 significant bits: ~0.4% per rounding, a few roundings deep
    out.pow(2).mean().backward()
    g = m.parameter(name).grad
    assert g is not None and g.dtype == torch.float32 and float(g.abs().max()) > 0


def test_heal_dtype_reaches_the_student(zoo_export, tmp_path, monkeypatch):
    """``--heal-dtype bfloat16`` sets the student's training forward to bf16 autocast (the heal runs and
    reports it); an unknown dtype is a usage error in the CLI and a BadArgumentError in the API."""
    seen = []
    set_dtype = executor.GraphModule.set_train_dtype

    def spy(self, name):
        set_dtype(self, name)
        seen.append(self.train_dtype)

    monkeypatch.setattr(executor.GraphModule, "set_train_dtype", spy)
    src = str(zoo_export("bert", "dynamo20"))
    n6onnx.rewrite(src, tmp_path / "p.onnx", ["gelu=phi6"])
    data = str(_npz(tmp_path / "d.npz", 8, 1))
    args = ["heal", str(tmp_path / "p.onnx"), "--teacher", src, "--calibrate", data, "--threads", "1",
            "--heal-steps", "2"]
    r = CliRunner().invoke(main, args + ["-o", str(tmp_path / "h.onnx"), "--heal-dtype", "bfloat16", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["config"]["train_dtype"] == "bfloat16" and seen == [torch.bfloat16]
    r = CliRunner().invoke(main, args + ["-o", str(tmp_path / "h2.onnx"), "--heal-dtype", "float16"])
    assert r.exit_code == 2 and "Traceback" not in r.output and not (tmp_path / "h2.onnx").exists()
    with pytest.raises(BadArgumentError, match="float16"):
        GraphModule(onnx.load(src)).set_train_dtype("float16")
