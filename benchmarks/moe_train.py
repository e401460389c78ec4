"""Train the project's own small MoE: a character-level language model on the project's corpus
(n6onnx.testing.corpus: standard-library docstrings), with a mixture-of-experts FFN in every layer written
the way the sources write it (router Linear with bias, softmax, top-2, renormalise, a loop over
experts with index masks: n6onnx.testing.zoo_moe.LoopMoE). No pretrained MoE weights can be downloaded
here, so honest accuracy figures for the MoE rewrites need a model trained by the project.

Model: d_model 48, 2 layers, 4 heads, 8 experts of hidden width 4D = 192 (GELU), top-2, context 64.
CPU, 1 thread (faster than 2 on the shared 2-core machine), a fixed number of steps (AdamW, cosine schedule, Switch-style load-balancing loss
0.01), seeded. Text split (by sentence, fixed order): 85% train, 5% calibration, 10% held-out
evaluation. Writes under build/moe/ (``--out``):

- ``charlm-<variant>.pt``: checkpoint (weights, config, vocabulary, training log);
- ``charlm-<variant>.onnx``: TorchScript export (the expert loop unrolled: the dense form the
  ``moe=*`` passes rewrite), input ``input_ids`` int64 [16, 64], output ``logits`` [16, 64, V];
- ``data.npz``: the calibration and evaluation windows (int64 [n, 65]) and the vocabulary.

``--variant egyptian|equal3`` trains the same model with fixed 1/2, 1/3, 1/6 (or 1/3 each) weights
on the router's best three experts, for the Egyptian-vs-equal comparison; ``--variant phi24``
trains 24 experts of width 4D/3 with top-2 routing (the sources' Phi MoE: a third of the active
expert parameters). Files are named after the variant. Cached: an existing checkpoint is reused
unless ``--force``.

    python benchmarks/moe_train.py                      # top-2 (about 2-3 min)
    python benchmarks/moe_train.py --variant egyptian
"""

from __future__ import annotations

import argparse
import math
import pathlib
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from n6onnx.io import atomic_path  # noqa: E402

CTX, BATCH_EXPORT = 64, 16
CONFIG = dict(d=48, layers=2, heads=4, hidden=192, experts=8, k=2, ctx=CTX)
# variant -> (routing, config changes)
VARIANTS = {"topk": ("topk", {}), "egyptian": ("egyptian", {}), "equal3": ("equal3", {}),
            "phi24": ("topk", {"experts": 24, "hidden": 64})}


def corpus_splits():
    """(vocab, train, calibration, evaluation) as int64 arrays of character ids."""
    from n6onnx.testing import corpus

    sents = corpus.sentences()
    n = len(sents)
    parts = (sents[: int(0.85 * n)], sents[int(0.85 * n): int(0.90 * n)], sents[int(0.90 * n):])
    texts = [" ".join(p) for p in parts]
    vocab = sorted(set("".join(texts)))
    idx = {c: i for i, c in enumerate(vocab)}
    return vocab, *[np.array([idx[c] for c in t], np.int64) for t in texts]


def windows(ids: np.ndarray, n: int | None = None) -> np.ndarray:
    """Non-overlapping windows of CTX + 1 characters (inputs and next-character targets)."""
    k = (len(ids) - 1) // CTX
    w = np.stack([ids[i * CTX: i * CTX + CTX + 1] for i in range(k)])
    return w[:n] if n else w


def build(vocab_size: int, variant: str):
    from n6onnx.testing import zoo_moe

    routing, changes = VARIANTS[variant]
    return zoo_moe.char_lm_class()(vocab_size, routing=routing, **{**CONFIG, **changes})


def balance_loss(model, x_cache):
    """Switch-style auxiliary loss: E * sum_e (fraction routed to e) * (mean router prob of e)."""
    import torch

    total = 0.0
    for moe, x in x_cache:
        probs = torch.softmax(moe.router(x), -1)
        top = probs.topk(moe.k if moe.routing == "topk" else 3, -1).indices
        frac = torch.zeros(probs.shape[-1]).scatter_add_(0, top.reshape(-1), torch.ones(top.numel())) / top.numel()
        total = total + probs.shape[-1] * (frac * probs.reshape(-1, probs.shape[-1]).mean(0)).sum()
    return total


def file_name(variant: str, seed: int) -> str:
    return f"charlm-{variant}" + (f"-s{seed}" if seed else "")


def train(variant: str, steps: int, out: pathlib.Path, seed: int = 0, log_every: int = 100) -> dict:
    import torch

    torch.set_num_threads(1)  # 2-thread OpenMP barriers thrash on a shared 2-core machine
    torch.manual_seed(seed)
    vocab, tr, cal, ev = corpus_splits()
    model = build(len(vocab), variant)
    cache: list = []
    for b in model.blocks:  # keep each MoE layer's input for the balance loss
        b.moe.register_forward_pre_hook(lambda m, args: cache.append((m, args[0])))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 100) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    rng = np.random.default_rng(seed)
    ev_w = torch.from_numpy(windows(ev, 64))
    log, t0 = [], time.perf_counter()
    for step in range(steps):
        starts = rng.integers(0, len(tr) - CTX - 1, size=32)
        batch = torch.from_numpy(np.stack([tr[s: s + CTX + 1] for s in starts]))
        cache.clear()
        logits = model(batch[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
        aux = balance_loss(model, cache)
        opt.zero_grad()
        (loss + 0.01 * aux).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % log_every == 0 or step == steps - 1:
            with torch.no_grad():
                el = model(ev_w[:, :-1])
                eloss = torch.nn.functional.cross_entropy(el.reshape(-1, el.shape[-1]), ev_w[:, 1:].reshape(-1))
            log.append({"step": step, "train_loss": loss.item(), "eval_loss": eloss.item(), "aux": float(aux),
                        "seconds": round(time.perf_counter() - t0, 1)})
            print(f"[{variant}] step {step:5d}  loss {float(loss):.3f}  eval {float(eloss):.3f}  "
                  f"aux {float(aux):.3f}  {time.perf_counter() - t0:.0f}s", flush=True)
    model.eval()
    ckpt = {"state": model.state_dict(), "config": {**CONFIG, **VARIANTS[variant][1]}, "vocab": vocab,
            "variant": variant, "routing": VARIANTS[variant][0], "steps": steps,
            "seed": seed, "log": log, "train_seconds": time.perf_counter() - t0}
    out.mkdir(parents=True, exist_ok=True)
    name = file_name(variant, seed)
    with atomic_path(out / f"{name}.pt") as tmp:
        torch.save(ckpt, tmp)
    return ckpt


def load(out: pathlib.Path, name: str):
    import torch

    ckpt = torch.load(out / f"{name}.pt", weights_only=False)
    model = build(len(ckpt["vocab"]), ckpt.get("variant", ckpt["routing"]))
    model.load_state_dict(ckpt["state"])
    return model.eval(), ckpt


def export(out: pathlib.Path, name: str) -> pathlib.Path:
    import torch

    from n6onnx.testing import zoo_moe

    model, ckpt = load(out, name)
    ids = torch.zeros((BATCH_EXPORT, CTX), dtype=torch.int64)
    path = out / f"{name}.onnx"
    zoo_moe.export_module(model, (ids,), ["input_ids"], path, "torchscript", output_names=("logits",))
    return path


def save_data(out: pathlib.Path) -> None:
    vocab, _, cal, ev = corpus_splits()
    np.savez(out / "data.npz", calibration=windows(cal), evaluation=windows(ev), vocab=np.array(vocab))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variant", default="topk", choices=tuple(VARIANTS))
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--out", type=pathlib.Path, default=ROOT / "build" / "moe")
    p.add_argument("--seed", type=int, default=0, help="seed of weights and batches (files get -sSEED when not 0)")
    p.add_argument("--force", action="store_true")
    a = p.parse_args(argv)
    name = file_name(a.variant, a.seed)
    ckpt_path = a.out / f"{name}.pt"
    if a.force or not ckpt_path.is_file():
        train(a.variant, a.steps, a.out, seed=a.seed)
    else:
        print(f"cached: {ckpt_path} (--force to retrain)")
    save_data(a.out)
    print("exported:", export(a.out, name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
