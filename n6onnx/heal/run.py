"""Entry points used by the API and the CLI: heal inside ``rewrite`` and ``heal`` on its own."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import time

import onnx_ir as ir

from .. import io
from ..errors import BadArgumentError, N6Error
from ..calibrate import load_batches
from ..graph import canonicalize, is_float16
from ..quantize import int4graph, int8graph, quantize_proto
from .executor import check_supported
from .train import HealConfig, HealReport, check_device, heal  # check_device: api checks before any work


def load_data(calibrate: str | os.PathLike, original: ir.Model, *, tokenizer=None, samples: int | None = None,
              dims: dict | None = None):
    """All of DATA (or its first ``samples``) as feed batches for the original's inputs."""
    return load_batches(str(calibrate), ir.to_proto(original), tokenizer=None if tokenizer is None else str(tokenizer),
                        samples=samples, dims=dims)


def check_precision(model: ir.Model, what: str) -> None:
    """Refuse a float16 model: the student and its losses train in float32."""
    if is_float16(model):
        raise BadArgumentError(f"{what}: computes in float16; healing trains in float32 (heal the float32 model, "
                               "then convert the result)")


def heal_in_place(model: ir.Model, original: ir.Model, calibrate, *, tokenizer=None, samples: int | None = None,
                  dims: dict | None = None, config: HealConfig | None = None, progress: bool = False,
                  quant_feeds=None, teacher_given: bool = False) -> HealReport:
    """Heal ``model`` (a rewrite of ``original``, already calibrated) on DATA; in place. ``quant_feeds``:
    the calibration feeds of a later ``--quantize int8:static`` (its activation ranges). ``teacher_given``:
    ``original`` came from the user (``n6onnx heal --teacher``), so check it is the model that was rewritten."""
    check_precision(model, "the rewritten model")
    check_precision(original, "the teacher")
    if teacher_given:
        _check_same_embeddings(model, original)
    check_supported(ir.to_proto(model))  # refuse before loading data or starting the teacher
    for m in (model, original):  # training reads every weight: external ones are read into memory
        ir.external_data.load_to_model(m)
    batches = load_data(calibrate, original, tokenizer=tokenizer, samples=samples, dims=dims)
    return heal(model, original, batches, config, progress=progress, quant_feeds=quant_feeds)


def heal_file(rewritten: str | os.PathLike, teacher: str | os.PathLike, calibrate, output: str | os.PathLike, *,
              tokenizer=None, samples: int | None = None, dims: dict | None = None,
              config: HealConfig | None = None, progress: bool = False) -> HealReport:
    """``n6onnx heal``: heal a rewritten model file against its original, write OUTPUT atomically.

    A REWRITTEN quantized by ``--quantize int8`` (dynamic int8, weights per channel) or ``--quantize
    int4[:BLOCK]`` (MatMulNBits) is turned back into its float graph (``quantize.int8graph`` /
    ``int4graph.dequantize``), healed under fake quantization (unless ``config.fake_quant`` is off),
    and quantized again the same way: the written graph has exactly the nodes of REWRITTEN. Other
    quantized formats (static QDQ: heal the float model with ``rewrite --quantize int8:static
    --heal``) are refused by name before any work."""
    for p, what in ((rewritten, "REWRITTEN"), (teacher, "--teacher"), (calibrate, "--calibrate")):
        if not os.path.isfile(p):
            raise BadArgumentError(f"{what} {p}: no such file")
    io.check_output_path(output, (rewritten, teacher))
    t0 = time.perf_counter()
    model = io.load(rewritten)
    qproto, mode = None, None
    if int8graph.is_quantized(ir.to_proto(model)):
        qproto = io.materialize(ir.to_proto(model))
        if int4graph.is_int4(qproto):
            fproto, mode = int4graph.dequantize(qproto)  # refuses other forms, by name
        else:
            fproto, mode = int8graph.dequantize(qproto), "int8"  # refuses other formats, by name
    if config is not None and config.int8_kernel != "auto" and mode != "int8":  # before any work
        raise BadArgumentError(f"--int8-kernel names the kernel that healing an int8 (dynamic) model mirrors; "
                               f"{rewritten} is {'an ' + mode if mode else 'a float'} model")
    if qproto is not None:
        model = ir.from_proto(fproto)
        _check_requantizes(model, qproto, rewritten, mode)  # before any work
        config = dataclasses.replace(config or HealConfig(), quantize=mode)
    original = io.load(teacher)
    canonicalize(original)
    in_m, in_o = [v.name for v in model.graph.inputs], [v.name for v in original.graph.inputs]
    out_m, out_o = [v.name for v in model.graph.outputs], [v.name for v in original.graph.outputs]
    if in_m != in_o or out_m != out_o:
        raise BadArgumentError(f"--teacher {teacher}: its inputs/outputs {in_o} -> {out_o} differ from the "
                               f"rewritten model's {in_m} -> {out_m}")
    for a, b in zip(model.graph.outputs, original.graph.outputs):  # the same names, but the same model?
        if a.shape is None or b.shape is None:
            continue
        sa, sb = list(a.shape), list(b.shape)
        if len(sa) != len(sb) or any(isinstance(x, int) and isinstance(y, int) and x != y for x, y in zip(sa, sb)):
            raise BadArgumentError(f"--teacher {teacher}: its output {b.name} has shape {sb}, the rewritten model's "
                                   f"{sa}: not the model it was rewritten from")
    rep = heal_in_place(model, original, calibrate, tokenizer=tokenizer, samples=samples, dims=dims, config=config,
                        progress=progress, teacher_given=True)
    if qproto is not None:
        model = ir.from_proto(_check_requantizes(model, qproto, rewritten, mode))
    io.save(model, output, external_data=io.uses_external_data(rewritten) or None)
    rep.seconds = time.perf_counter() - t0
    return rep


def _embedding_digests(model: ir.Model) -> set[str]:
    """Digests of the tables the graph gathers from (token and position embeddings)."""
    out = set()
    for node in model.graph:
        if node.op_type == "Gather" and node.domain in ("", "ai.onnx") and node.inputs[0] is not None:
            t = node.inputs[0].const_value
            if t is not None and t.size >= 1024:
                out.add(hashlib.sha256(t.tobytes()).hexdigest())
    return out


def _check_same_embeddings(model: ir.Model, original: ir.Model) -> None:
    """No pass and no quantize mode touches an embedding table, so a teacher whose tables share none with the
    student's is another model under the same names (a model without embedding tables is not checked)."""
    mine, theirs = _embedding_digests(model), _embedding_digests(original)
    if mine and theirs and not mine & theirs:
        raise BadArgumentError(f"the teacher's {len(theirs)} embedding table(s) differ from all of the rewritten "
                               "model's (no rewrite changes them): not the model it was rewritten from")


def _check_requantizes(model: ir.Model, qproto, name, mode: str = "int8") -> object:
    """``model`` quantized by ``--quantize MODE``, which must have exactly the nodes of ``qproto``."""
    _, requant = quantize_proto(model, mode)
    if int8graph.structure(requant) != int8graph.structure(qproto):
        raise N6Error(f"{name}: quantizing its weights again with --quantize {mode} does not give this model's graph "
                      f"(it was not written by --quantize {mode}); nothing was written")
    return requant
