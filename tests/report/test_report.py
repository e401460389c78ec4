"""``n6onnx report``: tables, report.json, pareto.png from fake validate/bench JSON; mixed energy
methods kept apart; bad inputs give a clear error, exit 2 and write nothing."""

from __future__ import annotations

import copy
import json
import pathlib

import pytest
from click.testing import CliRunner

from n6onnx.bench import carbon
from n6onnx.cli import main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def validate_json(candidate, original="models/orig.onnx", cosine=0.912345, nn=0.875, label=None, **extra):
    d = {
        "passed": True, "failed": [], "cosine_mean": cosine, "cosine_source": "embedding: mean-pooled cosine",
        "max_abs_err": 0.4321, "gates": [], "original": original, "candidate": candidate,
        "inputs": {"kind": "text", "source": "corpus.txt", "samples": 64, "batches": 8},
        "outputs": {"last_hidden_state": {
            "kind": "embedding", "cosine_mean": cosine,
            "embedding": {"cosine_mean": cosine, "cosine_min": cosine - 0.1, "nn_agreement": nn}, "logits": None}},
        "uses_library": {"original": True, "candidate": True}, "notes": [], "seconds": 1.0,
    }
    if label is not None:
        d["label"] = label
    d.update(extra)
    return d


def _energy(j, method="estimated", meter="cpu-estimate"):
    e = {"meter": meter, "method": method, "joules_per_inference": j,
         "spread": {"median": j, "q1": j * 0.99, "q3": j * 1.01, "min": j * 0.98, "max": j * 1.02, "n": 6},
         "other": []}
    if method == "estimated":
        e["band"] = {"low": j * 0.5, "high": j * 1.5}
    return e


def bench_json(model, original="models/orig.onnx", p50=2.5, base_p50=2.0, joules=0.0123, base_joules=0.0111,
               method="estimated", meter="cpu-estimate", provider="cpu", threads=2, label=None,
               lat_ratio=(0.8, 0.79, 0.81), e_ratio=(0.9, 0.88, 0.93)):
    d = {
        "tool": "n6onnx bench", "n6onnx": "0.1.0", "generated": "2026-01-01T00:00:00+00:00",
        "model": model, "ran": model,
        "latency_ms": {"p50": p50, "p90": p50 * 1.1, "p99": p50 * 1.3, "mean": p50, "min": p50 * 0.9,
                       "max": p50 * 2, "runs": 1000},
        "throughput": 8 / p50 * 1000, "throughput_unit": "inferences/s",
        "energy": _energy(joules, method, meter),
        "baseline": {"model": original, "ran": "/tmp/fused.onnx",
                     "latency_ms": {"p50": base_p50, "p90": base_p50 * 1.1, "p99": base_p50 * 1.3},
                     "throughput": 8 / base_p50 * 1000, "energy": _energy(base_joules, method, meter)},
        "ratio": {"definition": "baseline / candidate",
                  "latency_p50": {"median": lat_ratio[0], "q1": lat_ratio[1], "q3": lat_ratio[2], "n": 6},
                  "throughput": {"median": lat_ratio[0], "q1": lat_ratio[1], "q3": lat_ratio[2], "n": 6},
                  "energy": {"meter": meter, "method": method,
                             "total": {"median": e_ratio[0], "q1": e_ratio[1], "q3": e_ratio[2], "n": 6}}},
        "settings": {"provider": provider, "threads": threads, "device_id": 0 if provider == "cuda" else None},
        "hardware": {"cpu": "Test CPU", **({"gpu": "Test GPU"} if provider == "cuda" else {})},
        "warnings": [], "seconds": 10.0,
    }
    if label is not None:
        d["label"] = label
    return d


def write(path: pathlib.Path, obj) -> pathlib.Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return path


def invoke(*args):
    return CliRunner().invoke(main, ["report", *[str(a) for a in args]], catch_exceptions=False)


@pytest.fixture
def run_dir(tmp_path) -> pathlib.Path:
    d = tmp_path / "run"
    write(d / "val_a.json", validate_json("models/a.onnx", cosine=0.912345, label="phi6 plain"))
    write(d / "val_b.json", validate_json("models/b.onnx", cosine=0.987654, nn=0.96875))
    write(d / "bench_a.json", bench_json("models/a.onnx", p50=2.5, joules=0.0123))
    write(d / "bench_b.json", bench_json("./models/b.onnx", p50=3.25, base_p50=2.1, joules=0.0456, base_joules=0.0112,
                                         label="calibrated", lat_ratio=(0.646, 0.64, 0.65)))
    return d


def test_report_tables_json_and_png(run_dir, tmp_path):
    out = tmp_path / "out"
    r = invoke(run_dir, "-o", out)
    assert r.exit_code == 0, r.output
    md = (out / "report.md").read_text()
    # fidelity table: cosine, NN agreement, file; labels
    assert "| phi6 plain | 0.912345 |" in md
    assert "| calibrated | 0.987654 |" in md
    assert "96.88%" in md and "87.50%" in md
    assert "| orig.onnx (original) | 1.000000 |" in md
    # bench table: latency, throughput, energy (with band), ratios, method
    wh = 0.0123 * 1000 / 3600  # Wh per 1k inferences; CO2e at CodeCarbon's world average and PUE 1.56
    co2 = wh / 1000 * 1.56 * carbon.settings().grid.g_per_kwh
    assert f"| phi6 plain | 2.5 | 2.75 | 3200.0 | 0.0123 (band 0.00615 to 0.0185) | estimated, cpu-estimate | " \
           f"{wh:.4g} | {co2:.4g} | 0.800x [0.790, 0.810] | 0.900x [0.880, 0.930] |" in md
    assert "Green Algorithms" in md and "PUE 1.56" in md
    assert "| calibrated | 3.25 |" in md and "0.646x [0.640, 0.650]" in md
    assert "## Speed and energy: cpu, Test CPU, 2 threads (n6onnx bench)" in md
    assert "estimate, not a measurement" in md
    # the original measured twice: one row per bench file
    assert md.count("| orig.onnx (original) | 2 |") == 1 and md.count("| orig.onnx (original) | 2.1 |") == 1

    data = json.loads((out / "report.json").read_text())
    assert data["tool"] == "n6onnx report"
    assert {i["kind"] for i in data["inputs"]} == {"validate", "bench"} and len(data["inputs"]) == 4
    by_model = {v["model"]: v for v in data["variants"]}
    assert set(by_model) == {"models/orig.onnx", "models/a.onnx", "models/b.onnx"}  # ./models/b.onnx matched
    orig = by_model["models/orig.onnx"]
    assert orig["role"] == "original" and orig["fidelity"]["cosine_mean"] == 1.0 and len(orig["bench"]) == 2
    a = by_model["models/a.onnx"]
    assert a["role"] == "candidate" and a["label"] == "phi6 plain" and a["originals"] == ["models/orig.onnx"]
    assert a["fidelity"]["cosine_mean"] == 0.912345 and a["fidelity"]["nn_agreement"]["value"] == 0.875
    assert a["bench"][0]["latency_ms"]["p50"] == 2.5 and a["bench"][0]["energy"]["axis"] == "estimated"
    assert a["bench"][0]["ratio"]["latency_p50"]["median"] == 0.8
    assert [p["metric"] for p in data["panels"]] == ["latency", "energy"]
    lat, en = data["panels"]
    assert en["energy_method"] == "estimated" and "estimated" in en["x_axis"]
    pts = {p["variant"]: p for p in lat["points"]}
    assert set(pts) == set(by_model)
    assert pts["models/a.onnx"]["x"] == 2.5 and pts["models/a.onnx"]["y"] == 0.912345
    assert pts["models/orig.onnx"]["x"] == pytest.approx(2.05)  # median of its two measurements
    assert pts["models/orig.onnx"]["pareto"] and not pts["models/b.onnx"]["pareto"]
    epts = {p["variant"]: p for p in en["points"]}
    assert epts["models/b.onnx"]["x"] == 0.0456 and epts["models/b.onnx"]["band"]["low"] == pytest.approx(0.0228)

    png = (out / "pareto.png").read_bytes()
    assert png[:8] == PNG_MAGIC and len(png) > 1000
    import matplotlib.image as mpimg

    img = mpimg.imread(str(out / "pareto.png"))
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100


def test_json_flag_prints_report_json(run_dir, tmp_path):
    out = tmp_path / "out"
    r = CliRunner().invoke(main, ["report", str(run_dir), "-o", str(out), "--json"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout) == json.loads((out / "report.json").read_text())


def test_files_given_one_by_one_and_rerun_in_place(run_dir):
    files = sorted(run_dir.glob("*.json"))
    r = invoke(*files, "-o", run_dir)  # report written into the run folder itself
    assert r.exit_code == 0, r.output
    r = invoke(run_dir, "-o", run_dir)  # its report.json is then skipped, not an error
    assert r.exit_code == 0, r.output
    data = json.loads((run_dir / "report.json").read_text())
    assert len(data["inputs"]) == 4 and any("skipped" in n for n in data["notes"])


def test_mixed_energy_methods_get_separate_panels(tmp_path):
    d = tmp_path / "run"
    write(d / "val_a.json", validate_json("a.onnx", original="orig.onnx", cosine=0.5))
    write(d / "val_b.json", validate_json("b.onnx", original="orig.onnx", cosine=0.7))
    write(d / "val_c.json", validate_json("c.onnx", original="orig.onnx", cosine=0.9))
    write(d / "bench_a.json", bench_json("a.onnx", original="orig.onnx", joules=0.02))
    write(d / "bench_b.json", bench_json("b.onnx", original="orig.onnx", joules=0.03, method="measured", meter="rapl"))
    write(d / "bench_c.json", bench_json("c.onnx", original="orig.onnx", joules=0.5, method="measured", meter="nvml",
                                         provider="cuda", threads=None))
    out = tmp_path / "out"
    r = invoke(d, "-o", out)
    assert r.exit_code == 0, r.output
    data = json.loads((out / "report.json").read_text())
    energy = [p for p in data["panels"] if p["metric"] == "energy"]
    assert sorted(p["energy_method"] for p in energy) == ["estimated", "measured (nvml)", "measured (rapl)"]
    for p in energy:
        methods = set()
        for pt in p["points"]:
            for v in data["variants"]:
                if v["model"] == pt["variant"]:
                    methods |= {m["energy"]["axis"] for m in v["bench"] if m["file"] in pt["files"]}
        assert methods == {p["energy_method"]}, p  # never mixed on one axis
    names = {p["energy_method"]: {pt["variant"] for pt in p["points"]} for p in energy}
    assert names["estimated"] == {"orig.onnx", "a.onnx"} and names["measured (rapl)"] == {"orig.onnx", "b.onnx"}
    assert names["measured (nvml)"] == {"orig.onnx", "c.onnx"}
    assert {p["setting"] for p in data["panels"]} == {"cpu, Test CPU, 2 threads", "cuda, Test GPU, ORT default threads"}
    assert any("different methods" in n for n in data["notes"])
    md = (out / "report.md").read_text()
    assert "measured (rapl)" in md and "measured (nvml)" in md and "estimated" in md
    assert mpimg_ok(out / "pareto.png")


def mpimg_ok(path: pathlib.Path) -> bool:
    import matplotlib.image as mpimg

    return path.read_bytes()[:8] == PNG_MAGIC and mpimg.imread(str(path)).shape[0] > 0


def test_e2e_wrapper_and_partial_inputs(tmp_path):
    d = tmp_path / "run"
    wrapped = {"benchmark": "e2e", "label": "minilm phi6", "bench": bench_json("m-phi6.onnx", original="m.onnx")}
    write(d / "e2e.json", wrapped)
    write(d / "val_other.json", validate_json("other.onnx", original="m.onnx"))  # validated, never benched
    out = tmp_path / "out"
    r = invoke(d, "-o", out)
    assert r.exit_code == 0, r.output
    data = json.loads((out / "report.json").read_text())
    v = {x["model"]: x for x in data["variants"]}
    assert v["m-phi6.onnx"]["label"] == "minilm phi6" and v["m-phi6.onnx"]["fidelity"] is None
    assert any("no validate result" in n for n in data["notes"])
    assert any("no bench result" in n for n in data["notes"])
    assert [p["variant"] for p in data["panels"][0]["points"]] == ["m.onnx"]  # only the original is plottable
    assert "no validate result" in (out / "report.md").read_text()
    assert mpimg_ok(out / "pareto.png")


def _assert_clean_failure(r, out: pathlib.Path, *needles: str) -> None:
    text = r.output.replace("\n", " ")
    assert r.exit_code == 2, r.output
    assert "error:" in text and "Traceback" not in text
    for n in needles:
        assert n in text, r.output
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize("case", ["unknown-kind", "not-json", "not-object", "missing", "empty-dir", "duplicate",
                                  "no-candidate", "out-is-file"])
def test_bad_inputs_fail_clearly_and_write_nothing(case, tmp_path, run_dir):
    out = tmp_path / "out"
    d = tmp_path / "bad"
    d.mkdir()
    needles: tuple[str, ...]
    if case == "unknown-kind":
        write(d / "activation_cpu.json", {"benchmark": "activation_cpu", "rows": []})
        args, needles = [run_dir, d], ("activation_cpu.json", "not a validate result")
    elif case == "not-json":
        write(d / "broken.json", '{"passed": tru')
        args, needles = [d / "broken.json"], ("broken.json", "not valid JSON")
    elif case == "not-object":
        write(d / "list.json", [1, 2])
        args, needles = [d / "list.json"], ("list.json", "JSON object")
    elif case == "missing":
        args, needles = [run_dir / "val_a.json", tmp_path / "nope.json"], ("nope.json", "no such file")
    elif case == "empty-dir":
        args, needles = [d], ("bad", "no *.json files")
    elif case == "duplicate":
        write(d / "val_a2.json", validate_json("models/a.onnx"))
        args, needles = [run_dir, d], ("two validate results", "models/a.onnx")
    elif case == "no-candidate":
        v = validate_json("x.onnx")
        del v["candidate"]
        write(d / "v.json", v)
        args, needles = [d / "v.json"], ("v.json", "'candidate'")
    else:
        out.write_text("I am a file")
        r = invoke(run_dir, "-o", out)
        assert r.exit_code == 2 and "not a folder" in r.output.replace("\n", " ")
        assert out.read_text() == "I am a file"
        return
    before = sorted(p.name for p in run_dir.iterdir())
    r = invoke(*args, "-o", out)
    _assert_clean_failure(r, out, *needles)
    assert sorted(p.name for p in run_dir.iterdir()) == before


def test_existing_output_untouched_on_error(run_dir, tmp_path):
    out = tmp_path / "out"
    assert invoke(run_dir, "-o", out).exit_code == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    bad = write(tmp_path / "bad" / "x.json", {"hello": "world"})
    r = invoke(run_dir, bad, "-o", out)
    assert r.exit_code == 2 and "x.json" in r.output
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_report_api_labels_conflict_is_a_note(tmp_path):
    from n6onnx import report as report_mod

    d = tmp_path / "run"
    write(d / "v.json", validate_json("a.onnx", label="one"))
    b = bench_json("a.onnx", label="two")
    write(d / "b.json", copy.deepcopy(b))
    rep = report_mod.build([d])
    v = {x.path: x for x in rep.variants}["a.onnx"]
    assert v.label in ("one", "two") and any("labelled" in n for n in rep.notes)
