"""n6onnx.torch modules -> n6onnx.torch.export -> onnxruntime equals torch, with the n6 library
(the kernels) and without it (the model-local function fallbacks); the n6 modules stay one n6onnx
node each (no decomposition)."""

from __future__ import annotations

import collections
import subprocess
import sys

import numpy as np
import onnx
import pytest

from ..conftest import require

torch = require("torch")

import n6onnx  # noqa: E402
import n6onnx.torch as nt  # noqa: E402
from n6onnx.errors import N6Error  # noqa: E402
from n6onnx.ops import DOMAIN, DOMAIN_VERSION, REGISTRY  # noqa: E402

D, HEADS = 24, 4


class Encoder(torch.nn.Module):
    """Two pre-LN layers: FFT-Mix mixer + Phi6 FFN (4/3 bottleneck, BiasPhi6), then Egyptian
    attention (padding mask) + egyptian-routed MoE; a ZetaLn2 head."""

    def __init__(self):
        super().__init__()
        hid = round(4 * D / 3)
        self.ln = torch.nn.ModuleList(torch.nn.LayerNorm(D) for _ in range(4))
        self.mix = nt.FFTMix(D, init_std=0.3)
        self.mix_proj = torch.nn.Linear(3 * D, D)
        self.fc1 = torch.nn.Linear(D, hid, bias=False)
        self.act = nt.Phi6(hid)
        self.fc2 = torch.nn.Linear(hid, D)
        self.attn = nt.EgyptianAttention(D, HEADS, window=8, head_kinds=[0, 1, 2, 1])
        self.moe = nt.MoE(D, 16, 4, routing="egyptian", activation="phi6")
        self.head = nt.ZetaLn2()
        with torch.no_grad():  # nonzero biases, so that BiasPhi6 and MoE's b1/b2 matter
            for p in (self.act.bias, self.moe.b1, self.moe.b2):
                p.normal_(0, 0.3)

    def forward(self, x, mask):
        x = x + self.mix_proj(self.mix(self.ln[0](x)))
        x = x + self.fc2(self.act(self.fc1(self.ln[1](x))))
        x = x + self.attn(self.ln[2](x), mask)
        x = x + self.moe(self.ln[3](x))
        return self.head(x)


def _feeds(B, L, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, L, D, generator=g)
    mask = torch.ones(B, L, dtype=torch.int64)
    mask[0, L - L // 3:] = 0
    return x, mask


def _n6_nodes(proto: onnx.ModelProto) -> collections.Counter:
    return collections.Counter(n.op_type for n in proto.graph.node if n.domain == DOMAIN)


def _run(proto: onnx.ModelProto, feeds: dict, library: bool) -> np.ndarray:
    s = n6onnx.InferenceSession(proto.SerializeToString(), use_library=library, threads=1)
    assert s.uses_library == library
    return s.run(None, feeds)[0]


@pytest.fixture(scope="module")
def encoder_export(tmp_path_factory):
    torch.manual_seed(0)
    model = Encoder().eval()
    batch, seq = torch.export.Dim("batch", min=1, max=64), torch.export.Dim("seq", min=2, max=1024)
    path = tmp_path_factory.mktemp("export") / "encoder.onnx"
    proto = nt.export(model, _feeds(2, 30, 0), path, input_names=["x", "mask"],
                      dynamic_shapes=({0: batch, 1: seq}, {0: batch, 1: seq}))
    return model, proto, path


def test_exported_graph_has_the_n6_nodes_and_their_functions(encoder_export):
    _, proto, path = encoder_export
    assert _n6_nodes(proto) == {"FFTMix": 1, "BiasPhi6": 1, "EgyptianAttention": 1, "MoE": 1, "ZetaLn2": 1}
    assert {(f.domain, f.name) for f in proto.functions} == {(DOMAIN, n) for n in _n6_nodes(proto)}
    assert {o.domain: o.version for o in proto.opset_import}[DOMAIN] == DOMAIN_VERSION
    # no decomposition: nothing of the ops' math is left in the main graph
    assert not {"FFT", "DFT", "Softmax", "Clip", "Erf", "TopK"} & {n.op_type for n in proto.graph.node}
    attn = next(n for n in proto.graph.node if n.op_type == "EgyptianAttention")
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in attn.attribute}
    assert attrs == {"num_heads": HEADS, "window": 8, "scale": 0.0, "head_kinds": [0, 1, 2, 1], "causal": 0, "sinks": 1,
                     "kv_heads": 0}
    moe = next(n for n in proto.graph.node if n.op_type == "MoE")
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in moe.attribute}
    assert attrs["routing"] == b"egyptian" and attrs["activation"] == b"phi6"
    assert onnx.load(str(path)) == proto  # the written file is the returned model


@pytest.mark.parametrize("library", [True, False], ids=["library", "fallback"])
@pytest.mark.parametrize("B, L", [(2, 30), (3, 7), (1, 97)])
def test_round_trip_equals_torch(encoder_export, library, B, L):
    model, proto, _ = encoder_export
    x, mask = _feeds(B, L, seed=B * 1000 + L)
    with torch.no_grad():
        want = model(x, mask).numpy()
    got = _run(proto, {"x": x.numpy(), "mask": mask.numpy()}, library)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


class _Parallel(torch.nn.Module):
    """Several modules on the same input, one output each (one export for all of them)."""

    def __init__(self, *modules):
        super().__init__()
        self.branches = torch.nn.ModuleList(modules)

    def forward(self, x):
        return tuple(m(x) for m in self.branches)


def test_single_modules_round_trip():
    torch.manual_seed(3)
    # EgyptianAttention without a mask: the export emits an all-ones one for the fallback
    model = _Parallel(nt.Phi6(), nt.ZetaLn2(12), nt.FFTMix(12, init_std=0.5), nt.EgyptianAttention(12, 6)).eval()
    with torch.no_grad():
        model.branches[1].bias.normal_()
    dims = {0: torch.export.Dim("batch", min=1, max=64), 1: torch.export.Dim("seq", min=2, max=512)}
    proto = nt.export(model, (torch.randn(2, 9, 12),), input_names=["x"], dynamic_shapes=(dims,))
    assert _n6_nodes(proto) == {"Phi6": 1, "BiasZetaLn2": 1, "FFTMix": 1, "EgyptianAttention": 1}
    x = torch.randn(3, 70, 12) * 2  # L = 70 > the default window 64; Phi6's clamp is reached
    with torch.no_grad():
        want = [y.numpy() for y in model(x)]
    for library in (True, False):
        s = n6onnx.InferenceSession(proto.SerializeToString(), use_library=library, threads=1)
        for got, w, kind in zip(s.run(None, {"x": x.numpy()}), want, ("Phi6", "ZetaLn2", "FFTMix", "Attention")):
            np.testing.assert_allclose(got, w, rtol=1e-4, atol=1e-4, err_msg=f"{kind} library={library}")


@pytest.mark.parametrize("make, op_type", [
    (lambda: nt.Phi6(12), "BiasPhi6"),
    (lambda: nt.FFTMix(12, init_std=0.5), "FFTMix"),
], ids=["bias_phi6", "fftmix"])
def test_float16_round_trip(make, op_type):
    """A float16 model: the op computes in float32 and rounds once, in torch and in onnxruntime."""
    torch.manual_seed(4)
    module = make().half().eval()
    proto = nt.export(module, (torch.randn(2, 9, 12).half(),), input_names=["x"],
                      dynamic_shapes=({1: torch.export.Dim("seq", min=2, max=512)},))
    assert _n6_nodes(proto) == {op_type: 1}
    x = (torch.randn(2, 40, 12) * 2).half()
    with torch.no_grad():
        want = module(x).numpy()
    tol = REGISTRY[op_type].tolerance("float16")
    for library in (True, False):
        got = _run(proto, {"x": x.numpy()}, library)
        assert got.dtype == np.float16
        np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float64), rtol=tol.rtol, atol=tol.atol)


class _MoEOnly(torch.nn.Module):
    def __init__(self, **kw):
        super().__init__()
        self.moe = nt.MoE(16, 12, 4, **kw)
        with torch.no_grad():
            for p in (self.moe.b1, self.moe.b2):
                if p is not None:
                    p.normal_(0, 0.3)

    def forward(self, x):
        return self.moe(x)


@pytest.mark.parametrize("variants", [
    [dict(activation="swiglu", k=3, normalize=False),
     dict(group=3, drop=2, activation="silu", importance=[0.5, 1, 2, 1.5, 1, 1, 2, 0.1, 1, 3, 1, 0.7])],
    [dict(bias=False, activation="gelu_tanh", k=1), dict(bias=False, activation="swiglu", k=2)],
], ids=["swiglu+group_drop", "no_bias"])
def test_moe_variants_round_trip(variants):
    torch.manual_seed(1)
    model = _Parallel(*(_MoEOnly(**kw) for kw in variants)).eval()
    proto = nt.export(model, (torch.randn(2, 5, 16),), input_names=["x"],
                      dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=64)},))
    assert _n6_nodes(proto) == {"MoE": len(variants)}
    x = torch.randn(3, 5, 16)
    with torch.no_grad():
        want = [y.numpy() for y in model(x)]
    for library in (True, False):
        s = n6onnx.InferenceSession(proto.SerializeToString(), use_library=library, threads=1)
        for got, w in zip(s.run(None, {"x": x.numpy()}), want):
            np.testing.assert_allclose(got, w, rtol=1e-4, atol=1e-4)


def test_moe_fallback_without_biases_does_not_crash(tmp_path):
    """onnxruntime 1.32's SkipLayerNormFusion reads the type of every LayerNormalization input, a
    missing one too (SIGSEGV); the fallback once read absent b1/b2 through LayerNormalization, which
    survived constant folding with a dynamic token count. In a subprocess (a crash must fail the test,
    not kill the run), without the library, at ORT_ENABLE_ALL, checked against torch."""
    torch.manual_seed(1)
    model = _MoEOnly(bias=False).eval()
    path = tmp_path / "moe.onnx"
    nt.export(model, (torch.randn(2, 5, 16),), path, input_names=["x"],
              dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=64)},))
    x = torch.randn(3, 5, 16)
    np.save(tmp_path / "x.npy", x.numpy())
    code = ("import sys, numpy as np, onnxruntime as ort, n6onnx; "
            "s = n6onnx.InferenceSession(sys.argv[1], use_library=False); "
            "assert s.get_session_options().graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL; "
            "np.save(sys.argv[3], s.run(None, {'x': np.load(sys.argv[2])})[0])")
    run = subprocess.run([sys.executable, "-c", code, str(path), str(tmp_path / "x.npy"), str(tmp_path / "y.npy")],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    with torch.no_grad():
        want = model(x).numpy()
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), want, rtol=1e-4, atol=1e-4)


def test_export_refuses_an_unwritable_path_before_exporting(tmp_path):
    with pytest.raises(N6Error, match="does not exist"):
        nt.export(nt.Phi6(), (torch.randn(2, 3),), tmp_path / "missing" / "m.onnx")


def test_export_failure_is_one_n6error():
    class Bad(torch.nn.Module):
        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow: torch.export cannot capture it
                return nt.modules._n6.phi6(x)
            return x

    with pytest.raises(N6Error, match="torch.onnx.export failed"):
        nt.export(Bad(), (torch.randn(2, 3),))


# ----------------------------------------------------------------------------- modules in torch
def test_module_gradients_equal_the_functional_ones():
    """The custom ops' backward (recomputed through n6onnx.torch.functional) gives the gradients of
    the functional forms."""
    torch.manual_seed(2)
    model = Encoder().double()
    x, mask = _feeds(2, 30, 5)  # L >= 24: every FFTMix scale takes part
    x = x.double()
    loss = model(x, mask).square().mean()
    params = list(model.parameters())
    # (egyptian routing's weights are constants: the router gets a zero gradient)
    grads = torch.autograd.grad(loss, params, allow_unused=True, materialize_grads=True)
    assert all(torch.isfinite(g).all() for g in grads)
    assert sum(bool(g.abs().sum() > 0) for g in grads) == len(params) - 2  # all but router.weight/bias

    from n6onnx.torch import functional as tf
    m = model

    def functional_forward(x):
        h = x + m.mix_proj(tf.fftmix(m.ln[0](x), *m.mix.filters))
        h = h + m.fc2(tf.bias_phi6(m.fc1(m.ln[1](h)), m.act.bias))
        a = m.ln[2](h)
        y = tf.egyptian_attention(m.attn.q_proj(a), m.attn.k_proj(a), m.attn.v_proj(a), mask.to(torch.int32),
                                  num_heads=HEADS, window=8, head_kinds=[0, 1, 2, 1])
        h = h + m.attn.out_proj(y)
        t = m.ln[3](h).reshape(-1, D)
        h = h + tf.moe(t, m.moe.router(t), m.moe.W1, m.moe.b1, m.moe.W2, m.moe.b2, routing="egyptian",
                       activation="phi6").reshape(h.shape)
        return tf.zetaln2(h)

    loss_f = functional_forward(x).square().mean()
    torch.testing.assert_close(loss, loss_f)
    for g, gf, (name, _) in zip(grads, torch.autograd.grad(loss_f, params, allow_unused=True, materialize_grads=True), model.named_parameters()):
        torch.testing.assert_close(g, gf, msg=name)


def test_custom_ops_pass_opcheck():
    """torch.library.opcheck: schema, fake (meta) implementation, autograd registration, and AOT
    autograd with dynamic shapes (what torch.compile does with a training step) agree with eager."""
    g = torch.Generator().manual_seed(4)

    def r(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64, requires_grad=True)

    x = r(2, 7, 3)
    logits = torch.tensor([[1.0, 0.0, -5.0]] * 3 + [[0.0, 1.0, -5.0]] * 2, dtype=torch.float64, requires_grad=True)
    cases = {
        "bias_phi6": (x, r(3)),
        "fftmix": (x, r(4, 3), r(7, 3), r(13, 3)),
        "egyptian_attention": (r(2, 6, 8), r(2, 6, 8), r(2, 6, 8), torch.ones(2, 6, dtype=torch.int32), 2, 2, 0.0, [1, 2]),
        "egyptian_attention_causal_gqa": (r(2, 3, 8), r(2, 6, 4), r(2, 6, 4), None, 2, 2, 0.0, [2, 2], 1, 2, 1),
        # expert 2 is selected by no token (an empty dispatch)
        "moe": (r(5, 4), logits, r(3, 4, 6), None, r(3, 6, 4), r(3, 4), None, None, "topk", 1, 1, "gelu", 1, 0),
    }
    for name, args in cases.items():
        torch.library.opcheck(getattr(torch.ops.n6onnx, name.removesuffix("_causal_gqa")).default, args)
    # causal FFTMix: Present's length depends on PastLength's value, which AOT tracing with dynamic
    # shapes cannot recompute in the backward; the other checks apply
    torch.library.opcheck(torch.ops.n6onnx.fftmix_causal.default,
                          (x, r(6, 3), r(12, 3), r(24, 3), r(2, 5, 3), torch.tensor(29)),
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))


def test_causal_gqa_module_round_trip():
    """A causal grouped-query EgyptianAttention module: the export carries causal/sinks/kv_heads, and
    ORT (kernel and function fallback) equals torch; a later token never moves earlier outputs."""
    torch.manual_seed(5)
    m = nt.EgyptianAttention(16, 4, window=3, causal=True, sinks=2, kv_heads=2).eval()
    assert m.head_kinds == [0, 0, 2, 2] and m.k_proj.out_features == 8  # kinds per KV group
    dims = {0: torch.export.Dim("batch", min=1, max=64), 1: torch.export.Dim("seq", min=2, max=512)}
    proto = nt.export(m, (torch.randn(2, 9, 16),), input_names=["x"], dynamic_shapes=(dims,))
    attn = next(n for n in proto.graph.node if n.op_type == "EgyptianAttention")
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in attn.attribute}
    assert (attrs["causal"], attrs["sinks"], attrs["kv_heads"], attrs["window"]) == (1, 2, 2, 3)
    x = torch.randn(3, 21, 16)
    x2 = x.clone()
    x2[:, 15:] += 1.0
    with torch.no_grad():
        want, want2 = m(x).numpy(), m(x2).numpy()
    np.testing.assert_array_equal(want2[:, :15], want[:, :15])
    for library in (True, False):
        s = n6onnx.InferenceSession(proto.SerializeToString(), use_library=library, threads=1)
        np.testing.assert_allclose(s.run(None, {"x": x.numpy()})[0], want, rtol=1e-4, atol=1e-5,
                                   err_msg=f"library={library}")


def test_module_argument_errors():
    with pytest.raises(ValueError, match="does not divide"):
        nt.EgyptianAttention(10, 4)
    with pytest.raises(ValueError, match="head_kinds"):
        nt.EgyptianAttention(8, 2, head_kinds=[0, 5])
    with pytest.raises(ValueError, match="mix kinds"):
        nt.EgyptianAttention(8, 4, head_kinds=[0, 1, 2, 2], causal=True, kv_heads=2)
    with pytest.raises(ValueError, match="kv_heads=3 must divide"):
        nt.EgyptianAttention(8, 4, kv_heads=3)
    with pytest.raises(ValueError, match="unknown routing"):
        nt.MoE(8, 4, 4, routing="top1")
    with pytest.raises(ValueError, match="selects 3 of num_groups=2"):
        nt.MoE(8, 4, 2, routing="egyptian")


def test_import_n6onnx_does_not_import_torch_and_a_missing_torch_is_one_clear_error():
    code = ("import sys, n6onnx; assert 'torch' not in sys.modules, 'torch imported';"
            "sys.modules['torch'] = None\n"
            "try:\n import n6onnx.torch\nexcept ImportError as e:\n print(e)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "n6onnx.torch needs PyTorch" in out


def test_causal_fftmix_round_trip():
    """FFTMix(causal=True) exports as one FFTMix node with causal=1 (its fallback overload attached
    by finalize) and runs like torch, with the library and on stock onnxruntime."""
    torch.manual_seed(5)
    m = nt.FFTMix(8, init_std=0.5, causal=True).eval()
    dims = {0: torch.export.Dim("batch", min=1, max=64), 1: torch.export.Dim("seq", min=2, max=512)}
    proto = nt.export(m, (torch.randn(2, 9, 8),), input_names=["x"], dynamic_shapes=(dims,))
    nodes = [n for n in proto.graph.node if n.domain == "n6onnx"]
    assert [(n.op_type, n.overload) for n in nodes] == [("FFTMix", "causal_present")]
    assert {a.name: a.i for a in nodes[0].attribute} == {"causal": 1}
    x = torch.randn(3, 40, 8)
    with torch.no_grad():
        want = m(x).numpy()
    for library in (True, False):
        s = n6onnx.InferenceSession(proto.SerializeToString(), use_library=library, threads=1)
        np.testing.assert_allclose(s.run(None, {"x": x.numpy()})[0], want, rtol=1e-5, atol=1e-5,
                                   err_msg=f"library={library}")
