"""Healing on a CUDA device (``HealConfig.device``, ``--heal-device``): refused clearly where torch
cannot use the device; where it can (the GPU machine: ``pytest -m cuda tests/heal/test_device.py``,
with a CUDA build of torch), the student equals onnxruntime there and a heal improves the held-out
fidelity as on the CPU."""

from __future__ import annotations

import onnx
import onnx_ir as ir
import pytest
import torch
from click.testing import CliRunner

import n6onnx
from n6onnx.cli import main
from n6onnx.errors import BadArgumentError
from n6onnx.heal.config import HealConfig
from n6onnx.heal.run import heal_file

from .test_executor import _compare
from .test_heal import _mse, _npz
from .test_ranges import written_ranges

# the GPU machine's tests (pytest -m cuda; deselected elsewhere, and never skipped when selected)
cuda = pytest.mark.cuda


@pytest.mark.parametrize("device,why", [("cuda:99", "CUDA device"), ("tpu", "cpu or a CUDA device"),
                                        ("nonsense", "cpu or a CUDA device")])
def test_a_device_torch_cannot_use_is_refused_before_any_work(zoo_export, tmp_path, device, why):
    src = zoo_export("bert", "dynamo20")
    n6onnx.rewrite(src, tmp_path / "plain.onnx", ["gelu=phi6"])
    with pytest.raises(BadArgumentError, match=why):
        heal_file(tmp_path / "plain.onnx", src, _npz(tmp_path / "d.npz", 4, 1), tmp_path / "out.onnx",
                  config=HealConfig(steps=2, device=device))
    assert not (tmp_path / "out.onnx").exists()
    r = CliRunner().invoke(main, ["heal", str(tmp_path / "plain.onnx"), "--teacher", str(src), "--calibrate",
                                  str(tmp_path / "d.npz"), "-o", str(tmp_path / "out.onnx"), "--heal-device", device])
    assert r.exit_code != 0 and why in r.output and not (tmp_path / "out.onnx").exists()
    # rewrite --heal: refused too (api.rewrite checks the device before the passes and the calibration)
    r = CliRunner().invoke(main, ["rewrite", str(src), "-o", str(tmp_path / "out.onnx"), "--pass", "gelu=phi6",
                                  "--calibrate", str(tmp_path / "d.npz"), "--heal", "--heal-device", device])
    assert r.exit_code != 0 and why in r.output and not (tmp_path / "out.onnx").exists()


@cuda
@pytest.mark.parametrize("model,spec", [("bert", None), ("bert", "gelu=phi6"), ("bert", "attention=fftmix:@1"),
                                        ("bert", "attention=egyptian"), ("gpt2", "gelu=phi6"),
                                        ("llama", "ffn=phi-bottleneck:1"), ("vit", "gelu=phi6")])
def test_the_student_on_cuda_equals_ort(zoo_export, model, spec):
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False  # float32 as onnxruntime's CPU
    src = zoo_export(model, "dynamo18" if model in ("llama", "vit") else "dynamo20")
    proto = onnx.load(src) if spec is None else ir.to_proto(n6onnx.rewrite(src, None, [spec])[0])
    assert _compare(proto, device="cuda") < 1e-5


@cuda
def test_a_heal_on_cuda_improves_held_out_and_keeps_the_graph(zoo_export, tmp_path):
    src = zoo_export("bert", "dynamo20")
    n6onnx.rewrite(src, tmp_path / "plain.onnx", ["gelu=phi6"])
    data, held = _npz(tmp_path / "data.npz", 24, 1), _npz(tmp_path / "held.npz", 8, 2)
    cfg = HealConfig(steps=30, eval_every=5, threads=1, lr=3e-3, device="cuda")
    rep = heal_file(tmp_path / "plain.onnx", src, data, tmp_path / "healed.onnx", config=cfg)
    assert rep.best > rep.start and rep.steps == 30
    # independent check in onnxruntime on samples the heal never saw
    assert _mse(src, tmp_path / "healed.onnx", held) < 0.9 * _mse(src, tmp_path / "plain.onnx", held)
    a, b = onnx.load(tmp_path / "plain.onnx"), onnx.load(tmp_path / "healed.onnx")
    assert [(n.op_type, list(n.input)) for n in a.graph.node] == [(n.op_type, list(n.input)) for n in b.graph.node]


@cuda
def test_a_static_heal_trains_its_ranges_on_cuda(zoo_export, tmp_path):
    """``rewrite --quantize int8:static --heal`` on the GPU: the ranges train there (their phase in the curve, no
    check below the start), the written QuantizeLinear nodes carry exactly the reported ranges, and onnxruntime
    finds the healed model closer to the original than the plain quantizer's on samples healing never saw."""
    src = zoo_export("bert", "dynamo20")
    data, held = _npz(tmp_path / "data.npz", 24, 1), _npz(tmp_path / "held.npz", 8, 2)
    n6onnx.rewrite(src, tmp_path / "s.onnx", [], calibrate=data, quantize="int8:static")
    _, rep = n6onnx.rewrite(src, tmp_path / "h.onnx", [], calibrate=data, quantize="int8:static", heal=True,
                            heal_config=HealConfig(steps=60, eval_every=6, threads=1, ranges=0.3, device="cuda"))
    h = rep.healing
    rows = [c for c in h.curve if len(c) > 4 and c[4] == "ranges"]
    assert rows and h.steps == 60 and h.best >= h.start and all(c[2] >= h.start - 0.001 for c in rows)
    assert h.ranges == written_ranges(tmp_path / "h.onnx")
    assert _mse(src, tmp_path / "h.onnx", held) < _mse(src, tmp_path / "s.onnx", held)


@cuda
def test_the_clipping_mirror_on_cuda_equals_the_cpus():
    """``fakequant.saturation`` (a clipping CPU's pair sums, mirrored by a heal for such a deployment CPU) gives
    the same correction on the GPU as on the CPU, for dynamic and static grids, MiniLM's shapes. Its pair sums
    are integers, exact in float32 on either device; only the order of the per-column float sums differs."""
    from n6onnx.heal import fakequant

    g = torch.Generator().manual_seed(0)
    for k, n, shift in ((384, 1536, 0.0), (1536, 384, 0.5), (384, 384, -0.5)):
        w = torch.randn(k, n, generator=g) * 0.05
        x = torch.randn(8, 64, k, generator=g) + shift
        for grid in (None, (0.02, 100)):
            site = fakequant.Site(("int8", True), "dynamic" if grid is None else None, saturate=True)
            xs = x if grid is None else fakequant.fixed(x, *grid)
            cpu = fakequant.saturation("MatMul", {}, xs, w, site, grid)
            gpu = fakequant.saturation("MatMul", {}, xs.cuda(), w.cuda(), site, grid).cpu()
            assert cpu.abs().max() > 0  # these operands clip
            assert torch.allclose(gpu, cpu, rtol=1e-6, atol=1e-6 * float(cpu.abs().max())), (k, n, grid)
