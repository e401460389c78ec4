"""Healing: improves held-out fidelity over its start, never writes a worse model, is deterministic,
keeps the graph's nodes, refuses what it cannot run before any work, and the CLI's errors."""

from __future__ import annotations

import pathlib
import time

import numpy as np
import onnx
import onnx_ir as ir
import pytest
import torch
from click.testing import CliRunner

import n6onnx
from n6onnx.testing import zoo
from n6onnx.testing import zoo_decoder as zd
from n6onnx import io
from n6onnx.calibrate import collect
from n6onnx.cli import main
from n6onnx.heal import executor, refit, targets
from n6onnx.heal.executor import UnsupportedOpError
from n6onnx.heal.run import heal_file, load_data
from n6onnx.heal.train import HealConfig, _mask_rows, backtrack_margin
from n6onnx.runtime import session_for


def _npz(path: pathlib.Path, n: int, seed: int, model: str = "bert") -> pathlib.Path:
    rng = np.random.default_rng(seed)
    arrays = {}
    for k in range(n):
        f = zoo.example_inputs(model, 2, 16)
        f["input_ids"] = rng.integers(1, 1000, size=(2, 16), dtype=np.int64)
        arrays.update({f"{name}/{k}": a for name, a in f.items()})
    np.savez(path, **arrays)
    return path


def _mse(src, cand, feeds_npz) -> float:
    """Output error of CAND against SRC, both run by onnxruntime (independent of the torch student)."""
    a, b = session_for(onnx.load(src)), session_for(onnx.load(cand))
    d = np.load(feeds_npz)
    errs = []
    for k in range(len(d.files) // 3):
        f = {n: d[f"{n}/{k}"] for n in ("input_ids", "attention_mask", "token_type_ids")}
        errs.append(np.mean((a.run(None, f)[0] - b.run(None, f)[0]) ** 2))
    return float(np.mean(errs))


@pytest.fixture(scope="module")
def setup(zoo_export, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("heal")
    src = zoo_export("bert", "dynamo20")
    # an uncalibrated swap: a start far from the original (nothing changed in the weights, so the
    # trainable set falls back to the projections next to the n6 nodes)
    n6onnx.rewrite(src, tmp / "plain.onnx", ["gelu=phi6"])
    return src, tmp, _npz(tmp / "data.npz", 24, 1), _npz(tmp / "held.npz", 8, 2)


def _heal(setup, name: str, **kw) -> tuple:
    src, tmp, data, _ = setup
    cfg = HealConfig(**{"steps": 30, "eval_every": 5, "threads": 1, "lr": 3e-3, **kw})
    return heal_file(tmp / "plain.onnx", src, data, tmp / name, config=cfg), tmp / name


def test_heal_improves_held_out_and_keeps_the_graph(setup):
    src, tmp, _, held = setup
    rep, out = _heal(setup, "healed.onnx")
    assert rep.best > rep.start and rep.steps == 30 and rep.trainable > 0
    # independent check on samples neither the fit nor the early stopping saw, in onnxruntime
    assert _mse(src, out, held) < 0.9 * _mse(src, tmp / "plain.onnx", held)
    a, b = onnx.load(tmp / "plain.onnx"), onnx.load(out)
    assert [(n.op_type, n.domain, list(n.input), list(n.output)) for n in a.graph.node] == \
           [(n.op_type, n.domain, list(n.input), list(n.output)) for n in b.graph.node]
    assert [t.name for t in a.graph.initializer] == [t.name for t in b.graph.initializer]


def test_never_writes_a_worse_model(setup):
    src, tmp, data, _ = setup
    # a step far too large: every evaluation after the start is worse, so the start is written back (the live
    # weights checked: averaged over the steps, even this step heals the tiny fixture a little)
    rep, out = _heal(setup, "bad.onnx", lr=5.0, steps=10, param="raw", local=0.0, ema=0.0)
    assert rep.best == rep.start and rep.lowest < rep.start
    a, b = onnx.load(tmp / "plain.onnx"), onnx.load(out)
    for ta, tb in zip(a.graph.initializer, b.graph.initializer):
        np.testing.assert_allclose(onnx.numpy_helper.to_array(ta), onnx.numpy_helper.to_array(tb), rtol=1e-6, atol=1e-6)


def test_floor_falls_keep_training_at_the_smallest_step(setup):
    """Every check of a far too large step falls and halves it; at the first fall below 1/64 of the phase's step
    the heal ends ("converged"). ``floor_falls=3`` keeps training at that smallest step through two more falls
    (each restores the best weights), so exactly two more checks; neither writes a worse model."""
    kw = dict(lr=5.0, steps=60, param="raw", local=0.0, eval_every=1, warmup=1, ema=0.0)  # live weights checked
    one, _ = _heal(setup, "f1.onnx", **kw)
    three, _ = _heal(setup, "f3.onnx", floor_falls=3, **kw)
    assert one.stopped == three.stopped == "converged"
    assert len(three.curve) == len(one.curve) + 2, (one.curve, three.curve)
    assert [c[6] for c in three.curve[-3:]] == [5.0 / 64] * 3  # the last three checks ran at the smallest step
    assert one.best == one.start and three.best == three.start


def test_ema_checks_see_the_moving_average_of_the_weights(setup):
    """With ``ema`` the held-out checks see (and keep as the best) the exponential moving average of the
    weights, not the live ones. An average that has hardly moved (decay 1 - 1e-9: a step's 1e-9 share is
    below float32's resolution except for entries near zero) checks the start at every check (within 2e-6)
    and writes the input back within 1e-6, although the live weights moved (the same heal without the average improves: the test above); a
    decay of 0.8 follows the steps and heals. The default is 0.99."""
    src, tmp, _, held = setup
    still, out = _heal(setup, "ema_still.onnx", ema=1 - 1e-9, local=0.0)
    assert still.steps == 30 and len(still.curve) > 5
    assert HealConfig().ema == 0.99
    # (float32 moves only entries near zero by 1e-9 of a step: every check is the start within 2e-6)
    assert all(abs(c[2] - still.start) < 2e-6 for c in still.curve), still.curve
    live, out_live = _heal(setup, "ema_live.onnx", local=0.0, ema=0.0)
    a, b, c = (onnx.load(p) for p in (tmp / "plain.onnx", out, out_live))
    moved = 0.0
    for ta, tb, tc in zip(a.graph.initializer, b.graph.initializer, c.graph.initializer):
        wa, wb, wc = (onnx.numpy_helper.to_array(t).astype(np.float64) for t in (ta, tb, tc))
        np.testing.assert_allclose(wb, wa, rtol=0, atol=1e-6)
        moved = max(moved, float(np.abs(wc - wa).max()))
    assert moved > 1e-3  # the live weights did move
    moving, out = _heal(setup, "ema_moving.onnx", ema=0.8, local=0.0)
    assert live.best > live.start and moving.best > moving.start
    assert [c[2] for c in moving.curve[1:]] != [c[2] for c in live.curve[1:]]  # other weights checked
    assert _mse(src, out, held) < 0.9 * _mse(src, tmp / "plain.onnx", held)


def test_deterministic_for_seed_and_threads(setup):
    _, out1 = _heal(setup, "d1.onnx", steps=8)
    _, out2 = _heal(setup, "d2.onnx", steps=8)
    assert out1.read_bytes() == out2.read_bytes()


def test_refuses_unsupported_op_before_any_work(tmp_path):
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 3])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 3])
    g = onnx.helper.make_graph([onnx.helper.make_node("Hardmax", ["x"], ["y"])], "g", [x], [y])
    m = onnx.helper.make_model(g, opset_imports=[onnx.helper.make_opsetid("", 18)])
    onnx.save(m, tmp_path / "m.onnx")
    (tmp_path / "data.txt").write_text("a b c\n")
    with pytest.raises(UnsupportedOpError, match="Hardmax"):
        heal_file(tmp_path / "m.onnx", tmp_path / "m.onnx", tmp_path / "data.txt", tmp_path / "o.onnx")
    assert not (tmp_path / "o.onnx").exists()


def test_cli_errors(zoo_export, tmp_path):
    src = str(zoo_export("bert", "dynamo20"))
    r = CliRunner().invoke(main, ["rewrite", src, "-o", str(tmp_path / "o.onnx"), "--pass", "gelu=phi6", "--heal"])
    assert r.exit_code == 2 and "--heal needs --calibrate" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(main, ["heal", src, "--teacher", str(tmp_path / "none.onnx"), "--calibrate",
                                  str(tmp_path / "none.txt"), "-o", str(tmp_path / "o.onnx")])
    assert r.exit_code == 2 and "no such file" in r.output
    assert not (tmp_path / "o.onnx").exists()


def test_cli_heal_backtrack_reaches_the_heal(setup):
    """``--heal-backtrack`` (named in --help) sets the backtrack margin of the heal, ``--heal-local-mode``
    and ``--heal-local-lr`` its block-local phase; out of range is a usage error."""
    import json

    src, tmp, data, _ = setup
    args = ["heal", str(tmp / "plain.onnx"), "--teacher", str(src), "--calibrate", str(data), "--threads", "1"]
    r = CliRunner().invoke(main, args + ["-o", str(tmp / "bt.onnx"), "--heal-steps", "2", "--heal-backtrack",
                                         "0.002", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["config"]["backtrack"] == 0.002
    r = CliRunner().invoke(main, args + ["-o", str(tmp / "seq.onnx"), "--heal-steps", "2", "--heal-local-mode",
                                         "sequential", "--heal-local-lr", "3e-4", "--json"])
    assert r.exit_code == 0, r.output
    cfg = json.loads(r.output)["config"]
    assert (cfg["local_mode"], cfg["local_lr"]) == ("sequential", 3e-4)
    r = CliRunner().invoke(main, args + ["-o", str(tmp / "ff.onnx"), "--heal-steps", "2", "--heal-floor-falls", "4",
                                         "--json"])
    assert r.exit_code == 0 and json.loads(r.output)["config"]["floor_falls"] == 4, r.output
    r = CliRunner().invoke(main, args + ["-o", str(tmp / "ema.onnx"), "--heal-steps", "2", "--heal-ema", "0.9",
                                         "--json"])  # (not the default 0.99: the flag must reach the heal)
    assert r.exit_code == 0 and json.loads(r.output)["config"]["ema"] == 0.9, r.output
    r = CliRunner().invoke(main, args + ["-o", str(tmp / "cmb.onnx"), "--heal-steps", "2", "--heal-cache-mb", "3",
                                         "--json"])
    assert r.exit_code == 0 and json.loads(r.output)["config"]["cache_bytes"] == 3 << 20, r.output
    r = CliRunner().invoke(main, args + ["-o", str(tmp / "cm-.onnx"), "--heal-cache-mb", "-1"])
    assert r.exit_code == 2 and "Traceback" not in r.output and not (tmp / "cm-.onnx").exists()
    r = CliRunner().invoke(main, args + ["-o", str(tmp / "ema1.onnx"), "--heal-ema", "1"])
    assert r.exit_code == 2 and "Traceback" not in r.output and not (tmp / "ema1.onnx").exists()
    r = CliRunner().invoke(main, args + ["-o", str(tmp / "ff0.onnx"), "--heal-floor-falls", "0"])
    assert r.exit_code == 2 and "Traceback" not in r.output and not (tmp / "ff0.onnx").exists()
    r = CliRunner().invoke(main, args + ["-o", str(tmp / "bt2.onnx"), "--heal-backtrack", "-1"])
    assert r.exit_code == 2 and "Traceback" not in r.output and not (tmp / "bt2.onnx").exists()
    r = CliRunner().invoke(main, args + ["-o", str(tmp / "bt3.onnx"), "--heal-backtrack", "often"])
    assert r.exit_code == 2 and "'auto'" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(main, args + ["-o", str(tmp / "auto.onnx"), "--heal-steps", "2", "--heal-backtrack",
                                         "auto", "--json"])
    assert r.exit_code == 0 and json.loads(r.output)["config"]["backtrack"] == "auto", r.output
    rep = heal_file(tmp / "plain.onnx", src, data, tmp / "auto2.onnx", config=HealConfig(steps=6, eval_every=2, threads=1))
    checks = [c for c in rep.curve[1:] if c[4] != "refit"]  # every check under the rule records its margin
    assert rep.config["backtrack"] == "auto" and len(checks) >= 3, rep.curve
    assert all(c[5] >= rep.config["backtrack_floor"] for c in checks), rep.curve
    r = CliRunner().invoke(main, args + ["-o", str(tmp / "ad.onnx"), "--heal-steps", "2", "--heal-local-lr-start",
                                         "off", "--json"])
    assert r.exit_code == 0 and json.loads(r.output)["config"]["local_lr_start"] is None, r.output
    helps = CliRunner().invoke(main, ["rewrite", "--help"]).output
    assert "--heal-backtrack" in helps and "--heal-local-lr-start" in helps


def test_ctrl_c_writes_the_best_so_far_and_exits_130(setup, monkeypatch):
    """A Ctrl-C (KeyboardInterrupt) in the middle of the heal: the best weights so far are written, the
    report says "interrupted", and the command exits 130 (SIGINT's status), so a script can tell."""
    import json

    from n6onnx.heal import losses

    src, tmp, data, _ = setup
    total, calls = losses.total, []

    def interrupted(*a, **k):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return total(*a, **k)

    monkeypatch.setattr(losses, "total", interrupted)
    out = tmp / "ctrl-c.onnx"
    r = CliRunner().invoke(main, ["heal", str(tmp / "plain.onnx"), "--teacher", str(src), "--calibrate", str(data),
                                  "--threads", "1", "--heal-steps", "50", "-o", str(out), "--json"])
    assert r.exit_code == 130, r.output
    rep = json.loads(r.output)
    assert rep["stopped"] == "interrupted" and 0 < rep["steps"] < 50 and len(calls) == 4
    assert [n.op_type for n in io.load_proto(out).graph.node] == \
        [n.op_type for n in io.load_proto(tmp / "plain.onnx").graph.node]


def test_auto_backtrack_margin_is_the_paired_standard_error():
    """``backtrack="auto"``: the margin is z standard errors of the per-sample differences between a
    check and the best check (statistics.stdev as the reference), never below the floor; a number
    is used as given."""
    import statistics

    rng = np.random.default_rng(0)
    best = rng.uniform(0.9, 1.0, 200)
    noisy = best + rng.normal(0, 0.02, 200)  # per-sample moves of 0.02: SE 0.0014
    se = statistics.stdev((noisy - best).tolist()) / np.sqrt(200)
    cfg = HealConfig()
    assert cfg.backtrack == "auto"
    assert backtrack_margin(cfg, noisy, best) == pytest.approx(2 * se, rel=1e-9)
    assert 2 * se > cfg.backtrack_floor
    quiet = best + rng.normal(0, 1e-4, 200)  # below the floor: the floor
    assert backtrack_margin(cfg, quiet, best) == cfg.backtrack_floor
    same = best + 0.01  # a uniform shift has no spread: the floor
    assert backtrack_margin(cfg, same, best) == cfg.backtrack_floor
    assert backtrack_margin(HealConfig(backtrack=0.002), noisy, best) == 0.002
    assert backtrack_margin(HealConfig(backtrack_z=3.0), noisy, best) == pytest.approx(3 * se, rel=1e-9)


def test_heals_a_decoder(zoo_export, tmp_path):
    """GPT-2-style (pre-LN, Gemm projections, causal): the same student, stream points and trainer."""
    src = zoo_export("gpt2", "dynamo20")
    n6onnx.rewrite(src, tmp_path / "plain.onnx", ["gelu=phi6"])
    data = _npz(tmp_path / "data.npz", 16, 1, "gpt2")
    rep = heal_file(tmp_path / "plain.onnx", src, data, tmp_path / "healed.onnx",
                    config=HealConfig(steps=20, eval_every=5, threads=1, lr=3e-3))
    assert rep.trainable > 0 and rep.best > rep.start


@pytest.mark.parametrize("rewrite", ["attention=fftmix:@0", "attention=egyptian"])
def test_heals_a_cached_decoder_whose_cache_was_relaid(decoder_export, tmp_path, rewrite):
    """A KV-cache export whose attention rewrite re-laid out the past/present tensors (docs/decoders.md):
    the student gets its own empty past, the re-laid-out presents are no target, and the healed model
    still decodes token by token exactly as its own full run."""
    src = decoder_export("gpt2")
    cal = zd.calibration_npz("gpt2", tmp_path / "cal.npz", batches=4)
    out = tmp_path / "h.onnx"
    _, rep = n6onnx.rewrite(src, out, [rewrite], calibrate=cal, heal=True,
                            heal_config=HealConfig(steps=6, eval_every=3, warmup=2, threads=1))
    assert rep.reports["attention"].rewritten > 0 and rep.healing.steps == 6
    assert rep.healing.best >= rep.healing.start
    # 4 batches: calibration (up to 256 samples) fitted the batch the heal holds out, and the report says so
    assert any(w.startswith("heal: its") and "were also calibration's" in w for w in rep.warnings)
    s = session_for(onnx.load(str(out)))
    names = [o.name for o in s.get_outputs()]
    run = lambda feeds: dict(zip(names, s.run(None, feeds)))  # noqa: E731
    ids = zd.example_inputs("gpt2", batch=2, seq=6, seed=3)["input_ids"]
    full = zd.decode(run, "gpt2", ids, [6], past=zd.empty_past(out, 2))["logits"]
    step = zd.decode(run, "gpt2", ids, [1] * 6, past=zd.empty_past(out, 2))["logits"]
    assert np.abs(full - step).max() <= 1e-4


def test_default_heal_never_falls_below_its_start(setup):
    """Issue 16's rule at the default settings (block-local phase first, then global): held-out
    fidelity is never more than 0.001 below the start at any evaluation, and the block-local
    phase alone improves it."""
    src, tmp, data, held = setup
    rep = heal_file(tmp / "plain.onnx", src, data, tmp / "default.onnx",
                    config=HealConfig(steps=40, eval_every=4, threads=1))
    phases = [c[4] for c in rep.curve[1:]]
    assert phases[0] == "local" and phases[-1] == "global"
    assert all(c[2] >= rep.start - 0.001 for c in rep.curve), rep.curve
    assert max(c[2] for c in rep.curve if c[4:5] == ["local"]) > rep.start
    assert _mse(src, tmp / "default.onnx", held) < _mse(src, tmp / "plain.onnx", held)


def test_block_local_runs_each_block_from_the_teachers_input(zoo_export):
    """The executor's inject: a stream point computed from the injected previous stream point
    equals running the graph on from that value (checked against onnxruntime on the original)."""
    src = zoo_export("bert", "dynamo20")
    orig = io.load(src)
    proto = ir.to_proto(orig)
    streams = targets.stream_points(orig, proto)
    feeds = zoo.example_inputs("bert", 2, 16)
    ref = dict(zip(streams, session_for(collect.with_outputs(proto, streams)).run(streams, feeds)))
    student = executor.GraphModule(proto)
    rng = np.random.default_rng(0)  # not the values the graph computes (nor a scaling, which a LayerNorm undoes)
    shifted = {n: torch.from_numpy(ref[n] + rng.normal(size=ref[n].shape).astype(np.float32)) for n in streams}
    out = student(feeds, streams[1:], inject=shifted)
    whole = student(feeds, streams)
    for a, b in zip(streams, streams[1:]):
        # the segment a -> b run from the injected a differs from the graph's own b ...
        assert not np.allclose(out[b].detach().numpy(), whole[b].detach().numpy(), atol=1e-3)
    # ... and injecting the true values reproduces onnxruntime's stream
    out = student(feeds, streams[1:], inject={n: torch.from_numpy(ref[n]) for n in streams})
    for b in streams[1:]:
        np.testing.assert_allclose(out[b].detach().numpy(), ref[b], rtol=1e-4, atol=1e-4)


def test_decoder_fidelity_is_next_token_top1_agreement(decoder_export, tmp_path):
    """A language model's [B, L, V] logits are scored by top-1 agreement over the real positions (what
    validate reports for logits), not by mean-pooled cosine, which saturates on logits (0.999999 on the
    trained byte-level GPT-2 of benchmarks/lm_train.py while its top-1 agreement was 0.96). Checked
    against n6onnx.validate (onnxruntime) on the batches that healing holds out."""
    from n6onnx.heal.train import fidelity, split
    from n6onnx.testing import zoo_decoder as zd

    rng = np.random.default_rng(0)
    t = rng.standard_normal((3, 5, 7))
    s = t + rng.standard_normal((3, 5, 7))
    mask = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]])
    same = t.argmax(-1) == s.argmax(-1)
    want = [same[i, :mask[i].sum()].mean() for i in range(3)]
    np.testing.assert_allclose(fidelity(t, s, {"attention_mask": mask}, 3, "logits"), want)

    src = decoder_export("gpt2", "nokv")
    n6onnx.rewrite(src, tmp_path / "plain.onnx", ["gelu=phi6"])
    batches = [zd.example_inputs("gpt2", batch=2, seq=16, form="nokv", seed=100 + k) for k in range(10)]
    np.savez(tmp_path / "data.npz", **{f"{n}/{k}": a for k, f in enumerate(batches) for n, a in f.items()})
    _, held = split(batches, HealConfig.holdout)
    np.savez(tmp_path / "held.npz", **{f"{n}/{j}": a for j, k in enumerate(held) for n, a in batches[k].items()})
    rep = heal_file(tmp_path / "plain.onnx", src, tmp_path / "data.npz", tmp_path / "healed.onnx",
                    config=HealConfig(steps=10, eval_every=5, threads=1, lr=3e-3))
    ref = n6onnx.validate(src, tmp_path / "plain.onnx", feeds=tmp_path / "held.npz").to_json()["outputs"]["logits"]
    assert rep.start == pytest.approx(ref["logits"]["top1_agreement"], abs=1e-6)
    assert 0 < rep.start < 0.99  # an uncalibrated swap of a random-weight model


def test_kl_loss_is_validates_kl(decoder_export, tmp_path):
    """``loss="streams+kl"``: the output term is KL(teacher softmax || student softmax) over the real
    positions, equal to validate's metrics.kl_divergence; a heal with it runs on a decoder export and keeps
    the graph's nodes. (Its effect on fidelity is measured on a trained LM: benchmarks/heal_lm.py; the
    random-weight zoo decoder's near-uniform logits give no top-1 signal to heal towards.)"""
    from n6onnx.heal.losses import kl as _kl
    from n6onnx.heal.train import _prepare
    from n6onnx.testing import zoo_decoder as zd
    from n6onnx.validate import metrics

    rng = np.random.default_rng(1)
    t, s = rng.standard_normal((2, 4, 9)).astype(np.float32), rng.standard_normal((2, 4, 9)).astype(np.float32)
    mask = np.array([[1, 1, 1, 1], [1, 1, 0, 0]])
    got = float(_kl(torch.from_numpy(s), _prepare(t, mask.reshape(-1).astype(bool))))
    assert got == pytest.approx(metrics.kl_divergence(t, s, mask), rel=1e-5)
    assert float(_kl(torch.from_numpy(t), _prepare(t, None))) == pytest.approx(0.0, abs=1e-6)

    src = decoder_export("gpt2", "nokv")
    n6onnx.rewrite(src, tmp_path / "plain.onnx", ["gelu=phi6"])
    batches = [zd.example_inputs("gpt2", batch=2, seq=16, form="nokv", seed=100 + k) for k in range(4)]
    np.savez(tmp_path / "data.npz", **{f"{n}/{k}": a for k, f in enumerate(batches) for n, a in f.items()})
    rep = heal_file(tmp_path / "plain.onnx", src, tmp_path / "data.npz", tmp_path / "healed.onnx",
                    config=HealConfig(steps=4, eval_every=2, threads=1, local=0, loss="streams+kl"))
    assert rep.steps == 4 and all(np.isfinite(c[3]) for c in rep.curve[1:])
    nodes = lambda f: [(n.op_type, list(n.input)) for n in onnx.load(str(f)).graph.node]
    assert nodes(tmp_path / "healed.onnx") == nodes(tmp_path / "plain.onnx")


@pytest.fixture(scope="module")
def minilm_phi6(zoo_export, tmp_path_factory):
    """Pretrained all-MiniLM-L6-v2 (static 2 x 16 export), gelu=phi6 calibrated on 96 corpus
    sentences: the start whose block-local phase used to fall (issue 16's no-dip rule)."""
    from n6onnx.testing import corpus

    tmp = tmp_path_factory.mktemp("heal_minilm")
    src = zoo_export("minilm", "dynamo20")
    (tmp / "data.txt").write_text("\n".join(corpus.sentences()[:96]))
    n6onnx.rewrite(src, tmp / "cal.onnx", ["gelu=phi6"], calibrate=tmp / "data.txt")
    return src, tmp


def test_sequential_refit_restores_what_the_block_local_phase_loses(minilm_phi6):
    """The parallel block-local phase (every block at once from the original's input, at a fixed lr 1e-2:
    the defaults before the weight average; ``ema=0``: the live weights checked) falls below the calibrated start by more than issue 16's 0.001 (so the no-fall
    test below fails with them; it undoes calibration's upstream compensation); the
    sequential refit of the output projections at the phase's end (default refit "phase") gives
    back part of it: the refitted
    candidate is better on held-out data than the block-local weights it was computed from."""
    src, tmp = minilm_phi6
    rep = heal_file(tmp / "cal.onnx", src, tmp / "data.txt", tmp / "new.onnx",
                    config=HealConfig(steps=40, eval_every=4, threads=1, local_mode="parallel", local_lr=1e-2,
                                      local_lr_start=None, backtrack=0.0005, ema=0.0))
    local = [c for c in rep.curve if c[4:5] == ["local"]]
    refits = [c for c in rep.curve if c[4:5] == ["refit"]]
    assert min(c[2] for c in local) < rep.start - 0.001, rep.curve  # the fall the refit is for
    assert len(refits) == 1 and refits[0][0] == local[-1][0], rep.curve
    assert refits[0][2] > local[-1][2], rep.curve
    assert rep.best >= rep.start and rep.curve[-1][4] == "global"


def test_no_fall_setting_of_a_pretrained_rewrite_never_falls_below_its_start(minilm_phi6):
    """Issue 16's rule on pretrained MiniLM gelu=phi6 with the no-fall setting (``local_mode=
    "sequential"``, ``local_lr=3e-4``; the CLI's --heal-local-mode sequential --heal-local-lr 3e-4):
    every held-out check (the block-local phase, the refit and the global phase) is within 0.001 of
    the calibrated start. (The previous defaults, every block at once from the original's input at a
    fixed 1e-2, fall 0.9980 -> 0.9959 here: the refit test above.) The sequential block-local phase
    trains one block at a time on the student's own stream and keeps a block only where a check does
    not fall."""
    src, tmp = minilm_phi6
    rep = heal_file(tmp / "cal.onnx", src, tmp / "data.txt", tmp / "seq.onnx",
                    config=HealConfig(steps=40, eval_every=4, threads=1, local_mode="sequential", local_lr=3e-4))
    assert [c[4] for c in rep.curve[1:]].count("local") >= 6, rep.curve  # each of the 6 FFN blocks checked
    assert rep.curve[-1][4] == "global"
    assert all(c[2] >= rep.start - 0.001 for c in rep.curve), rep.curve
    assert rep.lowest >= rep.start - 0.001 and rep.best >= rep.start


def test_adaptive_step_of_a_pretrained_rewrite_never_falls_below_its_start(minilm_phi6):
    """Issue 16's rule with the adaptive block-local step (``local_lr_start=1e-4``, the CLI's
    --heal-local-lr-start 1e-4; the parallel phase, the noise-aware backtrack margin): every held-out
    check of pretrained MiniLM gelu=phi6 is within 0.001 of the calibrated start. The fixed schedule (a
    step of 1e-2 after a warm-up, a fixed margin of 0.0005: ``local_lr_start=None, backtrack=0.0005``)
    falls 0.9980 -> 0.9959 here (the refit test above runs it). The step starts small and doubles only
    after checks that do not fall, and checks come more often at small steps, so one check interval
    loses little."""
    src, tmp = minilm_phi6
    cfg = HealConfig(steps=40, eval_every=4, threads=1, local_lr_start=1e-4)
    assert cfg.local_mode == "parallel" and cfg.backtrack == "auto"
    rep = heal_file(tmp / "cal.onnx", src, tmp / "data.txt", tmp / "adaptive.onnx", config=cfg)
    local = [c for c in rep.curve if c[4:5] == ["local"]]
    assert len(local) > 40 * cfg.local / cfg.eval_every, rep.curve  # checked more often than every 4 steps
    assert max(c[6] for c in local) > cfg.local_lr_start, rep.curve  # the step grew after safe checks
    assert rep.curve[-1][4] == "global"
    assert all(c[2] >= rep.start - 0.001 for c in rep.curve), rep.curve
    assert rep.lowest >= rep.start - 0.001 and rep.best >= rep.start


def test_refit_starts_no_projection_past_its_deadline(minilm_phi6):
    """The sequential refit honours the heal's time budget: with a deadline already passed it
    refits nothing (every value as given), without one it refits every writer in graph order (the
    values change), so a short --heal-minutes is not overrun by the refit."""
    src, tmp = minilm_phi6
    model, original = io.load(tmp / "cal.onnx"), io.load(src)
    proto, oproto = ir.to_proto(model), ir.to_proto(original)
    names = targets.trainable(oproto, proto, "rewritten")
    streams = targets.stream_points(original, proto)
    writers = refit.writers(proto, names, streams)
    assert len(writers) == 6, writers  # the six FFN down projections
    student = executor.GraphModule(proto)
    teacher = targets.Teacher(original, streams, threads=1)
    batches = load_data(tmp / "data.txt", original)[:4]
    values = {n: student.parameter(n).detach().clone() for n in names}
    args = (student, writers, values, batches, range(len(batches)), lambda k: teacher(k, batches[k]), _mask_rows)
    late = refit.refit(*args, deadline=time.perf_counter() - 1)
    assert all(torch.equal(late[n], values[n]) for n in names)
    done = refit.refit(*args)
    assert all(not torch.equal(done[w.weight], values[w.weight]) for w in writers)


def test_compact_rounds_to_float16_only_what_fits():
    """``targets.compact``: float32 within float16's range becomes its float16 rounding (relative error
    <= 2^-11, against numpy's own cast); values past the range, non-finite values and other dtypes stay."""
    rng = np.random.default_rng(0)
    a = (rng.standard_normal((64, 48)) * 30).astype(np.float32)
    c = targets.compact(a)
    assert c.dtype == np.float16
    np.testing.assert_array_equal(c, a.astype(np.float16))
    assert np.all(np.abs(c.astype(np.float32) - a) <= np.abs(a) * 2.0 ** -11 + 2.0 ** -24)
    for keep in (np.array([1.0, 7e4], np.float32), np.array([1.0, np.inf], np.float32), a.astype(np.float64),
                 np.arange(4, dtype=np.int64)):
        assert targets.compact(keep) is keep


def test_half_cache_keeps_float16_streams_and_float32_outputs(minilm_phi6):
    """The teacher with ``half`` keeps its stream points as float16 (about half the bytes cached), the
    outputs as float32 and bit for bit as onnxruntime gives them; its values are the same cached or
    recomputed (a zero budget caches nothing); the loss's targets come back float32, within float16
    rounding of the full-precision teacher."""
    from n6onnx.heal.train import Targets

    src, tmp = minilm_phi6
    model, original = io.load(tmp / "cal.onnx"), io.load(src)
    proto = ir.to_proto(model)
    streams = targets.stream_points(original, proto)
    outs = [o.name for o in proto.graph.output]
    half = [n for n in streams if n not in outs]
    batches = load_data(tmp / "data.txt", original)[:3]
    full = targets.Teacher(original, streams + outs, threads=1)
    small = targets.Teacher(original, streams + outs, threads=1, half=half)
    uncached = targets.Teacher(original, streams + outs, threads=1, cache_bytes=0, half=half)
    for k in range(3):
        f, s, u = full(k, batches[k]), small(k, batches[k]), uncached(k, batches[k])
        for n in streams + outs:
            np.testing.assert_array_equal(s[n], u[n])
            if n in half:
                assert s[n].dtype == np.float16
                np.testing.assert_array_equal(s[n], f[n].astype(np.float16))
            else:
                assert s[n].dtype == np.float32
                np.testing.assert_array_equal(s[n], f[n])
    assert not uncached.cache and len(small.cache) == 3
    assert small.used < 0.6 * full.used, (small.used, full.used)
    got = Targets(small, lambda k: batches[k])(0)
    ref = Targets(full, lambda k: batches[k])(0)
    for n in half:
        assert got[n][0].dtype == torch.float32
        err = (got[n][0] - ref[n][0]).abs()
        assert bool((err <= ref[n][0].abs() * 2.0 ** -11 + 1e-7).all()), n
        torch.testing.assert_close(got[n][1], ref[n][1], rtol=2e-3, atol=0)  # the rows' 1 / (H var) weights


def test_heal_with_a_half_cache_heals_like_the_full_one(minilm_phi6):
    """The same heal (fixed steps) with the stream points cached as float16 and as float32 follows the
    same course: at every check the held-out fidelity agrees within 2e-4 and the training loss within
    2% (the targets differ by float16 rounding only), but not bit for bit (the setting reaches the
    teacher: the rounded targets move the loss); an unknown cache dtype is refused before any work."""
    src, tmp = minilm_phi6
    reps = {}
    for dt in ("float16", "float32"):
        cfg = HealConfig(steps=20, eval_every=10, threads=1, cache_dtype=dt)
        reps[dt] = heal_file(tmp / "cal.onnx", src, tmp / "data.txt", tmp / f"h-{dt}.onnx", config=cfg)
    a, b = reps["float16"].curve, reps["float32"].curve
    assert [c[0] for c in a] == [c[0] for c in b] and len(a) >= 3, (a, b)
    for x, y in zip(a, b):
        assert abs(x[2] - y[2]) < 2e-4, (x, y)
        if len(x) > 3 and x[3] is not None:
            assert abs(x[3] - y[3]) <= 0.02 * abs(y[3]), (x, y)
    losses = [(x[3], y[3]) for x, y in zip(a, b) if len(x) > 3 and x[3] is not None]
    assert losses and any(x != y for x, y in losses), losses
    assert reps["float16"].config["cache_dtype"] == "float16"
    with pytest.raises(n6onnx.errors.BadArgumentError, match="cache_dtype"):
        heal_file(tmp / "cal.onnx", src, tmp / "data.txt", tmp / "bad.onnx", config=HealConfig(steps=1, cache_dtype="int8"))
    assert not (tmp / "bad.onnx").exists()
