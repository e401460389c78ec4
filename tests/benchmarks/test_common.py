"""benchmarks/_common.py, the helpers every benchmark script shares, and the scripts' argument checks: a bad
pass or HealConfig field ends a run before any work with the parser's message and exit 2, not a traceback
minutes in; benchmarks/heal.py's --merge keeps every part's rows, tagged with their run."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
BENCH = ROOT / "benchmarks"


@pytest.fixture(scope="module")
def common(load_script):
    return load_script("_common.py")


def script(args: list[str], cwd: pathlib.Path = ROOT, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_heal_fields(common):
    kw = common.heal_fields("minutes=6,lr=1e-3,refit=none,train=all,steps=none,fake_quant=false,,")
    # "none" is a word where the field has words (refit), None where the field may be None (steps)
    assert kw == {"minutes": 6, "lr": 1e-3, "refit": "none", "train": "all", "steps": None, "fake_quant": False}
    assert isinstance(kw["minutes"], int) and isinstance(kw["lr"], float)
    assert common.heal_fields("") == {}
    with pytest.raises(SystemExit, match="unknown HealConfig field 'minutse'"):
        common.heal_fields("minutse=3")
    with pytest.raises(SystemExit, match="FIELD=VALUE"):
        common.heal_fields("minutes")
    # a value HealConfig refuses ends the run here, before any work, naming the field
    for bad, says in [("train=bogus", "train must be one of"), ("minutes=0", "minutes must be in"),
                      ("ema=1", "ema must be in"), ("device=tpu", "device must be cpu"), ("fake_quant=1", "True or False")]:
        with pytest.raises(SystemExit, match=says):
            common.heal_fields(bad)


def test_check_passes(common, capsys):
    import argparse

    ap = argparse.ArgumentParser(prog="x")
    common.check_passes(ap, ["gelu=phi6+ffn=phi-bottleneck:4/3+int8", "int8", "block=drop:@1,2"], also=("int8",))
    common.check_passes(ap, ["gelu=phi6,attention=fftmix:2"], sep=",")
    for bad, sep, word in [("gelu=phi6+ffn=phi-botleneck:3", "+", "phi-botleneck"), ("attention=fftmix:x", "+", "LAYERS"),
                           ("gelu=phi6,int8", ",", "int8"), ("moe", "+", "moe")]:
        with pytest.raises(SystemExit) as e:
            common.check_passes(ap, [bad], sep=sep)
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert repr(bad) in err and word in err


@pytest.mark.parametrize("args, says", [
    (["layer_choice.py", "--kinds", "block=dorp"], "'block=dorp:1'"),
    (["layer_choice.py", "--kinds", "block=drop", "--pairs", "attention=fftmix"], "--pairs attention=fftmix: not among"),
    (["heal.py", "--only", "ffn=phi-bottleneck:3+int9"], "unknown pass 'int9'"),
    (["heal.py", "--only", "int8", "--set", "lr"], "FIELD=VALUE"),
    (["e2e.py", "--passes", "gelu=phi6,foo=1"], "unknown pass 'foo=1'"),
    (["decoder.py", "--rewrite", "attention=fftmix:x"], "'attention=fftmix:x'"),
    (["combined.py", "--passes", "gelu"], "pass 'gelu' needs one of"),
    (["heal_lm.py", "--pass", "gelu=zz"], "'gelu=zz'"),
    (["heal_lm.py", "--heal", "minutes=1,lcoal=0"], "unknown HealConfig field 'lcoal'"),
    (["heal.py", "--only", "int8", "--set", "train=bogus"], "train must be one of"),
    (["heal_lm.py", "--heal", "minutes=1,local=2"], "local must be in [0, 1]"),
])
def test_scripts_refuse_bad_passes_before_work(args, says):
    r = script([str(BENCH / args[0]), *args[1:]])
    assert r.returncode != 0 and says in r.stderr, r.stderr[-2000:]
    assert "Traceback" not in r.stderr


def test_heal_merge_keeps_every_run(tmp_path):
    bench = tmp_path / "benchmarks"  # a copy: the merged result goes to its results/, not the repository's
    bench.mkdir()
    for f in ("heal.py", "_common.py"):
        shutil.copy(BENCH / f, bench / f)
    parts = []
    for tag, rows in [("cpu", [{"rewrite": "int8", "fidelity": {"cosine": 0.99}}]),
                      ("gpu", [{"rewrite": "gelu=phi6", "healed": {"cosine": 0.995}}, {"rewrite": "x", "run": "own"}])]:
        parts.append(tmp_path / f"{tag}.json")
        parts[-1].write_text(json.dumps({"model": "m", "note": f"{tag}; where it ran", "rows": rows}))
    r = script([str(bench / "heal.py"), "--name", "merged", "--merge", *map(str, parts)])
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads((bench / "results" / "merged.json").read_text())
    assert [(x["rewrite"], x["run"]) for x in out["rows"]] == [("int8", "cpu"), ("gelu=phi6", "gpu"), ("x", "own")]
    assert out["note"] == "cpu; where it ran | gpu; where it ran" and out["model"] == "m"
    assert {"generated", "hardware"} <= set(out)


def test_cpu_info_reads_x86_and_arm_cpuinfo(common, tmp_path):
    """hardware()'s CPU name and int8 instructions: x86 lists ``flags``, ARM ``Features``; a missing file is empty."""
    x86 = tmp_path / "x86"
    x86.write_text("processor\t: 0\nmodel name\t: Fake Xeon\nflags\t\t: fpu avx2 avx512f avx512_vnni amx_int8\n\n"
                   "processor\t: 1\nmodel name\t: Other\nflags\t\t: fpu\n")
    assert common.cpu_info(str(x86)) == ("Fake Xeon", {"fpu", "avx2", "avx512f", "avx512_vnni", "amx_int8"})
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd asimddp i8mm\nCPU implementer\t: 0x41\n")
    assert common.cpu_info(str(arm)) == ("", {"fp", "asimd", "asimddp", "i8mm"})
    assert common.cpu_info(str(tmp_path / "none")) == ("", set())
    hw = common.hardware()
    assert set(hw["int8_instructions"]) <= set(common.INT8_INSTRUCTIONS)
