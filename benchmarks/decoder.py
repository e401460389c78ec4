"""Decoder benchmark (issue 20, item 6): a random-weight ~100 M-parameter Llama-style decoder exported
with a key/value cache, on onnxruntime, against ORT's best original.

Model: transformers LlamaModel, hidden 768, 12 layers, intermediate 2048, 12 query / 4 key-value
heads, vocabulary 32000, tied embeddings (~100 M parameters), exported in the zoo's merged KV-cache
form (``n6onnx.testing.zoo_decoder``: past_key_values inputs, present outputs, logits).

Rows: the original as ORT runs it best (``n6onnx.bench.baseline.fuse``: ORT's transformer optimizer
when it fuses more, full graph optimisations either way); ORT's per-channel dynamic int8
(``quantize_dynamic``, MatMul/Gemm); and each n6 rewrite that the passes accept on this model
(``n6onnx.rewrite``; a rewrite that is refused, or rewrites nothing, is listed with the reason).

Measured per row, batch 1:
- prefill latency: ``--prefill`` tokens (default 512) with an empty cache;
- decode tokens/s at ``--context`` tokens (default 4096): one new token after a cache of that
  length (each model's own cache, from a prefill of that many random tokens: a rewrite may change
  the cache layout, docs/decoders.md), 1 / median step time;
- KV-cache bytes at that context: the bytes of the present outputs of that step, scaled to
  ``--context`` tokens (what a cache of that length holds), and bytes per token.
Timing: sessions on ``--threads`` intra-op threads (default 2) with IO binding
(``n6onnx.bench.session``); per measurement, warm-up runs, then ``--rounds`` rounds in which the
rows take turns (round robin, so drift on a shared machine hits all rows alike); median, quartiles.
``--provider cuda`` runs on the GPU (CUDA provider, the n6 CUDA library when built) for
long-context decode. Writes benchmarks/results/decoder_{provider}.json.
"""

from __future__ import annotations

import argparse
import logging
import pathlib
import sys
import time
import traceback

import numpy as np
import onnx

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import n6onnx  # noqa: E402
from n6onnx.bench import baseline  # noqa: E402
from n6onnx.bench.session import Runner, SessionConfig  # noqa: E402
from n6onnx.errors import N6Error  # noqa: E402
from n6onnx.io import atomic_path  # noqa: E402
from n6onnx.testing import zoo_decoder  # noqa: E402

from _common import check_passes, summary, write  # noqa: E402

# the rewrites tried on the decoder; each is kept only if the pass accepts and rewrites something
REWRITES = ("gelu=phi6", "ffn=phi-bottleneck:4/3", "attention=fftmix:@0", "attention=egyptian")


def _dims(v: onnx.ValueInfoProto) -> list:
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in v.type.tensor_type.shape.dim]


def _np_type(v: onnx.ValueInfoProto):
    return onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type)


def feeds_for(proto: onnx.ModelProto, new: int, past: int, vocab: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Batch-1 inputs for ``new`` tokens after a cache of ``past`` tokens (random values). Cache inputs
    are the rank-4 ``past...`` inputs [batch, kv_heads, past, head_dim]; their other sizes come from the
    graph."""
    rng = np.random.default_rng(seed)
    init = {t.name for t in proto.graph.initializer}
    out = {}
    for v in proto.graph.input:
        if v.name in init:
            continue
        dims, name = _dims(v), v.name.lower()
        if name in ("position_ids", "cache_position"):
            pos = np.arange(past, past + new)
            out[v.name] = (pos[None] if name == "position_ids" else pos).astype(_np_type(v))
        elif "past" in name or "cache" in name:
            # an empty cache in the model's own layout (a rewrite may change it: docs/decoders.md):
            # batch 1, every other symbolic axis 0; decode_feeds fills it by a prefill
            if past:
                raise N6Error("feeds_for builds empty caches only; use decode_feeds for a filled one")
            shape = [1] + [d if isinstance(d, int) else 0 for d in dims[1:]]
            out[v.name] = np.zeros(shape, _np_type(v))
        elif name == "input_ids":
            out[v.name] = rng.integers(0, vocab, (1, new)).astype(_np_type(v))
        elif name == "attention_mask":
            out[v.name] = np.ones((1, past + new), _np_type(v))
        else:
            raise N6Error(f"unknown decoder input {v.name} {dims}")
    return out


def decode_feeds(sess, proto: onnx.ModelProto, past: int, vocab: int) -> dict[str, np.ndarray]:
    """Inputs for one new token after a cache of ``past`` tokens, the cache being what ``sess`` itself
    produced by a prefill of ``past`` random tokens (so it has the model's own cache layout, as a
    rewritten decoder's may differ from the original's)."""
    prefill = feeds_for(proto, past, 0, vocab, seed=1)
    outs = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, prefill)))
    step = feeds_for(proto, 1, 0, vocab, seed=2)
    step["attention_mask"] = np.ones((1, past + 1), step["attention_mask"].dtype)
    if "position_ids" in step:
        step["position_ids"] = np.array([[past]], step["position_ids"].dtype)
    for name in [n for n in step if n.startswith("past_key_values.")]:
        step[name] = outs[name.replace("past_key_values.", "present.")]
    return step


def kv_bytes(sess, runner: Runner, context: int, past: int) -> dict:
    """Bytes of the present outputs after one step from a cache of ``past`` tokens, per token and at ``context``."""
    total = 0
    for o, v in zip(sess.get_outputs(), runner.outputs):
        if "present" in o.name.lower():
            shape = v.shape()
            total += int(np.prod(shape)) * np.dtype(_np_type_of(v)).itemsize
    per_token = total / (past + 1)
    return {"present_bytes_at_step": total, "bytes_per_token": per_token, "bytes_at_context": int(per_token * context)}


def _np_type_of(v) -> np.dtype:
    t = v.data_type()  # e.g. "tensor(float)"
    return {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(bfloat16)": np.uint16,
            "tensor(int8)": np.int8, "tensor(uint8)": np.uint8}[t]


def rewrites(src: pathlib.Path, work: pathlib.Path, specs=REWRITES) -> tuple[dict[str, pathlib.Path], dict[str, str]]:
    """Each rewrite of ``specs`` that applies: {label: path}; the others: {label: why not}."""
    done, refused = {}, {}
    for spec in specs:
        out = work / f"decoder-{spec.replace('=', '-').replace(':', '_').replace('/', '-')}.onnx"
        try:
            _, rep = n6onnx.rewrite(str(src), out, [spec])
        except N6Error as e:
            refused[spec] = f"refused: {e}"
            continue
        kind = spec.split("=")[0]
        r = rep.reports.get(kind)
        if r is None or not r.rewritten:
            why = "; ".join(sorted({f"{m.reason}" for m in (r.near_misses if r else [])})) or "no site matched"
            refused[spec] = f"nothing rewritten ({why})"
            out.unlink(missing_ok=True)
            continue
        done[spec] = out
    return done, refused


CONFIG = dict(hidden=768, layers=12, intermediate=2048, heads=12, kv_heads=4, vocab=32000)


def export_decoder(work: pathlib.Path, seed: int = 0) -> tuple[pathlib.Path, int, dict]:
    """A random-weight Llama-style causal LM (CONFIG, tied embeddings) exported in the zoo's merged
    KV-cache form (``n6onnx.testing.zoo_decoder``: its wrapper, graph names and dynamic axes): inputs
    input_ids, attention_mask (past + new), position_ids, past_key_values.{i}.key/value
    [batch, kv_heads, past, head_dim]; outputs logits and present.{i}.key/value. Cached in ``work``."""
    import torch
    import transformers as tf

    c = CONFIG
    path = work / "decoder-llama-{hidden}x{layers}-i{intermediate}-q{heads}-kv{kv_heads}-v{vocab}.onnx".format(**c)
    info = {"kind": "random-weight transformers LlamaForCausalLM (tied embeddings), zoo_decoder KV-cache form, "
                    "dynamo opset 20", **c}
    if not path.is_file():
        cfg = tf.LlamaConfig(vocab_size=c["vocab"], hidden_size=c["hidden"], num_hidden_layers=c["layers"],
                             intermediate_size=c["intermediate"], num_attention_heads=c["heads"],
                             num_key_value_heads=c["kv_heads"], max_position_embeddings=16384, use_cache=True,
                             tie_word_embeddings=True, hidden_act="silu")
        torch.manual_seed(seed)
        wrapped = zoo_decoder._wrapper("llama", tf.LlamaForCausalLM(cfg).eval(), "kv")
        n, hd = c["layers"], c["hidden"] // c["heads"]
        s, p = 3, 5
        args = (torch.randint(0, c["vocab"], (1, s)), torch.ones(1, s + p, dtype=torch.int64),
                torch.arange(p, p + s)[None], *(torch.randn(1, c["kv_heads"], p, hd) for _ in range(2 * n)))
        b = torch.export.Dim("batch", min=1, max=64)
        seq = torch.export.Dim("seq", min=1, max=16384)
        dyn = ({0: b, 1: seq}, {0: b, 1: torch.export.Dim("total", min=1, max=32768)}, {0: b, 1: seq},
               tuple({0: b, 2: torch.export.Dim("past", min=0, max=16384)} for _ in range(2 * n)))
        with atomic_path(path) as tmp, torch.no_grad():
            prog = torch.onnx.export(wrapped, args, dynamo=True, opset_version=20,
                                     input_names=["input_ids", "attention_mask", "position_ids",
                                                  *zoo_decoder.past_names(n)],
                                     output_names=["logits", *zoo_decoder.present_names(n)],
                                     dynamic_shapes=dyn, external_data=False, optimize=True)
            onnx.save_model(prog.model_proto, str(tmp))
    info["parameters"] = _params(path)
    return path, c["vocab"], info


def _params(path: pathlib.Path) -> int:
    return sum(int(np.prod(t.dims)) for t in onnx.load(str(path), load_external_data=False).graph.initializer)


def stock_int8(src: pathlib.Path, dst: pathlib.Path) -> pathlib.Path:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    logging.getLogger().setLevel(logging.ERROR)
    if not dst.is_file():
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True,
                         op_types_to_quantize=["MatMul", "Gemm"])
    return dst


def timed(runners: dict[str, Runner], rounds: int, warmup: int) -> dict[str, list[float]]:
    for r in runners.values():
        for _ in range(warmup):
            r()
    times: dict[str, list[float]] = {k: [] for k in runners}
    for _ in range(rounds):
        for k, r in runners.items():
            t0 = time.perf_counter()
            r()
            times[k].append(time.perf_counter() - t0)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--provider", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--threads", type=int, default=2, help="intra-op threads (cpu)")
    ap.add_argument("--prefill", type=int, default=512)
    ap.add_argument("--context", type=int, default=4096)
    ap.add_argument("--rounds", type=int, default=10, help="timed runs per row and measurement")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--note", default="shared 2-core machine, other jobs running: timing is noisy")
    ap.add_argument("--work", default=str(ROOT / "build" / "decoder"))
    ap.add_argument("--rewrite", action="append", default=None,
                    help="a rewrite row to try (repeatable; default: every one of REWRITES; --rewrite '' none)")
    ap.add_argument("--int4", action="store_true", help="add a row of the export with n6onnx's --quantize int4 "
                    "(MatMulNBits, weight-only, block 32): decode reads every weight once per token")
    ap.add_argument("--out", default=None, help="result name under benchmarks/results/ (default decoder_<provider>)")
    ap.add_argument("--no-int8", action="store_true", help="leave out the ORT int8 row (e.g. on CUDA, where "
                    "quantize_dynamic's MatMulInteger nodes fall back to the CPU)")
    args = ap.parse_args()
    check_passes(ap, args.rewrite or ())
    work = pathlib.Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    src, vocab, config = export_decoder(work)
    cfg = SessionConfig(provider=args.provider, threads=args.threads if args.provider == "cpu" else None)

    fused = baseline.fuse(src, provider=args.provider)
    models = {"original (ORT best: " + fused.chosen + ")": fused.path}
    if pathlib.Path(fused.path) != pathlib.Path(src):  # the plain original too: a fusion that fails on this provider leaves it the baseline
        models["original (ORT_ENABLE_ALL, no transformer fusion)"] = src
    if not args.no_int8:
        models["ORT int8 per-channel (quantize_dynamic)"] = stock_int8(src, work / "decoder-int8-per-channel.onnx")
    if args.int4:
        from n6onnx.quantize import quantize

        q4 = work / "decoder-int4.onnx"
        if not q4.is_file():
            quantize(src, q4, "int4")
        models["n6onnx --quantize int4 (MatMulNBits, block 32)"] = q4
    done, refused = rewrites(src, work, tuple(r for r in (args.rewrite if args.rewrite is not None else REWRITES) if r))
    models.update({f"n6 {k}": v for k, v in done.items()})

    sessions, errors = {}, {}
    for label, path in models.items():
        try:
            sessions[label] = cfg.session(path)[0]
        except N6Error as e:
            errors[label] = str(e)
    protos = {label: onnx.load(str(path), load_external_data=False) for label, path in models.items()}
    measurements = {}
    for what, new, past in (("prefill", args.prefill, 0), ("decode", 1, args.context)):
        runners = {}
        for label, sess in sessions.items():
            try:
                feeds = decode_feeds(sess, protos[label], past, vocab) if past else feeds_for(protos[label], new, 0, vocab)
                runners[label] = Runner(sess, feeds, cfg)
            except Exception as e:  # noqa: BLE001 - a row that cannot run is reported, not fatal
                errors[f"{label} ({what})"] = "".join(traceback.format_exception_only(type(e), e)).strip()
        times = timed(runners, args.rounds, args.warmup)
        measurements[what] = {k: {"seconds": summary(v)} for k, v in times.items()}
        if what == "decode":
            for k, r in runners.items():
                med = measurements[what][k]["seconds"]["median"]
                measurements[what][k]["tokens_per_second"] = 1.0 / med
                measurements[what][k]["kv_cache"] = kv_bytes(sessions[k], r, args.context, past)
    rows = []
    # the baseline: the first original row that ran both measurements (ORT's fused one unless it failed)
    base = next((k for k in models if k.startswith("original") and all(k in measurements[w] for w in measurements)),
                next(iter(models)))
    for label in models:
        row = {"name": label, "path": str(models[label].name)}
        if label in sessions:
            pre = measurements["prefill"].get(label)
            dec = measurements["decode"].get(label)
            if pre:
                row["prefill_seconds"] = pre["seconds"]
                if base in measurements["prefill"]:
                    row["prefill_speedup"] = measurements["prefill"][base]["seconds"]["median"] / pre["seconds"]["median"]
            if dec:
                row["decode_step_seconds"] = dec["seconds"]
                row["decode_tokens_per_second"] = dec["tokens_per_second"]
                row["kv_cache"] = dec["kv_cache"]
                if base in measurements["decode"]:
                    b = measurements["decode"][base]
                    row["decode_speedup"] = dec["tokens_per_second"] / b["tokens_per_second"]
                    row["kv_bytes_vs_original"] = (dec["kv_cache"]["bytes_at_context"]
                                                   / max(b["kv_cache"]["bytes_at_context"], 1))
        rows.append(row)
        print(f"{label:45s} " + "  ".join(
            f"{k}={v:.4g}" for k, v in (("prefill_s", row.get("prefill_seconds", {}).get("median")),
                                        ("decode_tok/s", row.get("decode_tokens_per_second")),
                                        ("kv_MB@ctx", row.get("kv_cache", {}).get("bytes_at_context", 0) / 1e6))
            if v is not None), flush=True)
    payload = {
        "what": "decoder prefill latency, decode tokens/s and KV-cache bytes against ORT's best original (issue 20)",
        "model": config, "provider": args.provider, "threads": cfg.threads,
        "prefill_tokens": args.prefill, "context_tokens": args.context, "batch": 1,
        "method": ("IO-bound sessions (n6onnx.bench.session), ORT_ENABLE_ALL; warm-up runs then rounds in which the "
                   "rows take turns; median and quartiles of the wall time of one run; decode at context C = one "
                   "new token after a cache of C random entries; tokens/s = 1 / median step; KV bytes = the "
                   "present outputs of that step scaled to C tokens"),
        "rounds": args.rounds, "warmup": args.warmup, "note": args.note,
        "original_fusion": {"chosen": fused.chosen, "fused_ops": fused.fused},
        "baseline_row": base, "rows": rows, "refused": refused, "errors": errors,
    }
    print(write(args.out or f"decoder_{args.provider}", payload))


if __name__ == "__main__":
    main()
