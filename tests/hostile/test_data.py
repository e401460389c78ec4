"""Data and vocabulary: token ids are bounded by the embedding table the graph gathers from
(random feeds inside it, user feeds outside it refused naming the input and the bound); text uses
the model's own tokenizer (the packaged MiniLM one only when the vocabulary provably matches);
dynamic dimensions come from the data; "calibrated" and the token counts tell the truth."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import n6onnx
from n6onnx import feeds, vocab
from n6onnx.testing import corpus, zoo
from n6onnx.errors import BadArgumentError
from n6onnx.runtime import InferenceSession


def _tiny_embedding(path, rows=50, width=4, dynamic=True):
    """input_ids [batch, seq] -> Gather(table[rows, width]) -> ReduceSum: a model with a small vocabulary."""
    b, s = ("batch", "seq") if dynamic else (2, 8)
    table = helper.make_tensor("table", TensorProto.FLOAT, [rows, width],
                               np.arange(rows * width, dtype=np.float32).tolist())
    g = helper.make_graph(
        [helper.make_node("Gather", ["table", "input_ids"], ["e"]),
         helper.make_node("ReduceSum", ["e", "axes"], ["y"], keepdims=0)],
        "tiny", [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [b, s])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [b, s])],
        [table, helper.make_tensor("axes", TensorProto.INT64, [1], [2])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 20)])
    onnx.save(m, str(path))
    return path


def _npz(path, ids, model="bert"):
    base = zoo.example_inputs(model)
    np.savez(path, **{**base, "input_ids": np.asarray(ids, np.int64).reshape(base["input_ids"].shape)})
    return path


@pytest.fixture(scope="module")
def texts(tmp_path_factory):
    d = tmp_path_factory.mktemp("text")
    s = corpus.sentences()
    (d / "calib.txt").write_text("\n".join(s[:40]))
    (d / "held.txt").write_text("\n".join(s[1000:1012]))
    (d / "one.txt").write_text(s[0])
    return d


def test_bounds_follow_the_gather(zoo_export):
    assert vocab.bounds(zoo_export("bert", "dynamo20"))["input_ids"] == 1000
    assert vocab.bounds(zoo_export("minilm", "dynamo20"))["input_ids"] == 30522


@pytest.mark.parametrize("ids", [50000, 1000, -1])
@pytest.mark.parametrize("cmd", ["validate", "inspect", "rewrite", "bench"])
def test_user_ids_outside_the_table_are_refused(zoo_export, tmp_path, hx, ids, cmd):
    src = zoo_export("bert", "dynamo20")
    data = _npz(tmp_path / "f.npz", np.full(32, ids))
    args = {"validate": ["validate", src, src, "--feeds", data],
            "inspect": ["inspect", src, "--calibrate", data],
            "rewrite": ["rewrite", src, "-o", tmp_path / "o.onnx", "--pass", "gelu=phi6", "--calibrate", data],
            "bench": ["bench", src, "--feeds", data, "--seconds", "0.3", "--window", "0.1"]}[cmd]
    hx.clean(hx.cli(*args), "input_ids", f"token id {ids}", "[0, 1000)")
    assert not (tmp_path / "o.onnx").exists()


def test_random_feeds_stay_inside_a_small_vocabulary(tmp_path):
    src = _tiny_embedding(tmp_path / "tiny.onnx", rows=50, dynamic=False)
    r = n6onnx.validate(src, src, random=8)
    assert r.passed and r.inputs["id_high"] == {"input_ids": 50}
    b = n6onnx.bench(src, seconds=0.3, window=0.1, warmup=0.0, idle_seconds=0.0)
    assert b.to_json()["settings"]["feeds"]["shapes"]["input_ids"] == [2, 8]


def test_bench_and_validate_random_on_a_dynamic_export_need_no_dim(tmp_path, hx):
    src = _tiny_embedding(tmp_path / "tiny.onnx", rows=50)
    b = n6onnx.bench(src, seconds=0.3, window=0.1, warmup=0.0, idle_seconds=0.0).to_json()
    assert b["settings"]["feeds"]["dims_default"] == {"batch": 1, "seq": 128}
    assert any("by default" in w for w in b["warnings"])
    r = hx.cli("validate", src, src, "--random", "3", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["inputs"]["dims_default"] == {"batch": 1, "seq": 128}


def test_text_on_a_foreign_vocabulary_asks_for_the_tokenizer(zoo_export, tmp_path, hx, texts):
    src = zoo_export("bert", "dynamo20")  # vocabulary 1000, not MiniLM's
    for args in (["rewrite", src, "-o", tmp_path / "o.onnx", "--pass", "gelu=phi6", "--calibrate", texts / "calib.txt"],
                 ["inspect", src, "--calibrate", texts / "calib.txt"],
                 ["validate", src, src, "--text", texts / "held.txt"]):
        hx.clean(hx.cli(*args), "--tokenizer", "1000 entries")


def test_a_wrong_tokenizer_is_caught_by_the_bound(zoo_export, tmp_path, hx, texts):
    src = zoo_export("bert", "dynamo20")
    r = hx.cli("rewrite", src, "-o", tmp_path / "o.onnx", "--pass", "gelu=phi6", "--calibrate", texts / "calib.txt",
               "--tokenizer", zoo.minilm_dir())
    hx.clean(r, "input_ids", "[0, 1000)")


def test_a_tokenizer_with_npz_data_is_refused(zoo_export, tmp_path, hx):
    """An .npz holds token ids already: a --tokenizer beside it would be silently unused, so it is refused."""
    src = zoo_export("bert", "dynamo20")
    data = _npz(tmp_path / "f.npz", np.arange(32) % 1000)
    tok = ("--tokenizer", zoo.minilm_dir())
    for args in (["rewrite", src, "-o", tmp_path / "o.onnx", "--pass", "gelu=phi6", "--calibrate", data, *tok],
                 ["inspect", src, "--calibrate", data, *tok],
                 ["tune", src, "--calibrate", data, "--min-cosine", "0.9", "-o", tmp_path / "o.onnx", "--no-heal",
                  *tok]):
        hx.clean(hx.cli(*args), "--tokenizer", "text DATA only", "f.npz")
    assert not (tmp_path / "o.onnx").exists()


def test_same_size_vocabulary_without_proof_asks_for_the_tokenizer(zoo_export, tmp_path):
    m = onnx.load(str(zoo_export("minilm", "dynamo20")))
    m.doc_string = "someone else's model"
    t = next(t for t in m.graph.initializer if list(t.dims) == [30522, 384])
    a = onnx.numpy_helper.to_array(t).copy()
    a[0] += 1  # not the packaged embeddings
    t.CopyFrom(onnx.numpy_helper.from_array(a, t.name))
    with pytest.raises(BadArgumentError, match="not proven"):
        vocab.default_tokenizer(m)
    m.doc_string = ""
    a[0] -= 1
    t.CopyFrom(onnx.numpy_helper.from_array(a, t.name))
    assert vocab.default_tokenizer(m) == zoo.minilm_dir()  # the packaged embeddings: proven


def test_dynamic_export_text_calibration_validate_and_inspect_without_dim(dyn_minilm, tmp_path, hx, texts):
    out = tmp_path / "cal.onnx"
    r = hx.cli("rewrite", dyn_minilm, "-o", out, "--pass", "gelu=phi6", "--calibrate", texts / "calib.txt", "--json")
    assert r.exit_code == 0, r.output
    rep = json.loads(r.output)
    assert rep["calibrated"] is True and rep["calibration"]["samples"] == 40
    r = hx.cli("validate", dyn_minilm, out, "--text", texts / "held.txt", "--json")
    assert r.exit_code == 0, r.output
    v = json.loads(r.output)
    assert v["inputs"]["samples"] == 12 and v["cosine_mean"] > 0.9
    r = hx.cli("inspect", dyn_minilm, "--calibrate", texts / "held.txt", "--json")
    assert r.exit_code == 0, r.output
    assert all(-1 <= s["redundancy"] <= 1 for s in json.loads(r.output)["attention"]["sites"])


def test_tokenizer_json_file(dyn_minilm, tmp_path, texts):
    _, rep = n6onnx.rewrite(dyn_minilm, tmp_path / "o.onnx", ["gelu=phi6"], calibrate=texts / "one.txt",
                            tokenizer=zoo.minilm_dir() / "tokenizer.json")
    assert rep.to_json()["calibrated"] is True


def test_text_feeds_take_dynamic_sizes_from_the_data(dyn_minilm):
    sess = InferenceSession(str(dyn_minilm))
    b = feeds.text_feeds(["a b c", "a much longer sentence than the first one"] * 9, zoo.minilm_dir(), sess)
    assert [x["input_ids"].shape[0] for x in b] == [16, 2] and b.rows == [16, 2]
    assert len({x["input_ids"].shape[1] for x in b}) == 1 and b[0]["attention_mask"][1].sum() == b[0]["input_ids"].shape[1]


def test_one_sentence_counts_real_tokens_and_warns(zoo_export, tmp_path, texts):
    src = zoo_export("minilm", "dynamo20")  # static batch 2 x seq 16: the sentence is padded and repeated
    sess = InferenceSession(str(src))
    real = int(feeds.text_feeds([corpus.sentences()[0]], zoo.minilm_dir(), sess)[0]["attention_mask"][0].sum())
    _, rep = n6onnx.rewrite(src, tmp_path / "o.onnx", ["gelu=phi6"], calibrate=texts / "one.txt")
    c = rep.calibration
    assert c.samples == 1 and c.rows == real < 16
    assert all(layer.rows == real for layer in c.layers)
    assert any("too small" in w for w in rep.warnings)


def _bare_gelu(path):
    g = helper.make_graph([helper.make_node("Gelu", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 8])])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 20)]), str(path))
    return path


def test_calibrated_is_false_when_nothing_was_fitted(tmp_path):
    src = _bare_gelu(tmp_path / "g.onnx")
    np.savez(tmp_path / "x.npz", x=np.random.default_rng(0).standard_normal((2, 8)).astype(np.float32))
    _, rep = n6onnx.rewrite(src, tmp_path / "o.onnx", ["gelu=phi6"], calibrate=tmp_path / "x.npz")
    j = rep.to_json()
    assert rep.rewritten["gelu"] == 1 and j["calibrated"] is False and j["calibration"] is None
    assert any("uncalibrated activation swap" in w for w in rep.warnings)
    assert any("no site was calibrated" in w for w in rep.warnings)
