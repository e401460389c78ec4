"""n6onnx tune: tiny budgets on a small random zoo model. Reported fidelity is checked against an
independent validate run on the held-out part; CLI errors; the recipe space's determinism; the
heal hook sees the fit part only."""

from __future__ import annotations

import itertools
import json
import pathlib
import sys

import numpy as np
import onnx
import optuna
import pytest
from click.testing import CliRunner

import n6onnx
from n6onnx.testing import zoo
from n6onnx.cli import main
from n6onnx.errors import BadArgumentError
from n6onnx.quantize import int8graph
from n6onnx.tune import ModelInfo, Point, Recipe, pareto, space, stages, study, tune
from ..conftest import require

MODEL = ("bert", "dynamo20")
KEEP = {"block_drop": 0, "attention": "none", "gelu": "keep", "ffn": "keep", "moe": "keep"}
FAST = dict(minutes=3, threads=1, seconds_per_trial=0.4, block_seconds=0.1)


def _npz(path: pathlib.Path, n: int = 8) -> pathlib.Path:
    return zoo.calibration_npz("bert", path, batches=n)


def test_tune_writes_the_fastest_recipe_meeting_the_gate(zoo_export, tmp_path, monkeypatch):
    src = zoo_export(*MODEL)
    data = _npz(tmp_path / "data.npz")
    # distinct speed-ups, some above 1, in timing order: which point is written must not depend on whether this
    # CPU runs int8 or a small rewrite faster than fp32 (a tiny model on x86 without VNNI may not)
    _speeds(monkeypatch, itertools.cycle([1.3, 0.8, 1.6, 1.1, 0.9, 1.45]))
    rep = tune(src, tmp_path / "out.onnx", calibrate=data, min_cosine=0.9, trials=3, report_dir=tmp_path / "rep",
               **FAST)
    assert rep.chosen is not None and rep.output == str(tmp_path / "out.onnx")
    assert [(p.role, p.graph) for p in rep.references] == [("fp32", ""), ("int8", study.FUSED_FIRST),
                                                             ("int8", study.QUANTIZED_FIRST)]
    timed = [p for p in rep.trials + rep.references[1:] if p.speedup is not None]
    ok = [p for p in timed if p.cosine >= 0.9]
    assert rep.chosen.speedup == max(p.speedup for p in ok)  # speed-up vs the interleaved baseline, not raw ms
    assert all(p.status == "pruned" and p.timing is None for p in rep.trials if p.cosine is not None and p.cosine < 0.9)
    # the reported fidelity is the held-out part's (every 4th batch), as an independent validate run sees it
    d = np.load(data)
    held = [{n: d[f"{n}/{k}"] for n in ("input_ids", "attention_mask", "token_type_ids")} for k in (3, 7)]
    v = n6onnx.validate(src, tmp_path / "out.onnx", feeds=held)
    assert v.cosine_mean == pytest.approx(rep.chosen.cosine, abs=1e-6)
    onnx.checker.check_model(onnx.load(tmp_path / "out.onnx"))
    j = json.loads((tmp_path / "rep" / "tune.json").read_text())
    assert j["chosen"]["label"] == rep.chosen.recipe.label and j["front"] and j["references"][1]["quantize"] == "int8"
    assert [r["graph"] for r in j["references"]] == [None, study.FUSED_FIRST, study.QUANTIZED_FIRST]
    assert (tmp_path / "rep" / "tune.png").read_bytes()[:4] == b"\x89PNG"
    front = {id(p) for p in rep.front}
    assert id(rep.chosen) in front or rep.chosen.role == "int8"


def test_a_budget_spent_on_the_references_is_reported(zoo_export, tmp_path):
    """A budget shorter than preparing the references tries no recipe, and says so with the time they took."""
    src = zoo_export(*MODEL)
    rep = tune(src, None, calibrate=_npz(tmp_path / "data.npz"), min_cosine=-1.0,
               **{**FAST, "minutes": 0.001})
    assert rep.trials == []
    took = rep.to_json()["setting"]["references_seconds"]
    assert took > 0.06  # longer than the budget: fusing, quantizing twice and timing three references
    assert any("no recipe was tried" in n and f"{took:.1f} s" in n for n in rep.notes), rep.notes
    # the table fits an 80-column terminal: no number or header is broken across lines; an encoder has no top-1
    from rich.console import Console

    from n6onnx.tune import render

    con = Console(width=80, record=True, color_system=None)
    con.print(render.table(rep))
    text = con.export_text()
    assert "top-1" not in text and all(h in text for h in ("cosine", "x fp32", "x int8", "p50 ms"))
    assert f"{rep.references[1].cosine:.4f}" in text


def test_int8_alone_is_measured_in_both_graph_orders_and_the_faster_is_the_anchor(zoo_export, tmp_path,
                                                                                    monkeypatch):
    """The int8 reference is what ORT's quantizer gives at its best: the original fused then quantized (a fused
    attention keeps Q/K/V float) and quantized then fused (every MatMul int8, as quantize_dynamic on the export
    gives), both timed; "x int8" is against the faster. Unhealed int8 recipes are built in that order."""
    src = zoo_export(*MODEL)
    data = _npz(tmp_path / "data.npz")
    seen = []
    real = stages.quantize

    def quantize(a, b, mode="int8", fit=None):  # the real quantizer; the test notes what it quantized
        real(a, b, mode, fit)
        f, q = onnx.load(a), onnx.load(b)
        seen.append((pathlib.Path(a).name, len(int8graph.quantized_matmuls(f, q))))

    monkeypatch.setattr(stages, "quantize", quantize)
    n_matmul = sum(n.op_type in ("MatMul", "Gemm") for n in onnx.load(src).graph.node)
    rep = tune(src, None, calibrate=data, min_cosine=-1.0, trials=0, **FAST)
    fused, first = rep.references[1:]
    assert (fused.graph, first.graph) == (study.FUSED_FIRST, study.QUANTIZED_FIRST)
    assert seen[1] == (pathlib.Path(src).name, seen[1][1]) and seen[1][1] > 0  # the export itself, quantized
    assert seen[0][0] != pathlib.Path(src).name and seen[0][1] <= seen[1][1] <= n_matmul
    assert fused.speedup and first.speedup and rep.int8 is max((fused, first), key=lambda p: p.speedup)
    # an unhealed int8 recipe follows the anchor's order: quantized first when that is the faster
    monkeypatch.setattr(study, "anchor", lambda refs: refs[2])
    monkeypatch.setattr(study.space, "seeds", lambda info, heal, **_: [{**KEEP, "gelu": "phi6", "int8": True}])
    seen.clear()
    _speeds(monkeypatch, itertools.cycle([1.2, 1.3, 1.5]))  # the trial is chosen on any CPU (int8 may be slower)
    rep = tune(src, None, calibrate=data, min_cosine=-1.0, trials=1, **FAST)
    assert rep.trials[0].recipe == Recipe(("gelu=phi6",), "int8", False) and rep.trials[0].status == "complete"
    assert seen[-1][0].startswith("rw-")  # the calibrated rewrite itself, not a fused copy
    j = rep.to_json()
    assert j["chosen"]["speedup_vs_int8"] == pytest.approx(rep.chosen.speedup / rep.references[2].speedup)


def test_cli_no_recipe_meets_the_gate_exits_1_and_writes_nothing(zoo_export, tmp_path):
    src = zoo_export(*MODEL)
    data = _npz(tmp_path / "data.npz")
    r = CliRunner().invoke(main, ["tune", str(src), "--calibrate", str(data), "--min-cosine", "1.0", "--min-nn", "1",
                                  "-o", str(tmp_path / "out.onnx"), "--trials", "1", "--threads", "1",
                                  "--seconds-per-trial", "0.3", "--minutes", "2"])
    assert r.exit_code == 1, r.output
    assert not (tmp_path / "out.onnx").exists()
    assert "no recipe met cosine >= 1" in r.output and "int8" in r.output  # the front is printed


@pytest.mark.parametrize("args,match", [(["--min-cosine", "1.5"], "out of range"),
                                        (["--min-cosine", "0.9", "--min-nn", "-1"], "out of range"),
                                        (["--min-cosine", "0.9", "--minutes", "0"], "positive"),
                                        (["--min-cosine", "0.9", "--heal-minutes", "0"], "positive"),
                                        (["--min-cosine", "0.9", "--calibrate", "missing.txt"], "no such file")])
def test_cli_bad_arguments(args, match, zoo_export, tmp_path):
    src = zoo_export(*MODEL)
    base = ["tune", str(src), "-o", str(tmp_path / "o.onnx")]
    if "--calibrate" not in args:
        base += ["--calibrate", str(_npz(tmp_path / "d.npz"))]
    r = CliRunner().invoke(main, base + args)
    assert r.exit_code == 2 and match in r.output and "Traceback" not in r.output
    assert not (tmp_path / "o.onnx").exists()
    r = CliRunner().invoke(main, ["tune", str(src), "-o", "x.onnx", "--calibrate", "d", "--min-cosine", "abc"])
    assert r.exit_code == 2 and "Traceback" not in r.output


def test_space_is_deterministic_given_the_seed():
    info = ModelInfo(gelu=6, ffn=6, attention=6)

    def labels(seed):
        study = optuna.create_study(directions=["maximize", "minimize"],
                                    sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=8))
        for p in space.seeds(info, heal=True):
            study.enqueue_trial(p)
        got = []
        for _ in range(8):
            t = study.ask()
            r = space.suggest(t, info, heal=True)
            got.append(r)
            study.tell(t, [0.9, 1.0])
        return got

    a, b = labels(3), labels(3)
    assert a == b and a != labels(4)
    # the seeds come first, exactly: the int8 original healed (with a heal hook), then one layer dropped
    assert a[:2] == [Recipe((), "int8", True), Recipe(("block=drop:1",), "int8", False)]
    for r in a:  # never more than half the blocks dropped/replaced; block drops come before attention passes
        n = sum(int(p.split(":")[-1]) for p in r.passes if p.startswith(("block=", "attention=")))
        assert n <= 3
        kinds = [p.split("=")[0] for p in r.passes]
        assert kinds == sorted(kinds, key=["block", "attention", "gelu", "ffn", "moe"].index)
    small = ModelInfo(attention=1)
    t = optuna.create_study().ask()
    assert space.suggest(t, small, heal=False).passes == ()


def test_a_float16_stage_never_heals_the_unrewritten_original():
    """On CUDA the stage is fp16, which a heal cannot train against: the float original healed in float is the
    original (the heal refuses it: nothing to train), so neither a seed nor a proposal asks for it."""
    info = ModelInfo(gelu=6, ffn=6, attention=6)
    assert all(not p["heal"] for p in space.seeds(info, heal=True, fake_quant=False))
    assert space.seeds(info, heal=True)[0]["heal"]  # int8: the healed int8 original comes first
    study = optuna.create_study(directions=["maximize", "minimize"])
    bare = {"block_drop": 0, "attention": "none", "gelu": "keep", "ffn": "keep", "int8": True, "heal": True}
    study.enqueue_trial(bare)
    study.enqueue_trial({**bare, "gelu": "phi6"})
    assert space.suggest(study.ask(), info, heal=True, stage="fp16", fake_quant=False) == Recipe((), "fp16", False)
    assert space.suggest(study.ask(), info, heal=True, stage="fp16", fake_quant=False) == \
        Recipe(("gelu=phi6",), "fp16", True)  # a rewrite still heals (in float), then converts


def test_pareto_front():
    def pt(c, l):
        return Point(Recipe((f"x{c}{l}",)), "trial", fidelity={"cosine": c},
                     timing={"latency_ms": {"median": 99}, "speedup_vs_fp32": {"median": 1 / l}})

    pts = [pt(0.99, 10), pt(0.98, 5), pt(0.97, 6), pt(0.999, 20), pt(0.98, 5.5)]
    assert [(p.cosine, round(p.relative_latency, 6)) for p in pareto(pts)] == [(0.98, 5), (0.99, 10), (0.999, 20)]


def test_split_is_disjoint_and_deterministic():
    fit, held = stages.split(list(range(20)), 0.25)
    assert held == [3, 7, 11, 15, 19] and not set(fit) & set(held) and len(fit) + len(held) == 20
    with pytest.raises(n6onnx.N6Error):
        stages.split([1, 2], 1.5)


def test_heal_hook_is_a_dimension_and_sees_only_the_fit_part(zoo_export, tmp_path):
    src = zoo_export(*MODEL)
    data = _npz(tmp_path / "data.npz")
    calls = []

    def heal(model, out, *, original, calibrate, tokenizer, minutes, quantize):
        assert 0 < minutes <= 3.0 and quantize in (None, "int8")
        calls.append(pathlib.Path(calibrate))
        d = np.load(calibrate)
        calls.append(sorted({int(k.split("/")[1]) for k in d.files}))
        out.write_bytes(pathlib.Path(model).read_bytes())  # an identity "heal"

    # a gate nothing meets: every trial stops after its fp32 fidelity (heal runs before it), so this is quick
    rep = tune(src, None, calibrate=data, min_cosine=0.999999, trials=5, heal=heal, seed=1, **FAST)
    healed = [p for p in rep.trials if p.recipe.heal]
    # only a recipe meeting the gate is timed (the int8 original healed may meet it on this tiny model)
    assert healed and calls and all((p.status == "pruned") == (p.cosine < 0.999999) for p in rep.trials)
    assert calls[1] == list(range(6))  # 6 fit batches out of 8: the held-out ones (3, 7) never reach heal
    assert "heal" in rep.setting and rep.setting["heal"] is True


def test_bad_data_is_a_clear_error(zoo_export, tmp_path):
    src = zoo_export(*MODEL)
    with pytest.raises(BadArgumentError, match="cannot be split"):
        tune(src, None, calibrate=_npz(tmp_path / "one.npz", 1), min_cosine=0.9, trials=1, **FAST)


def test_near_misses_get_a_healed_trial(zoo_export, tmp_path):
    """Every recipe within HEAL_MARGIN of the gate (here all: the tiny model keeps cosine ~0.9999 and the
    gate is just above it) is tried again healed, once per pass list, within the heal time limit."""
    src = zoo_export(*MODEL)
    data = _npz(tmp_path / "data.npz")
    spent = []

    def heal(model, out, *, original, calibrate, tokenizer, minutes, quantize):
        spent.append(minutes)
        out.write_bytes(pathlib.Path(model).read_bytes())

    rep = tune(src, None, calibrate=data, min_cosine=0.999999, trials=6, heal=heal, heal_minutes=0.5, seed=1,
               **FAST)
    plain = [p for p in rep.trials if not p.recipe.heal]
    healed = [p for p in rep.trials if p.recipe.heal]
    near = [p for p in plain if p.cosine is not None and p.cosine >= 0.999999 - study.HEAL_MARGIN]
    seed = ((), "int8")  # the int8 original healed: a seed, not a near miss

    def keys(pts):
        return [(p.recipe.passes, p.recipe.quantize) for p in pts if (p.recipe.passes, p.recipe.quantize) != seed]

    assert near and set(keys(healed)) >= set(keys(near)[:len(keys(healed))])
    # one healed trial per pass list and int8 on/off (the int8 original healed is a seed)
    assert len({(p.recipe.passes, p.recipe.quantize) for p in healed}) == len(healed)
    assert spent and all(0 < m <= 0.5 for m in spent)


def test_tune_heals_for_real_within_a_tiny_budget(zoo_export, tmp_path):
    """The default hook runs n6onnx.heal on the fit part; the healed recipe is measured like any other."""
    require("torch")
    src = zoo_export(*MODEL)
    data = _npz(tmp_path / "data.npz")
    hook, why = stages.default_heal(threads=1)
    assert hook is not None and why is None
    rep = tune(src, None, calibrate=data, min_cosine=0.999999, trials=4, heal=hook, heal_minutes=0.05, seed=1,
               **FAST)
    healed = [p for p in rep.trials if p.recipe.heal]
    assert healed and all(p.status != "failed" for p in healed), [(p.recipe.label, p.reason) for p in healed]
    assert all(p.cosine is not None and -1 <= p.cosine <= 1 for p in healed)


def test_without_torch_heal_is_skipped_and_said(zoo_export, tmp_path, monkeypatch):
    import n6onnx.heal as heal_pkg

    monkeypatch.delattr(heal_pkg, "run", raising=False)
    monkeypatch.setitem(sys.modules, "n6onnx.heal.run", None)  # as if torch were missing
    hook, why = stages.default_heal()
    assert hook is None and "heal extra" in why
    src = zoo_export(*MODEL)
    data = _npz(tmp_path / "data.npz")
    r = CliRunner().invoke(main, ["tune", str(src), "--calibrate", str(data), "--min-cosine", "0.9", "--heal",
                                  "-o", str(tmp_path / "o.onnx")])
    assert r.exit_code == 2 and "heal extra" in r.output and not (tmp_path / "o.onnx").exists()
    rep = tune(src, None, calibrate=data, min_cosine=0.999999, trials=1, heal=hook, heal_note=why, seed=1, **FAST)
    assert any("healing skipped" in n for n in rep.notes) and rep.setting["heal"] is False


def test_a_near_miss_gets_one_healed_trial_unless_already_healed(zoo_export, tmp_path, monkeypatch):
    """A recipe missing the cosine gate by at most HEAL_MARGIN gets a healed trial queued, once; not when
    its healed version was already measured (the healed int8 seed)."""
    import shutil

    src = zoo_export(*MODEL)
    data = _npz(tmp_path / "data.npz")
    healed = []

    def hook(model, out, **kw):  # scheduling only: a heal that keeps the weights
        healed.append(kw["quantize"])
        shutil.copyfile(model, out)

    said = []
    monkeypatch.setattr(study.space, "seeds", lambda info, heal, **_: [{**KEEP, "int8": True, "heal": True},
                                                                  {**KEEP, "int8": True, "heal": False},
                                                                  {**KEEP, "gelu": "phi6", "int8": False, "heal": False}])
    rep = tune(src, None, calibrate=data, min_cosine=1.0, trials=4, heal=hook, progress=said.append, **FAST)
    labels = [p.recipe.label for p in rep.trials]
    assert labels[:3] == ["int8 + heal", "int8", "gelu=phi6"]
    assert rep.trials[1].cosine >= 1.0 - study.HEAL_MARGIN  # int8 alone is a near miss ...
    assert not any("int8 missed the gates by a little" in m for m in said)  # ... already healed: not queued
    assert labels.count("int8 + heal") == 1 and healed[0] == "int8"
    if rep.trials[2].cosine >= 1.0 - study.HEAL_MARGIN:  # gelu=phi6 too: its healed trial comes next
        assert labels[3] == "gelu=phi6 + heal" and healed[1] is None
        assert any("gelu=phi6 missed the gates by a little" in m for m in said)


def test_every_timed_graph_runs_in_its_chosen_layer_norm_form_and_is_written_in_it(zoo_export, tmp_path,
                                                                                   monkeypatch):
    from n6onnx.bench import layernorm
    from n6onnx.tune import measure

    monkeypatch.setattr(layernorm, "MARGIN", 0.0)  # any timing: the parts win, for every graph
    ran = []
    runner = measure.Runner

    def recording(sess, feed, cfg):  # every session tune's Timer times (the baseline and each candidate)
        ran.append((layernorm.count(onnx.load(sess._model_path)), cfg.disabled_optimizers))
        return runner(sess, feed, cfg)

    monkeypatch.setattr(measure, "Runner", recording)
    src = zoo_export(*MODEL)
    _speeds(monkeypatch, itertools.cycle([1.3, 0.8, 1.6]))  # something is written on any CPU (int8 may be slower)
    rep = tune(src, tmp_path / "out.onnx", calibrate=_npz(tmp_path / "data.npz"), min_cosine=0.9, trials=2, **FAST)
    ln = rep.setting["layernorm"]  # the original's
    assert ln["form"] == "split" and ln["skip_layernorm_nodes"] > 0
    assert ln["disabled_optimizers"] == [layernorm.FUSION]
    timed = [p for p in rep.references + rep.trials if p.timing]
    assert len(timed) >= 3  # fp32, the two int8 references, ...
    for p in timed:  # ... each chose its own form
        assert p.timing["layernorm"]["form"] == "split", p.label
    out = onnx.load(tmp_path / "out.onnx")
    assert layernorm.count(out) == 0 and "LayerNormalization" in {n.op_type for n in out.graph.node}
    assert any("disabled_optimizers" in n for n in rep.notes)
    # every timed session ran its graph split, and kept it split
    assert len(ran) >= len(timed) and all(t == (0, (layernorm.FUSION,)) for t in ran)


def _lm_npz(path: pathlib.Path, n: int = 8) -> pathlib.Path:
    """Next-token batches for the decoder zoo's no-cache GPT-2 (2 x 16 each): random ids, full masks."""
    from n6onnx.testing import zoo_decoder

    rng = np.random.default_rng(0)
    arrays = {}
    for k in range(n):
        arrays[f"input_ids/{k}"] = rng.integers(0, zoo_decoder.VOCAB, (2, 16)).astype(np.int64)
        arrays[f"attention_mask/{k}"] = np.ones((2, 16), np.int64)
        arrays[f"position_ids/{k}"] = np.tile(np.arange(16, dtype=np.int64), (2, 1))
    np.savez(path, **arrays)
    return path


def test_a_decoder_is_gated_on_top1_agreement(decoder_export, tmp_path, monkeypatch):
    """A decoder's logits keep a cosine near 1 where its next token changes, so tune gates it on top-1
    agreement (--min-top1), measured as an independent validate run measures it. No --dim: a dynamic
    export is timed at the shapes of its .npz feeds."""
    src = decoder_export("gpt2", "nokv")
    data = _lm_npz(tmp_path / "lm.npz")
    _speeds(monkeypatch, itertools.cycle([1.2, 0.8, 1.4]))  # as above: some point is faster than fp32 on any CPU
    rep = tune(src, tmp_path / "out.onnx", calibrate=data, min_cosine=0.0, min_top1=0.9, trials=3, **FAST)
    assert rep.setting["feed_shapes"]["input_ids"] == [2, 16]
    measured = [p for p in rep.references + rep.trials if p.fidelity]
    assert measured and all(p.top1 is not None and p.nn is None for p in measured)
    for p in measured:
        assert rep.meets(p) == (p.cosine >= 0.0 and p.top1 >= 0.9)
    # the front ranks top-1 against latency: no timed point is both faster and of higher top-1 than a front point
    timed = [p for p in measured if p.relative_latency is not None]
    assert rep.front and set(map(id, rep.front)) == set(map(id, study.pareto(timed, "top1")))
    for p in rep.front:
        assert not any(q.top1 > p.top1 and q.relative_latency < p.relative_latency for q in timed)
    d = np.load(data)
    held = [{n: d[f"{n}/{k}"] for n in ("input_ids", "attention_mask", "position_ids")} for k in (3, 7)]
    assert rep.chosen is not None  # int8 alone keeps this tiny model's next token
    v = n6onnx.validate(src, tmp_path / "out.onnx", feeds=held)
    top1 = next(o.logits["top1_agreement"] for o in v.outputs.values() if o.logits)
    assert top1 == pytest.approx(rep.chosen.top1, abs=1e-9) and top1 >= 0.9
    assert "top-1 >= 0.9" in rep.gates()
    with pytest.raises(BadArgumentError, match="--min-nn"):
        tune(src, None, calibrate=data, min_cosine=0.0, min_nn=0.5, trials=0, **FAST)


def test_min_top1_on_an_encoder_is_a_clear_error(zoo_export, tmp_path, monkeypatch):
    """Refused before anything is fused or timed (the Timer fuses the original: about a minute on MiniLM)."""
    from n6onnx.tune import measure

    def no_timer(*a, **k):
        raise AssertionError("the gate was checked after the timer started")

    monkeypatch.setattr(measure, "Timer", no_timer)
    with pytest.raises(BadArgumentError, match="--min-top1: no output"):
        tune(zoo_export(*MODEL), None, calibrate=_npz(tmp_path / "d.npz"), min_cosine=0.9, min_top1=0.9, trials=0,
             **FAST)


def test_cuda_without_onnxruntime_gpu_is_refused_before_any_work(zoo_export, tmp_path, monkeypatch):
    """--provider cuda on the CPU wheel of onnxruntime: a clear error naming the missing provider, before
    anything is split, fused or timed."""
    import onnxruntime as ort

    from n6onnx.errors import ProviderUnavailableError
    from n6onnx.tune import measure

    def no_timer(*a, **k):
        raise AssertionError("the provider was checked after the timer started")

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    monkeypatch.setattr(measure, "Timer", no_timer)
    with pytest.raises(ProviderUnavailableError, match="install onnxruntime-gpu"):
        tune(zoo_export(*MODEL), None, calibrate=_npz(tmp_path / "d.npz"), min_cosine=0.9, trials=0,
             provider="cuda", **FAST)


def test_heal_hook_trains_on_the_asked_device_or_falls_back_to_the_cpu(monkeypatch):
    """tune --provider cuda asks the heal hook for its GPU; a torch that cannot use it heals on the CPU."""
    require("torch")
    import torch

    from n6onnx.heal import run as heal_run

    seen = []
    monkeypatch.setattr(heal_run, "heal_file", lambda *a, config, **k: seen.append(config.device))
    hook, why = stages.default_heal(device="cuda:0")
    assert hook is not None, why
    hook("m.onnx", "o.onnx", original="src.onnx", calibrate="d.npz", tokenizer=None, minutes=1)
    assert seen == ["cuda:0" if torch.cuda.is_available() else "cpu"]
    hook, _ = stages.default_heal()
    hook("m.onnx", "o.onnx", original="src.onnx", calibrate="d.npz", tokenizer=None, minutes=1)
    assert seen[-1] == "cpu"


def test_the_fit_part_of_a_text_data_reaches_the_heals_whole(zoo_export, tmp_path, monkeypatch):
    """--calib-samples caps calibration only (rewrite caps itself): the fit file that the heals read holds every
    line that is not held out (it once held the first --calib-samples lines only, so a heal trained, and checked
    itself, on calibration's own samples)."""
    import shutil

    from n6onnx.testing import corpus

    lines = corpus.sentences()[:40]
    data = tmp_path / "d.txt"
    data.write_text("\n".join(lines) + "\n")
    seen = []

    def hook(model, out, *, calibrate, **kw):
        seen.append(pathlib.Path(calibrate).read_text().splitlines())
        shutil.copyfile(model, out)

    monkeypatch.setattr(study.space, "seeds", lambda info, heal, **_: [{**KEEP, "gelu": "phi6", "int8": False,
                                                                         "heal": True}])
    tune(zoo_export("minilm", "dynamo18"), None, calibrate=data, min_cosine=-1.0, trials=1, heal=hook,
         calib_samples=4, dims={"batch": 2, "seq": 16}, **FAST)
    fit = [x for i, x in enumerate(lines) if i % 4 != 3]  # every 4th line is held out
    assert seen == [fit] and len(fit) == 30


def test_the_int4_stage_searches_fitted_matmulnbits(zoo_export, tmp_path, monkeypatch):
    """--stage int4: int4 alone in both graph orders is the reference, every recipe's reduced precision is int4
    (MatMulNBits), unhealed ones fitted on the fit part, a healed one healed against the int4 grid (fake
    quantization) and not fitted after; the written model's reported fidelity is what validate finds."""
    src = zoo_export(*MODEL)
    data = _npz(tmp_path / "data.npz")
    fits, heals = [], []
    real = stages.quantize

    def quantize(a, b, mode="int8", fit=None):
        fits.append((mode, fit is not None))
        real(a, b, mode, fit)

    def hook(model, out, **kw):
        heals.append(kw["quantize"])
        import shutil
        shutil.copyfile(model, out)

    monkeypatch.setattr(stages, "quantize", quantize)
    monkeypatch.setattr(study.space, "seeds", lambda info, heal, **_: [{**KEEP, "int8": True, "heal": True},
                                                                      {**KEEP, "gelu": "phi6", "int8": True,
                                                                       "heal": False}])
    _speeds(monkeypatch, [0.7, 0.7, 1.5, 1.6])  # int4 alone slower than fp32 (as on this CPU), the recipes not
    rep = tune(src, tmp_path / "out.onnx", calibrate=data, min_cosine=0.0, trials=2, stage="int4", heal=hook, **FAST)
    assert rep.chosen is rep.trials[1]  # the faster trial; the int4 references are no saving
    assert [(p.role, p.graph) for p in rep.references] == [("fp32", ""), ("int4", study.FUSED_FIRST),
                                                             ("int4", study.QUANTIZED_FIRST)]
    assert [p.recipe.label for p in rep.trials] == ["int4 + heal", "gelu=phi6 + int4"]
    assert heals == ["int4"] and rep.trials[0].healing["mode"] == "fake-quant int4"
    assert fits == [("int4", True)] * 2 + [("int4", False), ("int4", True)]  # references, healed, unhealed recipe
    assert rep.setting["stage"] == "int4" and "MatMulNBits" in rep.setting["quantize"]
    ops = {n.op_type for n in onnx.load(tmp_path / "out.onnx").graph.node}
    assert "MatMulNBits" in ops and "MatMulInteger" not in ops
    d = np.load(data)
    held = [{n: d[f"{n}/{k}"] for n in ("input_ids", "attention_mask", "token_type_ids")} for k in (3, 7)]
    assert n6onnx.validate(src, tmp_path / "out.onnx", feeds=held).cosine_mean == \
        pytest.approx(rep.chosen.cosine, abs=1e-6)
    with pytest.raises(BadArgumentError, match="--stage int3"):
        tune(src, None, calibrate=data, min_cosine=0.9, trials=0, stage="int3", **FAST)


def _speeds(monkeypatch, speeds) -> None:
    """The Timer's speed-ups over fp32, in the order it times (the references first), replaced by ``speeds`` (any
    iterable): what a test checks does not depend on this machine's timing."""
    from n6onnx.tune import measure

    real, it = measure.Timer.time, iter(speeds)

    def time_(self, path):
        timing, p = real(self, path)
        return {**timing, "speedup_vs_fp32": {**timing["speedup_vs_fp32"], "median": next(it)}}, p

    monkeypatch.setattr(measure.Timer, "time", time_)


def test_nothing_slower_than_the_original_is_written(zoo_export, tmp_path, monkeypatch):
    """A model that meets the gates but runs slower than the fp32 original is no saving: nothing is written,
    the exit is 1 and the note says why."""
    src = zoo_export(*MODEL)
    _speeds(monkeypatch, [0.9, 0.95])
    rep = tune(src, tmp_path / "out.onnx", calibrate=_npz(tmp_path / "data.npz"), min_cosine=0.0, trials=0, **FAST)
    assert [p.speedup for p in rep.references[1:]] == [0.9, 0.95] and rep.chosen is None
    assert not (tmp_path / "out.onnx").exists()
    assert any("2 met the gates, all slower" in n for n in rep.notes), rep.notes


def test_a_kv_cache_decoder_is_tuned(decoder_export, tmp_path):
    """A KV-cache export's attention mask spans past + new tokens: the probes that check a fused int8 graph
    take their shapes from the feed (every dynamic dimension 2 made an invalid mask, an onnxruntime index
    error that ended the study)."""
    from n6onnx.testing import zoo_decoder as zd

    src = decoder_export("gpt2")
    data = zd.calibration_npz("gpt2", tmp_path / "d.npz", batches=8)
    rep = tune(src, None, calibrate=data, min_cosine=0.0, min_top1=0.5, trials=1, **FAST)
    assert [p.role for p in rep.references] == ["fp32", "int8", "int8"]
    assert all(p.top1 is not None and p.speedup for p in rep.references)
    assert rep.trials and rep.trials[0].status != "failed", rep.trials[0].reason
