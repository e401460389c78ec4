"""validate on exported zoo models against references computed with plain onnxruntime and numpy:
bert (dynamo18) with npz and random feeds, the packaged MiniLM through its tokenizer."""

from __future__ import annotations

import json
import os
import pathlib

import numpy as np
import onnxruntime as ort
import pytest

import n6onnx
from n6onnx.testing import corpus, zoo

CACHE = pathlib.Path(os.environ.get("N6ONNX_TEST_CACHE", pathlib.Path(__file__).resolve().parents[2] / "build" / "test-models"))


@pytest.fixture(scope="module")
def bert_pair(tmp_path_factory):
    src = zoo.export("bert", "dynamo18", CACHE)
    dst = tmp_path_factory.mktemp("bert") / "bert-phi6.onnx"
    n6onnx.rewrite(src, dst, ["gelu=phi6"])
    return src, dst


@pytest.fixture(scope="module")
def minilm_pair(tmp_path_factory):
    src = zoo.export("minilm", "dynamo18", CACHE)
    dst = tmp_path_factory.mktemp("minilm") / "minilm-phi6.onnx"
    n6onnx.rewrite(src, dst, ["gelu=phi6"])
    return src, dst


def _ort_run(path, feeds):
    """Plain onnxruntime (the candidate's n6 nodes run as their model-local functions)."""
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return s.run(["last_hidden_state"], feeds)[0].astype(np.float64)


def test_bert_npz_matches_plain_onnxruntime(bert_pair, tmp_path, ref, cli):
    src, dst = bert_pair
    batches = [zoo.example_inputs("bert", 2, 16)]
    rng = np.random.default_rng(3)
    b2 = {k: v.copy() for k, v in batches[0].items()}
    b2["input_ids"] = rng.integers(1, 1000, (2, 16)).astype(np.int64)
    batches.append(b2)
    npz = tmp_path / "bert.npz"
    np.savez(npz, **{f"{k}/{i}": v for i, b in enumerate(batches) for k, v in b.items()})

    r = cli("validate", src, dst, "--feeds", npz, "--json")
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)

    o = np.concatenate([_ort_run(src, b) for b in batches])
    c = np.concatenate([_ort_run(dst, b) for b in batches])
    m = np.concatenate([b["attention_mask"] for b in batches])
    block = data["outputs"]["last_hidden_state"]
    assert block["kind"] == "embedding" and block["samples"] == 4
    assert block["max_abs_err"] == pytest.approx(np.abs(o - c).max(), rel=1e-3, abs=1e-5)
    assert data["max_abs_err"] == block["max_abs_err"]
    cos = ref.cos(o, c)
    assert block["cosine_mean"] == pytest.approx(cos.mean(), abs=1e-5)
    assert block["cosine_min"] == pytest.approx(cos.min(), abs=1e-5)
    pcos = ref.cos(ref.pool(o, m), ref.pool(c, m))
    assert block["embedding"]["cosine_mean"] == pytest.approx(pcos.mean(), abs=1e-5)
    assert data["cosine_mean"] == block["embedding"]["cosine_mean"]
    nn = np.mean(ref.nn(ref.pool(o, m)) == ref.nn(ref.pool(c, m)))
    assert block["embedding"]["nn_agreement"] == pytest.approx(nn)


def test_bert_random_feeds_and_gates(bert_pair, cli):
    src, dst = bert_pair
    r = cli("validate", src, dst, "--random", 6, "--json")
    assert r.exit_code == 0
    data = json.loads(r.stdout)
    assert data["inputs"]["samples"] == 6 and data["inputs"]["id_high"]["input_ids"] == 1000
    cos = data["cosine_mean"]
    assert cli("validate", src, dst, "--random", 6, "--min-cosine", cos - 1e-3).exit_code == 0
    r = cli("validate", src, dst, "--random", 6, "--min-cosine", min(cos + 1e-3, 1.0))
    assert r.exit_code == 1 and "cosine_mean" in r.stderr


def _tokenize(texts, seq=16):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(zoo.minilm_dir()))
    enc = tok(texts, padding="max_length", truncation=True, max_length=seq, return_tensors="np")
    return {k: enc[k].astype(np.int64) for k in ("input_ids", "attention_mask", "token_type_ids")}


def test_minilm_text_with_the_packaged_tokenizer(minilm_pair, tmp_path, ref, cli):
    src, dst = minilm_pair
    texts = corpus.sentences()[:5]  # batch 2: runs of 2, 2 and 1 real rows (+1 repeat, not counted)
    path = tmp_path / "s.txt"
    path.write_text("\n".join(texts) + "\n")

    r = cli("validate", src, dst, "--text", path, "--json")  # no --tokenizer: the zoo MiniLM's by default
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data["inputs"]["samples"] == 5 and data["inputs"]["batches"] == 3
    assert data["inputs"]["tokenizer_default"] is True
    assert any("packaged all-MiniLM-L6-v2 tokenizer" in n for n in data["notes"])

    feeds = _tokenize(texts)
    o = np.concatenate([_ort_run(src, {k: v[i : i + 2] for k, v in _pad(feeds).items()}) for i in (0, 2, 4)])[:5]
    c = np.concatenate([_ort_run(dst, {k: v[i : i + 2] for k, v in _pad(feeds).items()}) for i in (0, 2, 4)])[:5]
    m = feeds["attention_mask"]
    block = data["outputs"]["last_hidden_state"]
    assert block["samples"] == 5 and block["embedding"]["samples"] == 5
    pcos = ref.cos(ref.pool(o, m), ref.pool(c, m))
    assert block["embedding"]["cosine_mean"] == pytest.approx(pcos.mean(), abs=1e-5)
    assert block["embedding"]["cosine_min"] == pytest.approx(pcos.min(), abs=1e-5)
    assert block["cosine_mean"] == pytest.approx(ref.cos(o, c).mean(), abs=1e-5)
    assert data["cosine_mean"] < 0.5  # an uncalibrated Phi6 swap destroys the pretrained model

    r2 = cli("validate", src, dst, "--text", path, "--tokenizer", zoo.minilm_dir(), "--json")
    data2 = json.loads(r2.stdout)
    # the uncalibrated swap is also in the int8-hostile state (quantize.hostile): that note only
    assert data2["cosine_mean"] == data["cosine_mean"] and [n for n in data2["notes"] if "int8-hostile" not in n] == []


def _pad(feeds, batch=2):
    n = len(feeds["input_ids"])
    extra = -n % batch
    return {k: np.concatenate([v, np.repeat(v[-1:], extra, axis=0)]) for k, v in feeds.items()}


@pytest.mark.parametrize("exporter", ["dynamo20", "torchscript"])
def test_dynamic_axes_minilm_export_matches_torch_at_other_shapes(exporter):
    """The usual dynamic-axes export (symbolic batch and seq): runs at shapes other than the traced
    one and equals the torch model there."""
    import onnx

    path = zoo.export("minilm", exporter, CACHE, dynamic=True)
    dims = [[d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in onnx.load(path).graph.input]
    assert dims and all(d == ["batch", "seq"] for d in dims)
    feeds = zoo.example_inputs("minilm", 3, 21)
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    assert got.shape == (3, 21, 384)
    np.testing.assert_allclose(got, zoo._run_torch("minilm", feeds), atol=2e-5, rtol=1e-4)
