"""Gates pass and fail on purpose (API and CLI exit codes); bad input gives a clear error (exit 2)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from onnx import TensorProto

import n6onnx
from n6onnx.errors import BadArgumentError, BadModelError, N6Error


@pytest.fixture
def pair(linear_model, tmp_path):
    """A logits model and a perturbed copy, an .npz of feeds, and the reference metrics."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((6, 5)).astype(np.float32)
    w2 = (w + 0.8 * rng.standard_normal(w.shape)).astype(np.float32)
    x = rng.standard_normal((4, 6)).astype(np.float32)
    npz = tmp_path / "feeds.npz"
    np.savez(npz, x=x)
    o, c = x.astype(np.float64) @ w, x.astype(np.float64) @ w2
    cos = (o * c).sum(1) / np.linalg.norm(o, axis=1) / np.linalg.norm(c, axis=1)
    ref = {"cosine_mean": cos.mean(), "max_abs_err": np.abs(o - c).max(), "top1": np.mean(o.argmax(1) == c.argmax(1))}
    assert 0 < ref["top1"] < 1 and 0 < ref["cosine_mean"] < 1
    return linear_model(w), linear_model(w2), npz, ref


# ---------------------------------------------------------------------------------------------
# Gates


@pytest.mark.parametrize("gate,option,metric,key,delta", [
    ("min_cosine", "--min-cosine", "cosine_mean", "cosine_mean", -0.01),
    ("max_abs_err", "--max-abs-err", "max_abs_err", "max_abs_err", +0.01),
    ("min_top1", "--min-top1", "top1_agreement[logits]", "top1", -0.01),
])
def test_gate_passes_and_fails(pair, cli, gate, option, metric, key, delta):
    a, b, npz, ref = pair
    ok, bad = ref[key] + delta, ref[key] - delta  # just on either side of the true value
    rep = n6onnx.validate(a, b, feeds=npz, **{gate: ok})
    assert rep.passed and rep.failed == []
    rep = n6onnx.validate(a, b, feeds=npz, **{gate: bad})
    assert not rep.passed and rep.failed == [metric]

    r = cli("validate", a, b, "--feeds", npz, option, ok)
    assert r.exit_code == 0, r.output
    r = cli("validate", a, b, "--feeds", npz, option, bad)
    assert r.exit_code == 1
    assert "gate failed" in r.stderr and metric in r.stderr
    r = cli("validate", a, b, "--feeds", npz, option, bad, "--json")
    assert r.exit_code == 1
    data = json.loads(r.stdout)  # nothing but JSON on stdout
    assert data["passed"] is False and data["failed"] == [metric]
    assert r.stderr == ""


def test_all_gates_together_name_every_failure(pair, cli):
    a, b, npz, ref = pair
    r = cli("validate", a, b, "--feeds", npz, "--min-cosine", 0.9999, "--max-abs-err", 1e-9, "--min-top1", 1.0)
    assert r.exit_code == 1
    for m in ("cosine_mean", "max_abs_err", "top1_agreement"):
        assert m in r.stderr


def test_human_output_has_a_table_per_output(pair, cli):
    a, b, npz, _ = pair
    r = cli("validate", a, b, "--feeds", npz)
    assert r.exit_code == 0
    for text in ("logits", "max abs error", "per-sample cosine", "top-1 agreement", "KL"):
        assert text in r.stdout


def test_min_top1_without_logits_output_is_an_error(hidden_model, cli):
    a = hidden_model(np.array([1.0, 2.0], np.float32))
    with pytest.raises(BadArgumentError, match="no output looks like logits"):
        n6onnx.validate(a, a, random=2, min_top1=0.5)
    r = cli("validate", a, a, "--random", 2, "--min-top1", 0.5)
    assert r.exit_code == 2 and "error:" in r.stderr and "logits" in r.stderr


@pytest.mark.parametrize("kw,msg", [
    ({"min_cosine": 1.5}, "out of range"),
    ({"min_top1": -0.1}, "out of range"),
    ({"max_abs_err": -1.0}, "out of range"),
])
def test_gate_values_are_checked(pair, kw, msg):
    a, b, npz, _ = pair
    with pytest.raises(BadArgumentError, match=msg):
        n6onnx.validate(a, b, feeds=npz, **kw)


# ---------------------------------------------------------------------------------------------
# Bad input


class _Msg(str):
    """An error message; ``in`` ignores whitespace (rich wraps long lines, even inside paths)."""

    def __contains__(self, sub: str) -> bool:
        return "".join(sub.split()) in "".join(self.split())


def _err(cli, *args) -> _Msg:
    r = cli("validate", *args)
    assert r.exit_code == 2, r.output
    assert r.stderr.startswith("error:") and "Traceback" not in r.output
    return _Msg(r.stderr)


def test_cuda_provider_without_onnxruntime_gpu_is_a_clear_error(pair, cli, monkeypatch):
    """--provider cuda on an onnxruntime without the CUDA provider (the CPU wheel): refused by name, exit 2,
    before any model is run. The CPU provider's report says where each model ran."""
    import onnxruntime as ort

    from n6onnx.errors import ProviderUnavailableError

    a, b, npz, _ = pair
    rep = n6onnx.validate(a, b, feeds=npz)
    assert rep.providers == {"original": "CPUExecutionProvider", "candidate": "CPUExecutionProvider"}
    assert rep.to_json()["providers"] == rep.providers
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    with pytest.raises(ProviderUnavailableError, match="install onnxruntime-gpu"):
        n6onnx.validate(a, b, feeds=npz, provider="cuda")
    r = cli("validate", a, b, "--feeds", npz, "--provider", "cuda")
    assert r.exit_code == 2 and "CUDAExecutionProvider is not available" in r.output
    with pytest.raises(BadArgumentError, match="--provider must be one of"):
        n6onnx.validate(a, b, feeds=npz, provider="tpu")
    with pytest.raises(BadArgumentError, match="--device-id must be a non-negative integer"):
        n6onnx.validate(a, b, feeds=npz, device_id=-1)


def test_mismatched_input_names(linear_model, cli):
    w = np.ones((3, 2), np.float32)
    msg = _err(cli, linear_model(w), linear_model(w, in_name="z"), "--random", 4)
    assert "inputs differ" in msg and "'x'" in msg and "'z'" in msg


def test_mismatched_output_names(linear_model, cli):
    w = np.ones((3, 2), np.float32)
    msg = _err(cli, linear_model(w), linear_model(w, name="scores"), "--random", 4)
    assert "outputs differ" in msg and "'logits'" in msg and "'scores'" in msg


def test_mismatched_input_types_and_shapes(linear_model, cli):
    w = np.ones((3, 2), np.float32)
    msg = _err(cli, linear_model(w), linear_model(w, in_type=TensorProto.INT64), "--random", 4)
    assert "'x'" in msg and "tensor(float)" in msg and "tensor(int64)" in msg
    msg = _err(cli, linear_model(w), linear_model(w, batch=2), "--random", 4)
    assert "'x'" in msg and "shape" in msg


def test_npz_missing_input(hidden_model, tmp_path, cli):
    a = hidden_model(np.array([1.0, 2.0], np.float32))
    npz = tmp_path / "f.npz"
    np.savez(npz, x=np.ones((2, 4, 2), np.float32))
    msg = _err(cli, a, a, "--feeds", npz)
    assert "missing input 'attention_mask'" in msg


def test_npz_wrong_dtype(hidden_model, tmp_path, cli):
    a = hidden_model(np.array([1.0, 2.0], np.float32))
    npz = tmp_path / "f.npz"
    np.savez(npz, x=np.ones((2, 4, 2), np.float64), attention_mask=np.ones((2, 4), np.int64))
    msg = _err(cli, a, a, "--feeds", npz)
    assert "'x'" in msg and "float64" in msg and "float32" in msg


def test_npz_unknown_array_and_bad_file(linear_model, tmp_path, cli):
    a = linear_model(np.ones((3, 2), np.float32))
    npz = tmp_path / "f.npz"
    np.savez(npz, x=np.ones((4, 3), np.float32), input=np.ones((4, 3), np.float32))
    assert "'input'" in _err(cli, a, a, "--feeds", npz)
    bad = tmp_path / "bad.npz"
    bad.write_text("not an archive")
    assert "cannot read feeds" in _err(cli, a, a, "--feeds", bad)
    assert "no such file" in _err(cli, a, a, "--feeds", tmp_path / "missing.npz")


def test_unreadable_text_file(token_model, tmp_path, cli):
    from n6onnx.testing import zoo

    a = token_model()
    tok = zoo.minilm_dir()
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"\xff\xfe\x00\x81 not utf-8")
    assert "not UTF-8" in _err(cli, a, a, "--text", binary, "--tokenizer", tok)
    assert "cannot read text" in _err(cli, a, a, "--text", tmp_path / "missing.txt", "--tokenizer", tok)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    assert "no text lines" in _err(cli, a, a, "--text", empty, "--tokenizer", tok)


def test_text_needs_a_tokenizer(token_model, tmp_path, cli):
    a = token_model()
    t = tmp_path / "t.txt"
    t.write_text("A sentence.\n")
    assert "--tokenizer" in _err(cli, a, a, "--text", t)
    assert "not a Hugging Face tokenizer folder" in _err(cli, a, a, "--text", t, "--tokenizer", tmp_path)


def test_text_needs_token_inputs(linear_model, tmp_path, cli):
    from n6onnx.testing import zoo

    a = linear_model(np.ones((3, 2), np.float32))
    t = tmp_path / "t.txt"
    t.write_text("A sentence.\n")
    assert "token ids" in _err(cli, a, a, "--text", t, "--tokenizer", zoo.minilm_dir())


def test_exactly_one_input_option(linear_model, tmp_path, cli):
    a = linear_model(np.ones((3, 2), np.float32))
    assert "exactly one input option" in _err(cli, a, a)
    t = tmp_path / "t.txt"
    t.write_text("x\n")
    assert "exactly one input option" in _err(cli, a, a, "--random", 2, "--text", t)
    r = cli("validate", a, a, "--random", 0)  # refused by the option's type (n6onnx.options.Number)
    assert r.exit_code == 2 and "--random" in r.stderr and "[1, 10000000]" in r.stderr and "Traceback" not in r.output


def test_dims(linear_model, cli):
    dyn = linear_model(np.ones((3, 2), np.float32), batch="batch")
    r = cli("validate", dyn, dyn, "--random", 3, "--json")  # a dynamic dimension without --dim: a default, said so
    assert r.exit_code == 0 and json.loads(r.stdout)["inputs"]["dims_default"] == {"batch": 1}
    assert "no dynamic dimension 'bacth'" in _err(cli, dyn, dyn, "--random", 3, "--dim", "bacth=2")
    assert "name=integer" in _err(cli, dyn, dyn, "--random", 3, "--dim", "batch")
    r = cli("validate", dyn, dyn, "--random", 3, "--dim", "batch=2", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["inputs"]["batches"] == 2


def test_labels_errors(linear_model, tmp_path, cli, hidden_model):
    a = linear_model(np.ones((3, 2), np.float32))
    lab = tmp_path / "l.txt"
    lab.write_text("0\n1\n")
    assert "2 labels for 4 samples" in _err(cli, a, a, "--random", 4, "--labels", lab)
    lab.write_text("0\n1\ncat\n1\n")
    assert "l.txt:3" in _err(cli, a, a, "--random", 4, "--labels", lab)
    h = hidden_model(np.array([1.0, 2.0], np.float32))
    lab.write_text("0\n1\n")
    assert "logits" in _err(cli, h, h, "--random", 2, "--labels", lab)


def test_bad_model_files(linear_model, tmp_path, cli):
    a = linear_model(np.ones((3, 2), np.float32))
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00garbage" * 10)
    assert "junk.onnx" in _err(cli, a, junk, "--random", 2)
    assert "no such file" in _err(cli, tmp_path / "nope.onnx", a, "--random", 2)
    with pytest.raises(BadModelError):
        n6onnx.validate(tmp_path / "nope.onnx", a, random=2)


def _gather_model(path):
    """ids int64 [2] -> Gather(table [5, 2], ids): ids >= 5 fail at run time."""
    import onnx
    from onnx import helper, numpy_helper

    g = helper.make_graph(
        [helper.make_node("Gather", ["table", "ids"], ["emb"])], "gather",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, [2])],
        [helper.make_tensor_value_info("emb", TensorProto.FLOAT, [2, 2])],
        [numpy_helper.from_array(np.arange(10, dtype=np.float32).reshape(5, 2), "table")],
    )
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    return path


def test_runtime_failure_is_a_clear_error(tmp_path, cli):
    a = _gather_model(tmp_path / "gather.onnx")
    # ids outside the table the graph gathers from are refused before onnxruntime runs, naming the bound
    with pytest.raises(N6Error, match=r"input 'ids' holds token id 7 \(batch 1\).*\[0, 5\)"):
        n6onnx.validate(a, a, feeds=[{"ids": np.array([0, 1])}, {"ids": np.array([7, 0])}])
    # random ids respect the embedding table's size (5 rows), found in the graph
    rep = n6onnx.validate(a, a, random=40)
    assert rep.passed and rep.inputs["id_high"] == {"ids": 5}
