"""HealConfig checks every value when it is made (and on ``dataclasses.replace``), so a bad one is refused
with a message naming the field before any work, however the config was built (CLI, API, benchmarks)."""

from __future__ import annotations

import dataclasses

import pytest

from n6onnx.errors import BadArgumentError
from n6onnx.heal.config import INT8_KERNELS, LOSSES, REFITS, HealConfig


def test_defaults_and_every_choice_are_accepted():
    HealConfig()
    for loss in LOSSES:
        HealConfig(loss=loss)
    for refit in REFITS:
        HealConfig(refit=refit)
    for k in INT8_KERNELS:
        HealConfig(int8_kernel=k)
    HealConfig(steps=None, threads=None, local_lr=None, local_lr_start=1e-4, device="cuda:1", backtrack=0.002,
               quantize="int8:static", ema=0.0, local=0, lr=5.0, fake_quant=False)


@pytest.mark.parametrize("kw, says", [
    ({"train": "bogus"}, "train must be one of"), ({"loss": "mse"}, "loss must be one of"),
    ({"refit": None}, "refit must be one of"), ({"cache_dtype": "int8"}, "cache_dtype"),
    ({"train_dtype": "float16"}, "train_dtype"), ({"int8_kernel": "vnni"}, "int8_kernel must be one of"),
    ({"local_mode": "serial"}, "local_mode"),
    ({"device": "tpu"}, "device must be cpu"), ({"device": "cuda:x"}, "device must be cpu"),
    ({"minutes": 0}, "minutes must be in"), ({"minutes": float("inf")}, "minutes must be a finite"),
    ({"lr": -1e-3}, "lr must be in"), ({"lr": "fast"}, "lr needs a number"), ({"local": 1.5}, "local must be in"),
    ({"steps": 0}, "steps must be in"), ({"steps": 2.5}, "steps needs a whole number"),
    ({"eval_every": 0}, "eval_every"), ({"holdout": 1.0}, "holdout must be in"), ({"ema": 1.0}, "ema must be in"),
    ({"ranges": -0.1}, "ranges must be in"), ({"threads": 0}, "threads must be in"),
    ({"backtrack": "sometimes"}, "backtrack"), ({"backtrack": 2.0}, "backtrack"),
    ({"fake_quant": 1}, "True or False"), ({"local_output": "yes"}, "True or False"),
    ({"minutes": None}, "minutes needs a value"), ({"warmup": True}, "warmup needs a number"),
])
def test_a_bad_value_is_refused_when_made(kw, says):
    with pytest.raises(BadArgumentError, match=says):
        HealConfig(**kw)
    with pytest.raises(BadArgumentError, match=says):
        dataclasses.replace(HealConfig(), **kw)
