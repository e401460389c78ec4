"""n6onnx.torch.functional against the ops' numpy references (OpSpec.reference, the contract
samples, within the spec's tolerance), and its gradients against finite differences."""

from __future__ import annotations

import numpy as np
import pytest

from ..conftest import require

torch = require("torch")

from n6onnx.ops import ELEMENTWISE, REGISTRY  # noqa: E402
from n6onnx.torch import functional as tf  # noqa: E402
from n6onnx.torch.functional import OPS  # noqa: E402

NON_ELEMENTWISE = sorted(k for k in REGISTRY if k not in ELEMENTWISE)


def _close(got, ref, tol):
    """got / ref: one output, or a tuple of outputs (e.g. causal FFTMix's Y, Present)."""
    if isinstance(ref, tuple):
        assert isinstance(got, tuple) and len(got) == len(ref)
        for g, r in zip(got, ref):
            _close(g, r, tol)
        return
    got = got.detach().numpy()
    assert got.dtype == ref.dtype and got.shape == ref.shape
    np.testing.assert_allclose(got.astype(np.float64), ref.astype(np.float64), rtol=tol.rtol, atol=tol.atol)


def test_ops_cover_every_registered_op():
    assert set(OPS) == set(REGISTRY)


# ----------------------------------------------------------------------------- forward vs reference
@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("op", sorted(ELEMENTWISE))
def test_elementwise_equals_reference(op, dtype):
    spec = REGISTRY[op]
    rng = np.random.default_rng(3)
    x = rng.uniform(-4, 4, size=(3, 5, 33))
    x.reshape(-1)[:6] = [-2.0, 2.0, 0.0, -2.5, 2.5, 5 / 12]  # clamp borders, zero, ZetaLn2's root
    feeds = [x.astype(dtype)]
    if "bias" in spec.inputs:
        feeds.append(rng.uniform(-1, 1, size=33).astype(dtype))
    ref = spec.reference(*feeds)
    _close(OPS[op](*(torch.from_numpy(f) for f in feeds)), ref, spec.tolerance(dtype))


def _sample_args(spec, sample):
    inputs = [torch.from_numpy(np.asarray(sample.feeds[n])) if n in sample.feeds else None for n in spec.inputs]
    attrs = {**spec.attribute_defaults, **sample.attrs}  # the node's attributes as ONNX resolves them
    return inputs, attrs


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("op", NON_ELEMENTWISE)
def test_contract_samples_equal_reference(op, dtype):
    spec = REGISTRY[op]
    for sample in spec.samples(dtype):
        ref = spec.reference(*[sample.feeds.get(n) for n in spec.inputs], **sample.attrs)
        inputs, attrs = _sample_args(spec, sample)
        try:
            _close(OPS[op](*inputs, **attrs), ref, spec.tolerance(dtype))
        except AssertionError as e:
            raise AssertionError(f"{op} sample {sample.id}: {e}") from None


@pytest.mark.parametrize("op", NON_ELEMENTWISE)
def test_contract_samples_float64(op):
    """float64 in, float64 out (computed in float64), still equal to the float32 reference."""
    spec = REGISTRY[op]
    for sample in spec.samples("float32"):
        ref = spec.reference(*[sample.feeds.get(n) for n in spec.inputs], **sample.attrs)
        inputs, attrs = _sample_args(spec, sample)
        inputs = [t.double() if t is not None and t.is_floating_point() and n != "importance" else t
                  for n, t in zip(spec.inputs, inputs)]
        got = OPS[op](*inputs, **attrs)
        tol = spec.tolerance("float32")
        for g, r in zip(*((got, ref) if isinstance(ref, tuple) else ((got,), (ref,)))):
            assert g.dtype == torch.float64
            np.testing.assert_allclose(g.numpy(), r.astype(np.float64), rtol=tol.rtol, atol=tol.atol,
                                       err_msg=f"{op} sample {sample.id}")


def test_attention_without_mask_equals_all_ones_mask():
    spec = REGISTRY["EgyptianAttention"]
    s = spec.samples("float32")[0]
    q, k, v = (torch.from_numpy(s.feeds[n]) for n in "QKV")
    ref = spec.reference(s.feeds["Q"], s.feeds["K"], s.feeds["V"], None, **s.attrs)
    _close(tf.egyptian_attention(q, k, v, None, **s.attrs), ref, spec.tolerance("float32"))


@pytest.mark.parametrize("call, message", [
    (lambda: tf.bias_phi6(torch.zeros(2, 3), torch.zeros(4)), "bias must be 1-D of length"),
    (lambda: tf.fftmix(torch.zeros(2, 3), *(torch.zeros(w // 2 + 1, 3) for w in (6, 12, 24))), "must be \\[B, L, D\\]"),
    (lambda: tf.fftmix(torch.zeros(1, 4, 3), *(torch.zeros(w // 2 + 1, 2) for w in (6, 12, 24))), "F6 must be"),
    (lambda: tf.egyptian_attention(*(torch.zeros(1, 4, 6),) * 3, num_heads=4), "does not divide"),
    (lambda: tf.egyptian_attention(*(torch.zeros(1, 4, 6),) * 3, num_heads=2, head_kinds=[0, 3]), "head_kinds"),
    (lambda: tf.moe(torch.zeros(3, 4), torch.zeros(3, 2), torch.zeros(2, 4, 5), None, torch.zeros(2, 5, 4), k=3), "k must be"),
    (lambda: tf.moe(torch.zeros(3, 4), torch.zeros(3, 2), torch.zeros(2, 4, 5), None, torch.zeros(2, 5, 4),
                    routing="egyptian"), "G >= 3"),
    (lambda: tf.moe(torch.zeros(3, 4), torch.zeros(3, 2), torch.zeros(2, 4, 5), None, torch.zeros(2, 5, 4),
                    routing="top1"), "unknown routing"),
    (lambda: tf.moe(torch.zeros(3, 4), torch.zeros(3, 2), torch.zeros(2, 4, 5), None, torch.zeros(2, 5, 4),
                    activation="tanh"), "unknown activation"),
    (lambda: tf.moe(torch.zeros(3, 4), torch.zeros(3, 2), torch.zeros(2, 4, 5), None, torch.zeros(2, 5, 4),
                    activation="swiglu"), "needs W3"),
    (lambda: tf.moe(torch.zeros(3, 4), torch.zeros(3, 2), torch.zeros(2, 4, 5), None, torch.zeros(2, 5, 4),
                    drop=1), "needs the importance"),
])
def test_bad_input_raises_like_the_reference(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# ----------------------------------------------------------------------------- gradients
def _gradcheck(f, *inputs):
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("op", sorted(ELEMENTWISE))
def test_elementwise_gradients(op):
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(4, 7, generator=g, dtype=torch.float64) * 8 - 4)
    x = x[(x.abs() - 2).abs() > 1e-3].reshape(-1)  # no finite difference across Phi6's clamp corners
    x = x[: (x.numel() // 4) * 4].reshape(4, -1).requires_grad_()
    if "bias" in REGISTRY[op].inputs:
        bias = (torch.rand(x.shape[-1], generator=g, dtype=torch.float64) * 0.01).requires_grad_()
        _gradcheck(OPS[op], x, bias)
    else:
        _gradcheck(OPS[op], x)


def test_phi6_derivative_is_zero_outside_the_clamp():
    x = torch.tensor([-3.0, -2.5, -1.0, 0.0, 0.25, 1.5, 2.5, 7.0], dtype=torch.float64, requires_grad=True)
    tf.phi6(x).sum().backward()
    expected = torch.where(x.abs() > 2, torch.zeros_like(x), 2 * x - 1)
    torch.testing.assert_close(x.grad, expected.detach())


def test_fftmix_gradients():
    g = torch.Generator().manual_seed(1)
    for L in (5, 10, 30):  # below every window; partial windows; 30 > 24
        x = torch.randn(2, L, 3, generator=g, dtype=torch.float64, requires_grad=True)
        fs = [torch.randn(w // 2 + 1, 3, generator=g, dtype=torch.float64, requires_grad=True) for w in (6, 12, 24)]
        _gradcheck(tf.fftmix, x, *fs)


@pytest.mark.parametrize("kinds, mask, causal", [(None, False, {}), ([1, 2, 0, 1], True, {}),
                                                  ([0, 0, 1, 1], True, dict(causal=1, kv_heads=2, sinks=2))])
def test_egyptian_attention_gradients(kinds, mask, causal):
    g = torch.Generator().manual_seed(2)
    B, L, H, dh = 2, 9, 4, 3
    hkv = causal.get("kv_heads", H)
    q = torch.randn(B, L, H * dh, generator=g, dtype=torch.float64, requires_grad=True)
    k, v = (torch.randn(B, L, hkv * dh, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(2))
    m = torch.ones(B, L, dtype=torch.int32)
    if mask:
        m[0, -3:] = 0
        m[1, :] = 0  # a batch row with nothing to attend to: zeros, zero gradient
    attrs = dict(num_heads=H, window=4, head_kinds=kinds, **causal)
    _gradcheck(lambda q, k, v: tf.egyptian_attention(q, k, v, m if mask else None, **attrs), q, k, v)


@pytest.mark.parametrize("attrs, w3, importance", [
    (dict(routing="topk", k=2, activation="gelu"), False, False),
    (dict(routing="topk", k=3, normalize=0, activation="swiglu"), True, False),
    (dict(routing="egyptian", activation="phi6"), False, False),
    (dict(routing="topk", k=2, group=2, drop=1, activation="silu"), False, True),
])
def test_moe_gradients(attrs, w3, importance):
    g = torch.Generator().manual_seed(3)
    N, D, H, G = 6, 4, 5, 4
    E = G * attrs.get("group", 1)

    def r(*shape, s=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * s).requires_grad_()

    x, logits = r(N, D), r(N, G, s=2.0)
    w1, b1, w2, b2 = r(E, D, H, s=0.5), r(E, H, s=0.5), r(E, H, D, s=0.5), r(E, D)
    w3 = r(E, D, H, s=0.5) if w3 else None
    imp = torch.rand(E, generator=g, dtype=torch.float64) + 0.5 if importance else None
    if attrs["activation"] == "phi6":  # keep pre-activations off the clamp corners
        with torch.no_grad():
            w1.mul_(0.2)
    tensors = [t for t in (x, logits, w1, b1, w2, b2, w3) if t is not None]

    def f(*ts):
        it = iter(ts)
        args = [next(it), next(it), next(it), next(it), next(it), next(it), next(it) if w3 is not None else None, imp]
        return tf.moe(*args, **attrs)

    _gradcheck(f, *tensors)
    # the routing weights carry gradient to the logits for topk, none for the egyptian constants
    y = f(*tensors)
    (gl,) = torch.autograd.grad(y.sum(), logits, allow_unused=True)
    assert (gl is not None and bool(gl.abs().sum() > 0)) == (attrs["routing"] == "topk")


def test_fftmix_causal_gradients():
    g = torch.Generator().manual_seed(2)
    for L, P, pl in ((7, 0, 0), (3, 5, 29)):  # a prefill; a chunk after a 24-window border
        x = torch.randn(2, L, 3, generator=g, dtype=torch.float64, requires_grad=True)
        past = torch.randn(2, P, 3, generator=g, dtype=torch.float64, requires_grad=True)
        fs = [torch.randn(w, 3, generator=g, dtype=torch.float64, requires_grad=True) for w in (6, 12, 24)]
        _gradcheck(lambda x, past, *fs: tf.fftmix(x, *fs, past, torch.tensor(pl), causal=1)[0], x, past, *fs)


def test_egyptian_attention_under_bf16_autocast():
    """`--heal-dtype bfloat16` runs the ops under CPU bf16 autocast: the masked scores are then bf16, so the
    mask's fill value must be bf16's own minimum (float32's overflows it); the result stays within bf16's
    rounding of the float32 run, and a fully masked row is still zero."""
    g = torch.Generator().manual_seed(3)
    B, L, H, dh = 2, 9, 4, 8
    q, k, v = (torch.randn(B, L, H * dh, generator=g) for _ in range(3))
    m = torch.ones(B, L, dtype=torch.int32)
    m[0, -3:] = 0
    m[1, :] = 0
    attrs = dict(num_heads=H, window=4, head_kinds=[1, 2, 0, 1])
    ref = tf.egyptian_attention(q, k, v, m, **attrs)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = tf.egyptian_attention(q, k, v, m, **attrs)
    assert got.dtype == torch.float32
    assert float((got - ref).abs().max()) < 0.05 * float(ref.abs().max())
    assert float(got[1].abs().max()) == 0.0
