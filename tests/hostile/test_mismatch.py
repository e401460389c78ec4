"""Inputs that load but do not fit the command: a float16 model given to int8 quantization or to a
heal (which train and quantize in float32), a teacher that is another model under the same names,
named blocks that do not exist, and tune options (--dim, --storage, --seconds-per-trial) refused
before any work. Each is one clear line and a non-zero exit; nothing is written, the inputs stay
untouched."""

from __future__ import annotations

import pytest

from n6onnx import io


@pytest.fixture(scope="module")
def fp16(zoo_export, tmp_path_factory):
    """The test BERT in float16 end to end (weights, inputs and outputs), as onnxruntime's converter writes it."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    dst = tmp_path_factory.mktemp("fp16") / "bert-fp16.onnx"
    io.save(convert_float_to_float16(io.load_proto(zoo_export("bert", "dynamo20")), keep_io_types=False), dst)
    return dst


def _refused(hx, tmp_path, inputs, args, *needles):
    before = hx.fingerprint(*inputs)
    hx.clean(hx.cli(*args), *needles)
    assert hx.fingerprint(*inputs) == before
    assert not any(p.name.startswith("o.onnx") for p in tmp_path.iterdir())


@pytest.mark.parametrize("mode", ["int8", "int8:static"])
def test_int8_of_a_float16_model_is_refused(fp16, token_npz, tmp_path, hx, mode):
    """onnxruntime's int8 tools would write a graph that does not load (DynamicQuantizeLinear and
    QuantizeLinear take float32); int4 (MatMulNBits) takes float16."""
    data = token_npz("bert")
    _refused(hx, tmp_path, [fp16], ["rewrite", fp16, "-o", tmp_path / "o.onnx", "--quantize", mode,
                                    "--calibrate", data], "float16", f"--quantize {mode}")


def test_healing_a_float16_model_is_refused_before_any_work(fp16, zoo_export, token_npz, tmp_path, hx):
    pytest.importorskip("torch")
    data = token_npz("bert")
    _refused(hx, tmp_path, [fp16], ["rewrite", fp16, "-o", tmp_path / "o.onnx", "--pass", "gelu=phi6",
                                    "--calibrate", data, "--heal", "--heal-minutes", "0.1"], "float16", "float32")
    bert = zoo_export("bert", "dynamo20")
    _refused(hx, tmp_path, [fp16, bert], ["heal", fp16, "--teacher", bert, "-o", tmp_path / "o.onnx",
                                          "--calibrate", data, "--heal-minutes", "0.1"], "float16", "float32")


def test_a_teacher_of_another_width_is_refused(zoo_export, token_npz, tmp_path, hx):
    """BERT (width 64) and MiniLM (384) share their input and output names: the output shapes tell them
    apart before the heal starts."""
    pytest.importorskip("torch")
    bert, minilm = zoo_export("bert", "dynamo20"), zoo_export("minilm", "dynamo20")
    _refused(hx, tmp_path, [bert, minilm], ["heal", bert, "--teacher", minilm, "-o", tmp_path / "o.onnx",
                                            "--calibrate", token_npz("bert"), "--heal-minutes", "0.1"],
             "--teacher", "not the model it was rewritten from")


def test_a_teacher_of_the_same_shape_with_other_weights_is_refused(zoo_export, token_npz, tmp_path, hx):
    """Another model of the same architecture (every large weight perturbed): its embedding tables, which no
    rewrite touches, match none of the student's, so it is not the original; the true original passes."""
    pytest.importorskip("torch")
    import numpy as np
    import onnx

    import n6onnx

    bert = zoo_export("bert", "dynamo20")
    student = tmp_path / "student.onnx"
    n6onnx.rewrite(bert, student, ["gelu=phi6"])
    other = io.load_proto(bert)
    rng = np.random.default_rng(0)
    for t in other.graph.initializer:
        a = onnx.numpy_helper.to_array(t)
        if a.size >= 1024 and a.dtype == np.float32:
            t.CopyFrom(onnx.numpy_helper.from_array(a + rng.normal(0, 1e-3, a.shape).astype(np.float32), t.name))
    io.save(other, tmp_path / "other.onnx")
    _refused(hx, tmp_path, [student, tmp_path / "other.onnx"],
             ["heal", student, "--teacher", tmp_path / "other.onnx", "-o", tmp_path / "o.onnx",
              "--calibrate", token_npz("bert"), "--heal-minutes", "0.1"], "embedding table(s) differ",
             "not the model it was rewritten from")
    from n6onnx.heal import run as heal_run

    student_ir, original = io.load(student), io.load(bert)
    assert heal_run._embedding_digests(student_ir)  # the test BERT gathers from its tables: the check applies
    heal_run._check_same_embeddings(student_ir, original)  # the true teacher: no error


@pytest.mark.parametrize("spec", ["attention=drop:@99", "block=drop:@7,9", "attention=fftmix:@99"])
def test_blocks_named_that_do_not_exist_are_refused(zoo_export, tmp_path, hx, spec):
    bert = zoo_export("bert", "dynamo20")  # two layers: blocks 0 and 1
    _refused(hx, tmp_path, [bert], ["rewrite", bert, "-o", tmp_path / "o.onnx", "--pass", spec],
             spec.split("@")[0], "2 ", "[0, 1]")


def test_a_named_block_beside_a_missing_one_is_rewritten_with_a_note(zoo_export, tmp_path):
    import n6onnx

    _, rep = n6onnx.rewrite(zoo_export("bert", "dynamo20"), tmp_path / "o.onnx", ["attention=drop:@1,9"])
    kind = rep.reports["attention"]
    assert kind.rewritten == 1 and any("block 9 does not exist" in n for n in kind.notes)


@pytest.mark.parametrize("args,needle", [
    (["--dim", "foo"], "--dim"),
    (["--storage", "bogus://x"], "--storage bogus://x"),
    (["--storage", "{tmp}/missing/journal.log"], "does not exist"),
    (["--seconds-per-trial", "-1"], "--seconds-per-trial"),
    (["--seconds-per-trial", "nan"], "--seconds-per-trial"),
])
def test_tune_refuses_bad_options_before_any_work(zoo_export, token_npz, tmp_path, hx, args, needle):
    pytest.importorskip("optuna")
    bert = zoo_export("bert", "dynamo20")
    args = [a.format(tmp=tmp_path) for a in args]
    _refused(hx, tmp_path, [bert], ["tune", bert, "-o", tmp_path / "o.onnx", "--calibrate", token_npz("bert"),
                                    "--min-cosine", "0.9", "--minutes", "0.2", "--no-heal", *args], needle)


def test_bench_draws_token_ids_both_vocabularies_take(zoo_export, hx):
    """A baseline with a larger vocabulary (MiniLM: 30522 rows) than the candidate (the test BERT: 1000):
    the random ids stay inside both tables instead of failing in the candidate's Gather."""
    bert, minilm = zoo_export("bert", "dynamo20"), zoo_export("minilm", "dynamo20")
    r = hx.cli("bench", bert, "--baseline", minilm, "--seconds", "0.3", "--window", "0.1", "--warmup", "0.05",
               "--idle-seconds", "0", "--json")
    assert r.exit_code == 0 and r.exception is None, r.output


def test_tune_refuses_int8_of_a_float16_model_before_any_work(fp16, token_npz, tmp_path, hx):
    pytest.importorskip("optuna")
    _refused(hx, tmp_path, [fp16], ["tune", fp16, "-o", tmp_path / "o.onnx", "--calibrate", token_npz("bert"),
                                    "--min-cosine", "0.9", "--minutes", "0.2", "--no-heal"], "float16", "--stage int8")


def test_a_file_that_is_no_npz_is_named_so_without_pickle_advice(zoo_export, tmp_path, hx):
    bad = tmp_path / "data.npz"
    bad.write_bytes(b"garbage, not a zip archive")
    bert = zoo_export("bert", "dynamo20")
    text = hx.clean(hx.cli("rewrite", bert, "-o", tmp_path / "o.onnx", "--pass", "gelu=phi6", "--calibrate", bad),
                    "neither an .npz archive nor a numpy array")
    assert "pickle" not in text


def test_validate_names_an_old_opset_that_onnxruntime_cannot_load(zoo_export, tmp_path, hx):
    """validate compares any model onnxruntime loads; one it cannot load for its old opset is named so."""
    src = zoo_export("bert", "dynamo20")
    old = io.load_proto(src)
    old.opset_import[0].version = 5
    io.save(old, tmp_path / "old.onnx")
    _refused(hx, tmp_path, [src, tmp_path / "old.onnx"], ["validate", src, tmp_path / "old.onnx", "--random", "2"],
             "(candidate)", "opset 5 is older than n6onnx supports", "version_converter")
