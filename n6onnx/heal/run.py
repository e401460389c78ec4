"""Entry points used by the API and the CLI: heal inside ``rewrite`` and ``heal`` on its own."""

from __future__ import annotations

import os
import time

import onnx_ir as ir

from .. import io
from ..errors import BadArgumentError
from ..calibrate import load_batches
from ..graph import canonicalize
from .executor import check_supported
from .train import HealConfig, HealReport, heal


def load_data(calibrate: str | os.PathLike, original: ir.Model, *, tokenizer=None, samples: int | None = None,
              dims: dict | None = None):
    """All of DATA (or its first ``samples``) as feed batches for the original's inputs."""
    return load_batches(str(calibrate), ir.to_proto(original), tokenizer=None if tokenizer is None else str(tokenizer),
                        samples=samples, dims=dims)


def heal_in_place(model: ir.Model, original: ir.Model, calibrate, *, tokenizer=None, samples: int | None = None,
                  dims: dict | None = None, config: HealConfig | None = None, progress: bool = False) -> HealReport:
    """Heal ``model`` (a rewrite of ``original``, already calibrated) on DATA; in place."""
    check_supported(ir.to_proto(model))  # refuse before loading data or starting the teacher
    for m in (model, original):  # training reads every weight: external ones are read into memory
        ir.external_data.load_to_model(m)
    batches = load_data(calibrate, original, tokenizer=tokenizer, samples=samples, dims=dims)
    return heal(model, original, batches, config, progress=progress)


def heal_file(rewritten: str | os.PathLike, teacher: str | os.PathLike, calibrate, output: str | os.PathLike, *,
              tokenizer=None, samples: int | None = None, dims: dict | None = None,
              config: HealConfig | None = None, progress: bool = False) -> HealReport:
    """``n6onnx heal``: heal a rewritten model file against its original, write OUTPUT atomically."""
    for p, what in ((rewritten, "REWRITTEN"), (teacher, "--teacher"), (calibrate, "--calibrate")):
        if not os.path.isfile(p):
            raise BadArgumentError(f"{what} {p}: no such file")
    io.check_output_path(output, (rewritten, teacher))
    t0 = time.perf_counter()
    model = io.load(rewritten)
    original = io.load(teacher)
    canonicalize(original)
    in_m, in_o = [v.name for v in model.graph.inputs], [v.name for v in original.graph.inputs]
    out_m, out_o = [v.name for v in model.graph.outputs], [v.name for v in original.graph.outputs]
    if in_m != in_o or out_m != out_o:
        raise BadArgumentError(f"--teacher {teacher}: its inputs/outputs {in_o} -> {out_o} differ from the "
                               f"rewritten model's {in_m} -> {out_m}")
    rep = heal_in_place(model, original, calibrate, tokenizer=tokenizer, samples=samples, dims=dims, config=config,
                        progress=progress)
    io.save(model, output, external_data=io.uses_external_data(rewritten) or None)
    rep.seconds = time.perf_counter() - t0
    return rep
