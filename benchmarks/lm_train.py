"""Train the project's own small GPT-2: a byte-level (vocab 256) Hugging Face GPT2LMHeadModel on real
English text available offline, for the decoder heal benchmark (benchmarks/heal_lm.py). No pretrained
GPT-2 can be downloaded here, so honest next-token figures for decoder rewrites need a model trained by
the project (as benchmarks/moe_train.py does for the MoE).

Text: the standard-library docstring sentences of benchmarks/recovery.py (``extended_sentences``: the
project corpus, then more of the same kind), UTF-8 bytes. Split by sentence index, fixed order:
``k % 20 == 0`` held-out (never seen by training, calibration or healing), ``k % 20 in 1..4`` DATA
(calibration and healing), the rest training text. Each split's sentences are joined with a space; the split is written once, with the model
(``text-{train,data,held}.bin``), and read back from there.

Model: GPT2LMHeadModel, vocab 256, context 64, 4 layers, d 128, 4 heads, inner 512, ``gelu_new`` (as
GPT-2), dropout 0.1 while training. CPU, 1 thread (2-thread barriers thrash on the shared 2-core
machine), AdamW (lr 2e-3, wd 0.01, 100-step warm-up, cosine), batches of 32 random 65-byte windows of
the training text, a fixed number of steps, seeded: deterministic for a seed and a torch version.

Writes under build/lm/ (``--out``; git-ignored; trained when missing, reused otherwise unless
``--force``):

- ``bytelm.pt``: weights, config, training log (train / held-out loss and next-byte accuracy);
- ``bytelm-nokv.onnx``: dynamo export, opset 20, as n6onnx.testing.zoo_decoder exports GPT-2 (inputs
  ``input_ids``, ``attention_mask``, ``position_ids`` [batch, seq]; output ``logits`` [batch, seq, 256]);
- ``bytelm-kv.onnx``: the same with a KV cache (``past_key_values.{i}.key/value`` -> ``present.*``);
- ``data.npz`` (``NAME/K`` feeds for ``--calibrate``: DATA windows, 16 x 64 a batch), ``held.npz``
  (held-out windows, same form) and ``held_labels.npy`` (the next byte of every held-out position).

    python benchmarks/lm_train.py          # about 3-4 minutes on one core
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from n6onnx.io import atomic_path  # noqa: E402

CTX, BATCH = 64, 16  # sequence length and batch of the DATA / held-out feeds
CONFIG = dict(vocab_size=256, n_positions=CTX, n_embd=128, n_layer=4, n_head=4, n_inner=512,
              activation_function="gelu_new", bos_token_id=0, eos_token_id=0)
DROPOUT = 0.1
VERSION = "1"  # bump when the text split, the model or the training recipe changes


def splits(out: pathlib.Path) -> dict[str, np.ndarray]:
    """{"train", "data", "held"}: uint8 byte arrays of each split's text, cached in ``out/text-*.bin``
    (written once, with the model: which docstrings are found depends on what the process had imported,
    so the split is computed once and read back, never recomputed for a trained model)."""
    names = ("train", "data", "held")
    files = {n: out / f"text-{n}.bin" for n in names}
    if all(f.is_file() for f in files.values()):
        return {n: np.fromfile(f, np.uint8) for n, f in files.items()}
    from recovery import extended_sentences

    sents = extended_sentences(set())
    parts: dict[str, list[str]] = {n: [] for n in names}
    for k, s in enumerate(sents):
        parts["held" if k % 20 == 0 else "data" if k % 20 <= 4 else "train"].append(s)
    out.mkdir(parents=True, exist_ok=True)
    for n, p in parts.items():
        with atomic_path(files[n]) as tmp:
            pathlib.Path(tmp).write_bytes(" ".join(p).encode("utf-8"))
    return {n: np.fromfile(f, np.uint8) for n, f in files.items()}


def windows(ids: np.ndarray, n: int | None = None) -> np.ndarray:
    """Non-overlapping int64 windows of CTX + 1 bytes (inputs and next-byte targets)."""
    k = (len(ids) - 1) // CTX
    w = np.stack([ids[i * CTX: i * CTX + CTX + 1] for i in range(k)]).astype(np.int64)
    return w[:n] if n else w


def feeds_npz(w: np.ndarray, path: pathlib.Path) -> int:
    """Write windows' inputs as ``NAME/K`` feed batches of BATCH rows (the form --calibrate and
    validate --feeds read); returns the number of sequences written (whole batches only)."""
    from n6onnx.testing import zoo_decoder

    arrays = {}
    nb = len(w) // BATCH
    for k in range(nb):
        x = w[k * BATCH:(k + 1) * BATCH, :-1]
        arrays[f"input_ids/{k}"] = x
        arrays[f"attention_mask/{k}"] = np.ones_like(x)
        arrays[f"position_ids/{k}"] = np.broadcast_to(np.arange(CTX, dtype=np.int64), x.shape).copy()
    assert set(zoo_decoder.input_names("nokv")) == {n.split("/")[0] for n in arrays}
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
    return nb * BATCH


def build(dropout: float = 0.0):
    import transformers as tf

    cfg = tf.GPT2Config(**CONFIG, resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout)
    return tf.GPT2LMHeadModel(cfg)


def evaluate(model, w) -> tuple[float, float]:
    """(mean next-byte cross-entropy in nats, next-byte top-1 accuracy) on windows ``w``."""
    import torch

    with torch.no_grad():
        x = torch.from_numpy(w)
        logits = model(input_ids=x[:, :-1]).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 256), x[:, 1:].reshape(-1))
        acc = (logits.argmax(-1) == x[:, 1:]).float().mean()
    return float(loss), float(acc)


def train(steps: int, out: pathlib.Path, seed: int = 0, log_every: int = 200) -> dict:
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(seed)
    sp = splits(out)
    tr = sp["train"]
    held_w, tr_w = windows(sp["held"], 128), windows(tr, 128)
    model = build(DROPOUT)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 100) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    rng = np.random.default_rng(seed)
    log, t0 = [], time.perf_counter()
    for step in range(steps):
        model.train()
        starts = rng.integers(0, len(tr) - CTX - 1, size=32)
        batch = torch.from_numpy(np.stack([tr[s: s + CTX + 1] for s in starts]).astype(np.int64))
        logits = model(input_ids=batch[:, :-1]).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 256), batch[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % log_every == 0 or step == steps - 1:
            model.eval()
            (tl, ta), (hl, ha) = evaluate(model, tr_w), evaluate(model, held_w)
            log.append({"step": step, "batch_loss": round(loss.item(), 4), "train_loss": round(tl, 4),
                        "train_accuracy": round(ta, 4), "heldout_loss": round(hl, 4), "heldout_accuracy": round(ha, 4),
                        "seconds": round(time.perf_counter() - t0, 1)})
            print(f"step {step:5d}  train {tl:.3f} ({ta:.3f})  held-out {hl:.3f} ({ha:.3f})  "
                  f"{time.perf_counter() - t0:.0f}s", flush=True)
    model.eval()
    ckpt = {"state": model.state_dict(), "config": CONFIG, "version": VERSION, "steps": steps, "seed": seed,
            "log": log, "train_seconds": round(time.perf_counter() - t0, 1),
            "text_bytes": {n: int(len(a)) for n, a in sp.items()}}
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "bytelm.pt") as tmp:
        torch.save(ckpt, tmp)
    return ckpt


def checkpoint(out: pathlib.Path) -> dict:
    """The saved checkpoint (weights, config, log) without building the model: reusing a trained LM
    needs neither transformers nor a retrain (a host that only heals it, e.g. the device host)."""
    import torch

    return torch.load(out / "bytelm.pt", weights_only=False)


def load(out: pathlib.Path):
    ckpt = checkpoint(out)
    model = build()
    model.load_state_dict(ckpt["state"])
    return model.eval(), ckpt


def export(out: pathlib.Path, form: str) -> pathlib.Path:
    from n6onnx.testing import zoo_decoder

    model, ckpt = load(out)
    heads, hd = CONFIG["n_head"], CONFIG["n_embd"] // CONFIG["n_head"]
    rng = np.random.default_rng(0)
    past = 5 if form == "kv" else 0
    feeds = {"input_ids": rng.integers(0, 256, size=(2, 3), dtype=np.int64),
             "attention_mask": np.ones((2, past + 3), np.int64),
             "position_ids": np.broadcast_to(np.arange(past, past + 3, dtype=np.int64), (2, 3)).copy()}
    for n in zoo_decoder.past_names(CONFIG["n_layer"]):
        feeds[n] = rng.standard_normal((2, heads, past, hd)).astype(np.float32)
    return zoo_decoder.export_lm(model, out / f"bytelm-{form}.onnx", feeds, form=form, exporter="dynamo20",
                                 layers=CONFIG["n_layer"], doc=f"n6onnx benchmarks/lm_train.py bytelm v{VERSION}")


def save_data(out: pathlib.Path) -> dict:
    sp = splits(out)
    n_data = feeds_npz(windows(sp["data"]), out / "data.npz")
    held = windows(sp["held"])
    n_held = feeds_npz(held, out / "held.npz")
    with atomic_path(out / "held_labels.npy") as tmp:
        with open(tmp, "wb") as f:
            np.save(f, held[:n_held, 1:])
    return {"data_sequences": n_data, "held_sequences": n_held, "seq": CTX, "batch": BATCH}


def ensure(out: pathlib.Path = ROOT / "build" / "lm", steps: int = 1200, seed: int = 0, force: bool = False) -> dict:
    """Train (when missing or stale), export and write the data files; returns their paths and the log."""
    stamp = out / "stamp.json"
    want = {"version": VERSION, "steps": steps, "seed": seed}
    fresh = stamp.is_file() and json.loads(stamp.read_text()) == want and (out / "bytelm.pt").is_file()
    if fresh:  # the text files are the split the model was trained on: else train again
        ckpt = checkpoint(out)
        fresh = {n: len(a) for n, a in splits(out).items()} == ckpt["text_bytes"]
    if force or not fresh:
        for n in ("train", "data", "held"):
            (out / f"text-{n}.bin").unlink(missing_ok=True)
        train(steps, out, seed=seed)
        for form in ("nokv", "kv"):
            export(out, form)
        with atomic_path(stamp) as tmp:
            pathlib.Path(tmp).write_text(json.dumps(want))
    else:
        print(f"cached: {out / 'bytelm.pt'} (--force to retrain)")
    sizes = save_data(out)  # deterministic, cheap: always rewritten
    ckpt = checkpoint(out)
    return {"model": out / "bytelm-nokv.onnx", "kv_model": out / "bytelm-kv.onnx", "data": out / "data.npz",
            "held": out / "held.npz", "labels": out / "held_labels.npy", "log": ckpt["log"],
            "train_seconds": ckpt["train_seconds"], "text_bytes": ckpt["text_bytes"], "steps": ckpt["steps"],
            "seed": ckpt["seed"], "sizes": sizes}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=1200)
    p.add_argument("--out", type=pathlib.Path, default=ROOT / "build" / "lm")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true")
    a = p.parse_args(argv)
    r = ensure(a.out, a.steps, a.seed, a.force)
    print("final:", r["log"][-1])
    print("models:", r["model"], r["kv_model"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
