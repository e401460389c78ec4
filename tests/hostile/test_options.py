"""Options: nan, inf, negative, zero, divide-by-zero and non-ASCII digits are refused before any
work starts, with one line naming the option, on the CLI and through the API alike (one layer:
n6onnx.options). A hang is a failure: every case runs under a short alarm."""

from __future__ import annotations

import signal

import pytest

import n6onnx
from n6onnx import options
from n6onnx.errors import BadArgumentError


@pytest.fixture
def alarm():
    def boom(*_):
        raise TimeoutError("the command did not return within 60 s (a hang)")

    old = signal.signal(signal.SIGALRM, boom)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


BAD_PASSES = [
    ("ffn=phi-bottleneck:1/0", "division by zero"),
    ("ffn=phi-bottleneck:0/0", "division by zero"),
    ("ffn=phi-bottleneck:nan", "RATIO"),
    ("ffn=phi-bottleneck:inf", "RATIO"),
    ("ffn=phi-bottleneck:-1", "RATIO"),
    ("ffn=phi-bottleneck:0", "(0, 16]"),
    ("ffn=phi-bottleneck:17", "(0, 16]"),
    ("ffn=phi-bottleneck:1e400", "(0, 16]"),
    ("attention=fftmix:0", ">= 1"),
    ("attention=fftmix:auto:0", ">= 1"),
    ("attention=fftmix:\u00b2", "LAYERS"),
    ("attention=fftmix:auto:\u00b2", "digits 0-9"),
    ("attention=fftmix:@-1", "LAYERS"),
    ("moe=phi:-1", "DROP"),
    ("moe=phi:\u00b2", "DROP"),
    ("moe=phi:nan", "DROP"),
    ("gelu=phi6:2", "gelu"),
    ("attention=egyptian:nan", "HEADS"),
]


@pytest.mark.parametrize("spec,needle", BAD_PASSES)
def test_bad_pass_arguments(zoo_export, tmp_path, hx, alarm, spec, needle):
    src = zoo_export("bert", "dynamo20")
    before = hx.fingerprint(src)
    r = hx.cli("rewrite", src, "-o", tmp_path / "o.onnx", "--pass", spec)
    hx.clean(r, needle)
    assert not (tmp_path / "o.onnx").exists() and hx.fingerprint(src) == before


BAD_OPTIONS = [
    (["bench", "{m}", "--seconds", "nan"], "--seconds"),
    (["bench", "{m}", "--seconds", "inf"], "--seconds"),
    (["bench", "{m}", "--seconds", "0"], "--seconds"),
    (["bench", "{m}", "--seconds", "1e9"], "--seconds"),
    (["bench", "{m}", "--window", "nan"], "--window"),
    (["bench", "{m}", "--window", "0"], "--window"),
    (["bench", "{m}", "--warmup", "inf"], "--warmup"),
    (["bench", "{m}", "--warmup", "-1"], "--warmup"),
    (["bench", "{m}", "--idle-seconds", "inf"], "--idle-seconds"),
    (["bench", "{m}", "--cpu-watts", "-1"], "--cpu-watts"),
    (["bench", "{m}", "--cpu-watts", "nan"], "--cpu-watts"),
    (["bench", "{m}", "--cpu-watts-uncertainty", "1"], "--cpu-watts-uncertainty"),
    (["bench", "{m}", "--threads", "0"], "--threads"),
    (["bench", "{m}", "--device-id", "-1"], "--device-id"),
    (["bench", "{m}", "--num-heads", "0"], "--num-heads"),
    (["bench", "{m}", "--hidden-size", "-5"], "--hidden-size"),
    (["bench", "{m}", "--dim", "batch=0"], "--dim"),
    (["validate", "{m}", "{m}", "--random", "0"], "--random"),
    (["validate", "{m}", "{m}", "--random", "2", "--min-cosine", "nan"], "--min-cosine"),
    (["validate", "{m}", "{m}", "--random", "2", "--max-abs-err", "inf"], "--max-abs-err"),
    (["validate", "{m}", "{m}", "--random", "2", "--min-top1", "-0.5"], "--min-top1"),
    (["validate", "{m}", "{m}", "--random", "2", "--seed", "-1"], "--seed"),
    (["validate", "{m}", "{m}", "--random", "2", "--threads", "1.5"], "--threads"),
    (["rewrite", "{m}", "-o", "{o}", "--pass", "gelu=phi6", "--dim", "b=nan"], "--dim"),
    (["rewrite", "{m}", "-o", "{o}", "--pass", "gelu=phi6", "--calib-samples", "0"], "--calib-samples"),
]


@pytest.mark.parametrize("args,needle", BAD_OPTIONS, ids=lambda a: " ".join(a) if isinstance(a, list) else a)
def test_bad_numeric_options(zoo_export, tmp_path, hx, alarm, args, needle):
    src = str(zoo_export("bert", "dynamo20"))
    r = hx.cli(*[a.format(m=src, o=tmp_path / "o.onnx") for a in args])
    hx.clean(r, needle)


@pytest.mark.parametrize("kw", [dict(seconds=float("nan")), dict(seconds=float("inf")), dict(window=0.0),
                                dict(warmup=float("inf")), dict(cpu_watts=-1.0), dict(threads=0),
                                dict(seconds=100.0, window=1e-6)])
def test_bench_api_refuses_the_same(zoo_export, alarm, kw):
    with pytest.raises(BadArgumentError):
        n6onnx.bench(zoo_export("bert", "dynamo20"), **kw)


def test_number_and_ratio_grammar():
    assert options.ratio("R", "4/3", 0, 16) == pytest.approx(4 / 3)
    assert options.ratio("R", "1.5e1/3", 0, 16) == 5.0
    assert options.number("--x", "7", 1, 10, integer=True) == 7
    for bad in ("nan", "inf", "-inf", "1e999", "x"):
        with pytest.raises(BadArgumentError, match="--x"):
            options.number("--x", bad, 0, 10)
    with pytest.raises(BadArgumentError, match="whole number"):
        options.number("--n", "2.5", 0, 10, integer=True)
