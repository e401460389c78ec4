"""`make demo`'s commands and the README's examples, run as a user would, on the usual dynamic-axes
export (symbolic batch and seq) without --dim; the input and its files stay identical."""

from __future__ import annotations

import json

from n6onnx.testing import corpus


def test_readme_and_demo_commands_on_a_dynamic_export(dyn_minilm, tmp_path, hx):
    s = corpus.sentences()
    (tmp_path / "sentences.txt").write_text("\n".join(s[:12]))
    (tmp_path / "heldout.txt").write_text("\n".join(s[1000:1004]))
    before = hx.fingerprint(dyn_minilm)
    t = tmp_path

    def ok(*args):
        r = hx.cli(*args)
        assert r.exit_code == 0, (args, r.output[-3000:])
        assert "Traceback" not in r.output
        return r.output

    ok("inspect", dyn_minilm)
    ok("inspect", dyn_minilm, "--json")
    ok("rewrite", dyn_minilm, "-o", t / "model-phi6.onnx", "--pass", "gelu=phi6")
    rep = json.loads(ok("rewrite", dyn_minilm, "-o", t / "cal.onnx", "--pass", "gelu=phi6",
                        "--calibrate", t / "sentences.txt", "--json"))
    assert rep["calibrated"] and rep["rewritten"]["gelu"] == 6
    ok("rewrite", dyn_minilm, "-o", t / "small.onnx", "--pass", "ffn=phi-bottleneck:4/3", "--calibrate", t / "sentences.txt")
    ok("inspect", dyn_minilm, "--calibrate", t / "sentences.txt")
    ok("rewrite", dyn_minilm, "-o", t / "mix.onnx", "--pass", "attention=fftmix:2", "--calibrate", t / "sentences.txt")
    ok("rewrite", dyn_minilm, "-o", t / "egy.onnx", "--pass", "attention=egyptian", "--calibrate", t / "sentences.txt")
    v = json.loads(ok("validate", dyn_minilm, t / "cal.onnx", "--text", t / "heldout.txt", "--json"))
    assert v["inputs"]["samples"] == 4
    ok("validate", dyn_minilm, t / "mix.onnx", "--random", "2")
    (t / "runs").mkdir()
    (t / "runs" / "validate.json").write_text(json.dumps(v))
    b = ok("bench", t / "cal.onnx", "--baseline", dyn_minilm, "--threads", "2", "--seconds", "0.6", "--window", "0.2",
           "--idle-seconds", "0", "--warmup", "0.1", "--json")
    (t / "runs" / "bench.json").write_text(b)
    ok("report", t / "runs", "-o", t / "report")
    assert (t / "report" / "report.md").is_file()
    assert hx.fingerprint(dyn_minilm) == before
