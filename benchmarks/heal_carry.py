"""The folder that heal_rows.sh / heal_parallel.sh take to a host without the packaged MiniLM or transformers.

    python benchmarks/heal_carry.py pack CARRY [--samples 2000]   # here: model, DATA and held-out feeds
    python benchmarks/heal_carry.py restore CARRY                 # there: CARRY/minilm.onnx from the fp16 copy

``pack`` writes CARRY/data.npz (the first SAMPLES sentences of benchmarks/heal.py's pool, tokenised at
8 x 64 as ``NAME/K`` batches), CARRY/held.npz (its 256 held-out sentences) and CARRY/minilm16.onnx: the
dynamic-axes dynamo export (opset 20) with its float32 weights stored as float16, so the folder fits a
device call's 64 MiB. ``restore`` casts them back to float32: that float32 model, whose weights are
fp16-rounded, is the original (teacher and reference) of every row run from the folder.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import numpy as np
import onnx
from onnx import numpy_helper

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from n6onnx.io import atomic_path  # noqa: E402

F32, F16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16
TAG = "n6onnx.heal_carry"  # metadata key on the fp16 copy: the names of the initializers it narrowed


def _recast(proto: onnx.ModelProto, names: set[str] | None, dtype) -> list[str]:
    done = []
    for t in proto.graph.initializer:
        if (names is None and t.data_type == F32 and t.raw_data) or (names is not None and t.name in names):
            a = numpy_helper.to_array(t).astype(dtype)
            t.CopyFrom(numpy_helper.from_array(a, t.name))
            done.append(t.name)
    return done


def _save(proto: onnx.ModelProto, path: pathlib.Path) -> None:
    with atomic_path(path) as tmp:
        onnx.save(proto, str(tmp))


def _feeds(texts: list[str], session, path: pathlib.Path) -> int:
    from n6onnx.feeds import text_feeds
    from n6onnx.text import minilm_dir

    batches = text_feeds(texts, minilm_dir(), session, dims={"batch": 8, "seq": 64})
    arrays = {f"{n}/{k}": a for k, b in enumerate(batches) for n, a in b.items()}
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)
    return len(batches)


def pack(carry: pathlib.Path, samples: int) -> None:
    import onnxruntime as ort
    from heal import texts
    from n6onnx.testing import zoo

    carry.mkdir(parents=True, exist_ok=True)
    src = zoo.export("minilm", "dynamo20", ROOT / "build" / "test-models", dynamic=True)
    proto = onnx.load(str(src))
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    data, held = texts(samples)
    print(f"data.npz: {_feeds(data, session, carry / 'data.npz')} batches; "
          f"held.npz: {_feeds(held, session, carry / 'held.npz')} batches")
    narrowed = _recast(proto, None, np.float16)
    onnx.helper.set_model_props(proto, {TAG: ",".join(narrowed)})
    _save(proto, carry / "minilm16.onnx")
    print(f"minilm16.onnx: {len(narrowed)} initializers as float16")


def restore(carry: pathlib.Path) -> None:
    proto = onnx.load(str(carry / "minilm16.onnx"))
    props = {p.key: p.value for p in proto.metadata_props}
    if TAG not in props:
        raise SystemExit(f"{carry / 'minilm16.onnx'}: not written by heal_carry.py pack")
    names = set(filter(None, props[TAG].split(",")))
    _recast(proto, names, np.float32)
    del proto.metadata_props[:]
    _save(proto, carry / "minilm.onnx")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("verb", choices=("pack", "restore"))
    ap.add_argument("carry", type=pathlib.Path)
    ap.add_argument("--samples", type=int, default=2000, help="DATA sentences (pack)")
    a = ap.parse_args()
    pack(a.carry, a.samples) if a.verb == "pack" else restore(a.carry)


if __name__ == "__main__":
    main()
