"""n6onnx.feeds: .npz, text and random feeds; row counts of padded last batches; clear errors."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from n6onnx import feeds as F
from n6onnx.errors import BadArgumentError
from n6onnx.runtime import InferenceSession

TOKENS = ("input_ids", "attention_mask", "token_type_ids")


def _token_session(tmp_path, batch=2, seq=8, names=TOKENS, dtype=TensorProto.INT64):
    """y = float(input_ids) summed with every other token input (so each input is used)."""
    nodes = [helper.make_node("Cast", [n], [n + "_f"], to=TensorProto.FLOAT) for n in names]
    acc = "input_ids_f"
    for k, n in enumerate(names[1:]):
        nodes.append(helper.make_node("Add", [acc, n + "_f"], [f"s{k}"]))
        acc = f"s{k}"
    nodes.append(helper.make_node("Identity", [acc], ["y"]))
    g = helper.make_graph(nodes, "tok", [helper.make_tensor_value_info(n, dtype, [batch, seq]) for n in names],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, seq])])
    p = tmp_path / "tok.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]), str(p))
    return InferenceSession(str(p))


def _mixed_session(tmp_path, batch=3):
    """Inputs x float32 [batch, 4], ids int32 [batch, 2], flag bool [batch]; a Gather on a 7-row table."""
    nodes = [helper.make_node("Gather", ["T", "ids"], ["g"]),
             helper.make_node("Cast", ["flag"], ["f"], to=TensorProto.FLOAT),
             helper.make_node("ReduceSum", ["g"], ["y"], keepdims=0)]
    g = helper.make_graph(
        nodes, "mixed",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 4]),
         helper.make_tensor_value_info("ids", TensorProto.INT32, [batch, 2]),
         helper.make_tensor_value_info("flag", TensorProto.BOOL, [batch])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None), helper.make_tensor_value_info("f", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.ones((7, 3), np.float32), "T")],
    )
    p = tmp_path / "mixed.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]), str(p))
    return InferenceSession(str(p))


def test_parse_dims():
    assert F.parse_dims(["batch=8", " seq = 128"]) == {"batch": 8, "seq": 128}
    assert F.parse_dims({"b": 2}) == {"b": 2} and F.parse_dims(None) == {}
    for bad in (["batch"], ["=3"], ["batch=x"], ["batch=0"], ["batch=-1"]):
        with pytest.raises(BadArgumentError):
            F.parse_dims(bad)


def test_random_samples_types_rows_and_padding(tmp_path):
    s = _mixed_session(tmp_path)
    b = F.random_samples(s, 7, seed=1, id_high={"ids": 7})
    assert len(b) == 3 and b.rows == [3, 3, 1] and b.samples == 7 and b.last_rows == 1
    for f in b:
        assert f["x"].dtype == np.float32 and f["ids"].dtype == np.int32 and f["flag"].dtype == np.bool_
        assert f["ids"].min() >= 1 and f["ids"].max() < 7 and f["flag"].all()
        s.run(None, f)
    last = b[-1]
    assert (last["x"][1] == last["x"][0]).all() and (last["x"][2] == last["x"][0]).all()  # repeats of the real row
    again = F.random_samples(s, 7, seed=1, id_high={"ids": 7})
    assert all((a["x"] == c["x"]).all() for a, c in zip(b, again))  # seeded
    with pytest.raises(BadArgumentError, match="positive"):
        F.random_samples(s, 0)


def test_random_feeds_masks_and_token_types(tmp_path):
    s = _token_session(tmp_path)
    (f,) = F.random_feeds(s, 1)
    assert (f["attention_mask"] == 1).all() and (f["token_type_ids"] == 0).all()
    assert f["input_ids"].min() >= 1 and f["input_ids"].max() < F.DEFAULT_ID_HIGH


def test_dynamic_dims(tmp_path):
    s = _token_session(tmp_path, batch="batch", seq="seq")
    with pytest.raises(BadArgumentError, match="--dim batch=N"):
        F.random_samples(s, 3)
    b = F.random_samples(s, 3, {"batch": 2, "seq": 5})
    assert b[0]["input_ids"].shape == (2, 5) and b.rows == [2, 1]
    F.check_dims(s, {"batch": 2})
    with pytest.raises(BadArgumentError, match="no dynamic dimension 'sequence'"):
        F.check_dims(s, {"sequence": 2})


def test_load_npz_single_and_multi_batch(tmp_path):
    s = _token_session(tmp_path)
    one = {n: np.ones((2, 8), np.int64) for n in TOKENS}
    p = tmp_path / "one.npz"
    np.savez(p, **one)
    b = F.load_npz(p, s)
    assert len(b) == 1 and b.rows == [2] and set(b[0]) == set(TOKENS)
    p2 = tmp_path / "multi.npz"
    np.savez(p2, **{f"{n}/{k}": np.full((2, 8), k, np.int64) for n in TOKENS for k in (0, 1, 10)})
    b = F.load_npz(p2, s)
    assert len(b) == 3 and [int(f["input_ids"][0, 0]) for f in b] == [0, 1, 10] and b.samples == 6


@pytest.mark.parametrize("arrays,msg", [
    ({"input_ids": np.ones((2, 8), np.int64), "attention_mask": np.ones((2, 8), np.int64)}, "missing input 'token_type_ids'"),
    ({n: np.ones((2, 8), np.int32 if n == "input_ids" else np.int64) for n in TOKENS}, "dtype int32"),
    ({n: np.ones((2, 9), np.int64) for n in TOKENS}, "shape [2, 9]"),
    ({**{n: np.ones((2, 8), np.int64) for n in TOKENS}, "inputids": np.ones((2, 8), np.int64)}, "'inputids'"),
])
def test_load_npz_errors(tmp_path, arrays, msg):
    s = _token_session(tmp_path)
    p = tmp_path / "f.npz"
    np.savez(p, **arrays)
    with pytest.raises(BadArgumentError) as e:
        F.load_npz(p, s)
    assert msg in str(e.value)


def test_load_npz_unreadable(tmp_path):
    for name, content in (("text.npz", b"hello"), ("trunc.npz", b"PK\x03\x04broken")):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(BadArgumentError, match="cannot read feeds"):
            F.load_npz(tmp_path / name)
    np.save(tmp_path / "arr.npy", np.ones(3))
    with pytest.raises(BadArgumentError, match="not an .npz"):
        F.load_npz(tmp_path / "arr.npy")
    with pytest.raises(BadArgumentError, match="no such file"):
        F.load_npz(tmp_path / "missing.npz")


def test_check_feeds_named_dimension_must_agree(tmp_path):
    s = _token_session(tmp_path, batch="batch", seq="seq")
    feeds = {n: np.ones((2, 8), np.int64) for n in TOKENS}
    F.check_feeds(s, feeds)
    feeds["token_type_ids"] = np.ones((2, 7), np.int64)
    with pytest.raises(BadArgumentError, match="dimension 'seq' is 8"):
        F.check_feeds(s, feeds)


def test_read_text(tmp_path):
    p = tmp_path / "t.txt"
    p.write_text("  first  \n\nsecond\n")
    assert F.read_text(p) == ["first", "second"]
    p.write_bytes(b"\xff\xfe bad")
    with pytest.raises(BadArgumentError, match="not UTF-8"):
        F.read_text(p)
    with pytest.raises(BadArgumentError, match="cannot read text"):
        F.read_text(tmp_path)  # a directory


def test_text_feeds_rows_and_repeats(tmp_path):
    from n6onnx.testing import zoo

    s = _token_session(tmp_path, batch=2, seq=8)
    texts = ["The first sentence.", "A second, longer sentence with more words than fit.", "Third."]
    b = F.text_feeds(texts, zoo.minilm_dir(), s)
    assert len(b) == 2 and b.rows == [2, 1] and b.last_rows == 1 and b.samples == 3
    ids = b[1]["input_ids"]
    assert (ids[1] == ids[0]).all() and ids[0, 0] == 101  # [CLS]; the repeat fills the static batch
    assert b[0]["input_ids"][1, -1] == 102  # truncated to 8 tokens, ends with [SEP]
    assert b[0]["attention_mask"][0].sum() < 8  # the short sentence is padded
    for f in b:
        assert all(f[n].dtype == np.int64 and f[n].shape == (2, 8) for n in TOKENS)
        s.run(None, f)


def test_head_keeps_the_first_whole_batches_holding_the_samples():
    b = F.FeedBatches([{"x": np.full((4, 2), k)} for k in range(3)], [4, 4, 2], source="s")
    b.available = 10
    assert b.head(None) is b and b.head(10) is b and b.head(50) is b
    for n, rows in ((1, [4]), (4, [4]), (5, [4, 4]), (9, [4, 4, 2])):
        h = b.head(n)
        assert h.rows == rows and [int(f["x"][0, 0]) for f in h] == list(range(len(rows)))
        assert h.source == "s" and h.available == 10


def test_text_feeds_fills_inputs_the_tokenizer_lacks_and_casts(tmp_path):
    from n6onnx.testing import zoo

    tok = F.load_tokenizer(zoo.minilm_dir())
    s = _token_session(tmp_path, batch="b", seq="l", dtype=TensorProto.INT32)
    b = F.text_feeds(["one two three"], tok, s, {"b": 1, "l": 6})
    assert b[0]["input_ids"].dtype == np.int32 and b[0]["input_ids"].shape == (1, 6) and b.rows == [1]


def test_text_feeds_errors(tmp_path):
    from n6onnx.testing import zoo

    s = _mixed_session(tmp_path)
    with pytest.raises(BadArgumentError, match="token ids"):
        F.text_feeds(["x"], zoo.minilm_dir(), s)
    with pytest.raises(BadArgumentError, match="not a Hugging Face tokenizer folder"):
        F.load_tokenizer(tmp_path)
    with pytest.raises(BadArgumentError, match="no such tokenizer folder"):
        F.load_tokenizer(tmp_path / "nope")


def _state_model(shape):
    """y = ReduceSum(past) + x: one state input declared with ``shape``."""
    g = helper.make_graph(
        [helper.make_node("ReduceSum", ["past"], ["s"], keepdims=0), helper.make_node("Add", ["x", "s"], ["y"])],
        "state", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch"]),
                  helper.make_tensor_value_info("past", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch"])])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])


def test_own_state_relays_only_empty_feeds_that_do_not_fit():
    specs = F.proto_input_specs(_state_model(["batch", "state", 64]))
    assert specs == [("x", np.float32, ["batch"]), ("past", np.float32, ["batch", "state", 64])]
    x = np.ones(3, np.float32)
    empty = np.zeros((3, 4, 0, 16), np.float32)  # the original's empty past [batch, kv_heads, 0, head_dim]
    got = F.own_state(specs, {"x": x, "past": empty})
    assert got["past"].shape == (3, 0, 64) and got["past"].dtype == np.float32 and got["x"] is x
    fits = np.zeros((3, 0, 64), np.float32)
    assert F.own_state(specs, {"x": x, "past": fits})["past"] is fits
    full = np.ones((3, 4, 2, 16), np.float32)  # a non-empty past is never re-laid out
    assert F.own_state(specs, {"x": x, "past": full})["past"] is full


def test_state_inputs_are_the_differently_laid_out_ones():
    a = F.proto_input_specs(_state_model(["batch", 4, "past", 16]))
    b = F.proto_input_specs(_state_model(["batch", "state", 64]))
    c = F.proto_input_specs(_state_model(["batch", 1, "packed", 16]))
    assert F.relaid(a, b) == ["past"] and F.relaid(a, c) == ["past"]
    assert F.relaid(a, a) == [] and F.relaid(a, F.proto_input_specs(_state_model(["b", 4, "p", 16]))) == []
