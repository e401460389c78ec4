"""Regenerate docs/CLAIMS.md: every claim of SPEC.md's table with our measured verdict.

Reads only the JSON files in benchmarks/results/ (whatever subset exists) and copies their numbers
(rounded to 3 significant digits in sentences; the detail tables keep 4): it never invents one. A
claim without a result file says "not measured yet" and what is missing (the rewrite pass or op,
or only the benchmark run). The output has no timestamp of its own (each result file's
``generated`` is quoted), so running it twice on the same files gives the same bytes.

    python benchmarks/claims.py                       # benchmarks/results -> docs/CLAIMS.md
    python benchmarks/claims.py --results DIR --output FILE
"""

from __future__ import annotations

import argparse
import pathlib
import sys
from typing import Sequence

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))  # benchmarks/: the claimlib package
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # the checkout's n6onnx

from n6onnx.io import atomic_write  # noqa: E402
from claimlib.activation import activation_cpu, activation_cuda, e2e  # noqa: E402
from claimlib.attention import attention_rows  # noqa: E402
from claimlib.calibration import _CURVES, bottleneck_row, curve_row, quality_rows  # noqa: E402
from claimlib.common import (  # noqa: E402, F401 - CLAIMS: the claims table, part of this script's interface
    _capabilities, CLAIMS, future_row, HEADER, OUTPUT, RESULTS, Results, Row, table,
)
from claimlib.heal import heal_lm_row, heal_row  # noqa: E402
from claimlib.moe import combined_row, moe_rows  # noqa: E402


def collect(results: pathlib.Path) -> list[Row]:
    res = Results(results)
    fid_name = "fidelity_minilm.json"
    fidelity = res.load(fid_name)
    if fidelity is not None and not ("passed" in fidelity and "cosine_mean" in fidelity):
        raise SystemExit(f"error: {results / fid_name}: not an n6onnx validate result (needs passed and cosine_mean)")
    caps = _capabilities()
    rows = [activation_cpu(res), activation_cuda(res), e2e(res, "cpu", fidelity, fid_name),
            e2e(res, "cuda", fidelity, fid_name)]
    rows += quality_rows(res, fidelity, fid_name)
    rows.append(bottleneck_row(res))
    rows += [r for r in (curve_row(res, f) for f in _CURVES) if r is not None]
    moe = {**(moe_rows(res) or {}), **attention_rows(res)}
    rows += [moe[k] if k in moe else future_row(res, k, caps) for k in ("phi_moe", "routing", "fftmix", "egyptian_attention")]
    rows.append(combined_row(res))
    rows += [heal_row(res), heal_lm_row(res)]
    return rows


def render(rows: list[Row], results: pathlib.Path) -> str:
    L = [HEADER, "## Verdicts", ""]
    L += table(["Claim", "As the sources state it", "Our measured verdict", "Where / how measured", "Result file"],
               [[r.claim, r.source, r.verdict, r.where, ", ".join(f"`{f}`" for f in r.files) or "-"] for r in rows])
    L += ["", "Ratios of a speed or energy figure are baseline / candidate (ORT's op or the ORT-best original over "
          "ours): > 1 means ours is faster or uses less energy; brackets are the interquartile range.", ""]
    details = [r for r in rows if r.detail]
    if details:
        L += ["## Details", ""]
        for r in details:
            L += [f"### {r.detail_title or r.claim}", "", *r.detail, "", "Source: " + ", ".join(f"`{f}`" for f in r.files),
                  ""]
    text = "\n".join(L).rstrip() + "\n"
    return text


def generate(results: pathlib.Path = RESULTS, output: pathlib.Path | None = OUTPUT) -> str:
    """The CLAIMS.md text from the files in ``results``; written to ``output`` (atomically) unless None."""
    if not results.is_dir():
        raise SystemExit(f"error: {results}: no such results folder")
    text = render(collect(results), results)
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(output, text)
    return text


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", type=pathlib.Path, default=RESULTS, help="folder of result JSON files")
    ap.add_argument("--output", type=pathlib.Path, default=OUTPUT, help="the markdown file to write")
    args = ap.parse_args(argv)
    generate(args.results, args.output)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
