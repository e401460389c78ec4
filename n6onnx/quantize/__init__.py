"""Quantization as a pipeline stage, with onnxruntime's own quantization tools.

``quantize(src, dst, mode)`` runs after the rewrite passes, calibration and healing. Modes (see
``mode.py``): ``int8`` (``quantize_dynamic``, QInt8 weights per channel, uint8 activations
quantized per tensor at run time), ``int8:static`` (``quantize_static``, QDQ, MinMax calibration on
``calibration_feeds``, weights per channel, the MatMuls' inputs quantized and their outputs left float) and ``int4[:BLOCK]`` (``MatMulNBitsQuantizer``,
weight-only, symmetric, blocks of BLOCK along K, int8 compute: accuracy_level 4; a Gemm with a
constant weight is split into MatMul + Add first, ``int4graph.split_gemms``, since the tool takes MatMuls).

Only MatMul and Gemm are quantized (the ops that pay on CPU); the n6 custom-op nodes stay float
between the quantized MatMuls, and their model-local functions stay attached so the result still
runs without the n6onnx library. The result is deterministic for a given input and mode, and is
written atomically; the input is never modified.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import pathlib
import tempfile
import time
from typing import Iterable, Mapping, Sequence

import numpy as np
import onnx
import onnx_ir as ir

from .. import io
from ..graph import is_float16
from ..errors import BadArgumentError, N6Error
from ..ops import DOMAIN
from . import int4graph
from .biascorr import correct_bias
from .mode import GRAMMAR, QuantMode, QuantModeType, parse_mode

__all__ = ["GRAMMAR", "QuantMode", "QuantModeType", "QuantizeReport", "check_precision", "parse_mode", "quantize",
           "quantize_proto"]

OP_TYPES = ("MatMul", "Gemm")
# what each mode leaves in the graph for a quantized MatMul/Gemm
_QUANT_OPS = {"MatMulInteger", "DynamicQuantizeLinear", "DynamicQuantizeMatMul", "MatMulIntegerToFloat",
              "QuantizeLinear", "DequantizeLinear", "MatMulNBits", "QGemm", "QLinearMatMul"}


@dataclasses.dataclass
class QuantizeReport:
    mode: str
    model: str
    output: str | None
    candidates: int  # MatMul/Gemm nodes before (excluded ones included)
    quantized: int  # of those, how many onnxruntime's tool replaced
    excluded: list[str]
    float_n6_nodes: int  # n6 custom-op nodes, still float after quantization
    functions: list[str]  # model-local functions (n6 fallbacks) present in the result
    op_counts: dict[str, int]  # quantization op types in the result
    seconds: float
    warnings: list[str] = dataclasses.field(default_factory=list)
    bias_corrected: int = 0  # int8 with calibration data: biases given the DFQ correction (see biascorr)
    fit: dict | None = None  # rewrite --quantize int8 --calibrate: the int8-path refit + GPTQ rounding (see qfit)

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["seconds"] = round(self.seconds, 3)
        return d


def _to_proto(src) -> tuple[str, onnx.ModelProto]:
    if isinstance(src, ir.Model):
        return "<ir.Model>", io.materialize(ir.to_proto(src))  # the quantizer reads every weight
    if isinstance(src, onnx.ModelProto):
        p = onnx.ModelProto()
        p.CopyFrom(src)
        return "<ModelProto>", p
    if isinstance(src, (str, os.PathLike)):
        return str(src), io.load_proto(src)
    raise BadArgumentError(f"quantize: expected a model path, onnx.ModelProto or onnx_ir.Model, got {type(src).__name__}")


def _matmuls(proto: onnx.ModelProto) -> list[str]:
    return [n.name for n in proto.graph.node if n.op_type in OP_TYPES]


def quantize(src, dst: str | os.PathLike | None, mode: str | QuantMode, *,
             calibration_feeds: Iterable[Mapping[str, np.ndarray]] | None = None,
             exclude_nodes: Sequence[str] = (), bias_correction: bool = False) -> QuantizeReport:
    """Quantize ``src`` (path, ModelProto or onnx_ir.Model) with onnxruntime's tools; write ``dst``
    atomically when given. ``calibration_feeds``: feed dicts (e.g. an n6onnx FeedBatches) for
    ``int8:static``; with ``int8`` and ``bias_correction`` they give E[x] for DFQ bias correction
    (``biascorr``; off by default: on calibrated phi6 MiniLM it measured 0.9560 -> 0.9556). ``exclude_nodes``: MatMul/Gemm node names to keep float."""
    rep, proto = quantize_proto(src, mode, calibration_feeds=calibration_feeds, exclude_nodes=exclude_nodes,
                                bias_correction=bias_correction, _dst=dst)
    if dst is not None:
        io.save(proto, dst)
        rep.output = str(dst)
    return rep


def check_precision(model, mode: str | QuantMode, name: str, option: str = "--quantize") -> None:
    """Refuse a float16 ``model`` (ModelProto or onnx_ir.Model) for the int8 modes: onnxruntime's int8 tools
    write a graph that does not load (DynamicQuantizeLinear and QuantizeLinear take float32). int4
    (MatMulNBits) takes float16."""
    qm = parse_mode(mode)
    if qm.kind != "int4" and is_float16(model):
        raise BadArgumentError(f"{name}: computes in float16; {option} {qm} needs a float32 model (int4 takes "
                               "float16)")


def quantize_proto(src, mode: str | QuantMode, *, calibration_feeds=None, exclude_nodes: Sequence[str] = (),
                   bias_correction: bool = False, ranges: Mapping[str, tuple] | None = None,
                   _dst=None) -> tuple[QuantizeReport, onnx.ModelProto]:
    """As ``quantize``, returning the quantized ModelProto instead of writing it. ``ranges`` (``int8:static``):
    {activation tensor: (scale, zero point)} that its QuantizeLinear takes instead of the calibrated one (the
    ranges a static heal trained: ``heal.ranges``)."""
    t0 = time.perf_counter()
    qm = parse_mode(mode)
    if _dst is not None:
        io.check_output_path(_dst, (src,) if isinstance(src, (str, os.PathLike)) else ())
    name, proto = _to_proto(src)
    if proto.ByteSize() >= 2**31 - 1:
        raise BadArgumentError(f"{name}: quantize supports models under 2 GB (protobuf limit) for now")
    check_precision(proto, qm, name)
    feeds = None
    if qm.needs_calibration:
        feeds = _feed_list(calibration_feeds)
    elif calibration_feeds is not None and qm.kind == "int4":
        pass  # weight-only: the data is not needed
    cands = _matmuls(proto)
    unknown = sorted(set(exclude_nodes) - {n.name for n in proto.graph.node})
    if unknown:
        raise BadArgumentError(f"exclude_nodes: no node named {', '.join(map(repr, unknown))} in {name}")
    if qm.kind == "int4":  # MatMulNBits takes MatMuls only: a Linear exported as Gemm becomes MatMul + Add
        proto, _ = int4graph.split_gemms(proto, keep=exclude_nodes)
        cands = _matmuls(proto)  # (a split Gemm is counted by its MatMul)
    n6_before = sum(n.domain == DOMAIN for n in proto.graph.node)
    functions = {(f.domain, f.name, getattr(f, "overload", "")): f for f in proto.functions}

    with tempfile.TemporaryDirectory(prefix="n6onnx-quantize-") as tmp:
        src_path = pathlib.Path(tmp) / "in.onnx"
        out_path = pathlib.Path(tmp) / "out.onnx"
        onnx.save_model(proto, str(src_path))
        _run(qm, src_path, out_path, feeds, list(exclude_nodes), ranges)
        result = onnx.load(str(out_path))

    corrected = 0
    if qm.kind == "int8" and bias_correction and calibration_feeds is not None:
        corrected = correct_bias(proto, result, _feed_list(calibration_feeds, str(qm)))
    # the n6 nodes must come through untouched, and their fallback functions attached
    n6_after = sum(n.domain == DOMAIN for n in result.graph.node)
    if n6_after != n6_before:
        raise N6Error(f"internal error: onnxruntime's quantizer changed the n6 nodes ({n6_before} -> {n6_after})")
    have = {(f.domain, f.name, getattr(f, "overload", "")) for f in result.functions}
    for key, f in functions.items():
        if key not in have:
            result.functions.append(f)
    if n6_before and not any(o.domain == DOMAIN for o in result.opset_import):
        result.opset_import.extend([o for o in proto.opset_import if o.domain == DOMAIN])
    ops = collections.Counter(n.op_type for n in result.graph.node if n.op_type in _QUANT_OPS)
    quantized = _count_quantized(cands, result)
    warnings = []
    if cands and not quantized:
        warnings.append(f"{qm}: onnxruntime's quantizer replaced none of the {len(cands)} MatMul/Gemm nodes "
                        "(no constant weights?)")
    rep = QuantizeReport(str(qm), name, None, len(cands), quantized, list(exclude_nodes), n6_after,
                         sorted(f.name for f in result.functions), dict(sorted(ops.items())),
                         time.perf_counter() - t0, warnings, corrected)
    return rep, result


def _count_quantized(cands: list[str], result: onnx.ModelProto) -> int:
    """How many of the MatMul/Gemm nodes ``cands`` were quantized: replaced (QOperator, MatMulNBits) or
    left in place with a DequantizeLinear'd input (QDQ)."""
    producer = {o: n.op_type for n in result.graph.node for o in n.output}
    left = {n.name: n for n in result.graph.node if n.op_type in OP_TYPES}
    return sum(1 for c in cands
               if c not in left or any(producer.get(i) == "DequantizeLinear" for i in left[c].input))


def _feed_list(calibration_feeds, mode: str = "int8:static") -> list[dict]:
    if calibration_feeds is None:
        raise BadArgumentError(f"quantize mode {mode} needs calibration data (--calibrate DATA)")
    if isinstance(calibration_feeds, Mapping):
        calibration_feeds = [calibration_feeds]
    feeds = [dict(f) for f in calibration_feeds]
    if not feeds:
        raise BadArgumentError(f"quantize mode {mode}: the calibration data is empty")
    return feeds


def _run(qm: QuantMode, src: pathlib.Path, out: pathlib.Path, feeds, exclude: list[str], ranges=None) -> None:
    import logging

    # "Please consider to run pre-processing" is logged on every call: not the user's concern here
    logger = logging.getLogger()
    level = logger.level
    from onnxruntime import quantization as q
    # imported before the level is raised: its first import runs logging.basicConfig(level=INFO), which would
    # lower it again for this call ("skip to quantize <node>" for every node of a fused graph it leaves alone)
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    logger.setLevel(max(level, logging.ERROR))
    try:
        if qm.kind == "int8":
            # DefaultTensorType: a tensor whose type shape inference cannot tell (the output of an
            # onnxruntime-only op of a fused graph, e.g. GPT-2's FullyConnect MatMul) is float: the stage
            # quantizes float graphs only
            q.quantize_dynamic(src, out, per_channel=True, weight_type=q.QuantType.QInt8,
                               op_types_to_quantize=list(OP_TYPES), nodes_to_exclude=exclude,
                               extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
        elif qm.kind == "int8:static":
            # inputs only: a MatMul's output carries a transformer's outlier features (MiniLM: ranges up to ~200
            # where most values are within a few units), which one uint8 grid per tensor cannot hold; left float,
            # as dynamic int8 leaves them, MiniLM keeps cosine 0.990 instead of 0.935 at the same speed
            q.quantize_static(src, out, _Reader(feeds), quant_format=q.QuantFormat.QDQ, per_channel=True,
                              activation_type=q.QuantType.QUInt8, weight_type=q.QuantType.QInt8,
                              op_types_to_quantize=list(OP_TYPES), nodes_to_exclude=exclude,
                              calibrate_method=q.CalibrationMethod.MinMax,
                              extra_options={"OpTypesToExcludeOutputQuantization": list(OP_TYPES),
                                             "DefaultTensorType": onnx.TensorProto.FLOAT,
                                             "TensorQuantOverrides": _overrides(ranges)})
        else:
            mq = MatMulNBitsQuantizer(str(src), bits=4, block_size=qm.block, is_symmetric=True, accuracy_level=4,
                                      nodes_to_exclude=exclude, op_types_to_quantize=("MatMul",))
            mq.process()
            mq.model.save_model_to_file(str(out), use_external_data_format=False)
    except N6Error:
        raise
    except Exception as e:  # onnxruntime's tools raise anything; say which step failed
        raise N6Error(f"onnxruntime's quantizer failed ({qm}): {type(e).__name__}: {e}") from None
    finally:
        logger.setLevel(level)


def _overrides(ranges) -> dict:
    """onnxruntime's TensorQuantOverrides for fixed (scale, zero point) ranges."""
    return {n: [{"scale": np.array(s, np.float32), "zero_point": np.array(z, np.uint8)}]
            for n, (s, z) in sorted((ranges or {}).items())}


def _reader_base():
    from onnxruntime.quantization import CalibrationDataReader

    return CalibrationDataReader


class _Reader(_reader_base()):
    """A CalibrationDataReader over a list of feed dicts."""

    def __init__(self, feeds: list[dict]):
        self._feeds = feeds
        self._it = iter(feeds)

    def get_next(self):
        return next(self._it, None)

    def rewind(self):
        self._it = iter(self._feeds)
