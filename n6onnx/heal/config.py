"""What a heal can be asked to do: the options and their defaults (no torch here, so the CLI can
offer them without importing torch)."""

from __future__ import annotations

import dataclasses
import re

from ..errors import BadArgumentError
from ..options import number

TRAINABLE = ("rewritten", "neighbours", "all")
PARAMS = ("relative", "raw")
# kl: the outputs are logits; pooled: 1 - cosine of each sample's mean-pooled [B, L, H] output (a sentence embedding);
# relational: pooled plus the error of the pairwise cosines between a batch's samples (nearest-neighbour structure)
LOSSES = ("streams+output", "streams", "output", "streams+kl", "kl", "streams+pooled", "pooled", "streams+relational",
          "relational")
LOCAL_INPUTS = ("student", "teacher")
LOCAL_MODES = ("sequential", "parallel")
REFITS = ("none", "phase", "eval")
TRAIN_DTYPES = ("float32", "bfloat16")  # the precision of the training forward (held-out checks: float32)
CACHE_DTYPES = ("float16", "float32")  # how the teacher's stream points are kept (outputs: float32)
# the u8s8 int8 kernel that the deployed int8 model (dynamic, or static QDQ) will run on (quantize.kernel): "auto"
# this CPU's, as measured; "exact" exact int32 products (x86 with VNNI or AMX, ARM); "saturating" pair sums clipped to
# int16 (x86 AVX2 without VNNI)
INT8_KERNELS = ("auto", "exact", "saturating")
_CHOICES = {"param": PARAMS, "loss": LOSSES, "train": TRAINABLE, "local_input": LOCAL_INPUTS,
            "local_mode": LOCAL_MODES, "refit": REFITS, "train_dtype": TRAIN_DTYPES, "cache_dtype": CACHE_DTYPES,
            "int8_kernel": INT8_KERNELS}
_DEVICE = re.compile(r"cpu|cuda(:[0-9]+)?")


@dataclasses.dataclass
class HealConfig:
    minutes: float = 10.0
    steps: int | None = None  # stop after this many steps (deterministic end point)
    seed: int = 0
    lr: float = 5e-4  # per step, relative to each entry's typical size ("relative"); absolute for "raw"
    local: float = 0.7  # share of the budget (time, or --heal-steps) spent on block-local reconstruction first
    # learning rate of the block-local phase (None: lr). 1e-2 with the parallel phase gave the best healed
    # fidelity on MiniLM; the sequential phase needs 3e-4 to keep every held-out check within 0.001 of the start
    # (1e-2 fell 0.0033, 3e-3 0.0043, 1e-3 0.0007 on gelu=phi6: docs/heal-measurements.md)
    local_lr: float | None = 1e-2
    # adaptive block-local step (parallel phase, "bold driver"): start at this step (no warm-up) and double it
    # after each held-out check that does not fall, up to local_lr; after a check that falls (the backtrack
    # rule): restore the best weights, halve, and stay at or below the halved step until 4 checks in a row do
    # not fall. Checks come every eval_every * step / local_lr steps (at least eval_every / 8), so each check
    # interval moves the weights about equally far. None (default): a fixed local_lr after the warm-up. 1e-4
    # kept every check of 4 of 5 MiniLM rewrites within 0.001 of the start (the combined recipe included) but
    # healed gelu=phi6 and the bottleneck less in the same budget (device host: docs/heal-measurements.md)
    local_lr_start: float | None = None
    # each block's input in the parallel local phase: the teacher's, or the student's own (detached)
    local_input: str = "teacher"
    # "parallel": every block at once, from local_input (the default: the best healed fidelity measured);
    # "sequential": blocks trained one after another in graph order, each on the student's own stream
    # (upstream blocks already healed) with only its own weights, and kept only where the held-out check
    # does not fall (with local_lr 3e-4: the no-fall setting, at a fidelity cost: docs/heal-measurements.md)
    local_mode: str = "parallel"
    local_output: bool = False  # sequential: each block's loss also holds the model outputs (run on from the block)
    # sequential closed-form refit of the trained output projections on the student's own stream
    # (heal.refit): "phase" after the block-local phase, "eval" also before every held-out check of
    # the block-local phase (the checked model is the refitted one), "none"
    refit: str = "phase"
    refit_rows: int = 8192  # real tokens the refit uses (training batches, in order)
    local_eval_every: int = 200  # steps between held-out checks in the block-local phase with refit "eval"
    param: str = "relative"
    loss: str = "streams+output"
    train: str = "rewritten"
    holdout: float = 0.1
    holdout_batches: int = 16  # at most this many held-out batches (each evaluation runs them all)
    eval_every: int = 25
    warmup: int = 100
    prime: int = 0  # steps at lr 0 first: Adam's moment estimates settle before any weight moves
    # a held-out check this far below the best restores the best weights and halves the step; "auto": the
    # noise of the check itself, max(backtrack_floor, backtrack_z * sd(d) / sqrt(n)) over the paired
    # per-sample differences d between the check and the best check (the held-out set is fixed)
    backtrack: float | str = "auto"
    backtrack_floor: float = 0.0005
    backtrack_z: float = 2.0
    # falls at the smallest step (1/64 of the phase's) before a phase ends early ("converged"): 1, the first;
    # more keep training at that step (every fall restores the best weights) while the budget lasts
    floor_falls: int = 1
    # the held-out checks see (and keep as the best) an exponential moving average of the weights over the steps,
    # decay ema per step (Polyak averaging); 0: the live weights. 0.99 kept every held-out check of five MiniLM
    # rewrites at or above the start, where the live weights fell up to 0.010 below it, and healed as well or
    # better (the combined recipe 0.896 -> 0.939): docs/heal-measurements.md
    ema: float = 0.99
    threads: int | None = None
    # the teacher's values kept between passes over DATA (beyond it they are recomputed at each use): 1.5 GiB holds
    # MiniLM's 2000 sentences at 8 x 64 with float16 stream points
    cache_bytes: int = 3 << 29
    # the teacher's stream points (the loss's targets, the block-local inputs) kept as float16 where they fit
    # (relative rounding <= 2^-11, far below any heal's error), so twice the batches stay within cache_bytes; the
    # model outputs, which the held-out checks score, stay float32. "float32" keeps everything float32: docs/heal.md
    cache_dtype: str = "float16"
    quantize: str | None = None  # the quantization the healed model gets on write-out (set by rewrite / heal)
    # --quantize int8:static: this share of the budget (time, or steps) trains the activation ranges last, the weights
    # frozen (heal.ranges), and the written QuantizeLinear nodes get the trained ranges; 0: the ranges stay
    # calibration's (the start model's MinMax) while healing, and the healed model is calibrated again on write-out
    ranges: float = 0.25
    ranges_lr: float = 2e-3  # Adam step of the ranges' log-gain and zero point (a zero point moves in uint8 steps)
    fake_quant: bool = True  # with quantize int8: train against the int8 path (fake-quant, straight-through)
    # with quantize int8 or int8:static: the kernel whose products the student mirrors (INT8_KERNELS): heal on one CPU
    # for a deployment on another kind with "exact" or "saturating"
    int8_kernel: str = "auto"
    # "bfloat16": the training forward under CPU bf16 autocast (its MatMuls ~2.2x faster a step on an avx512_bf16 CPU;
    # held-out checks stay float32). Same fidelity at equal steps on gelu=phi6, lower under fake-quant int8: docs/heal-measurements.md
    train_dtype: str = "float32"
    # where the student trains: "cpu", or a torch CUDA device ("cuda", "cuda:1"). The teacher stays on
    # onnxruntime's CPU provider (its values are computed once per batch and cached); on CUDA a run is
    # repeatable only as far as torch's CUDA kernels are (atomics in some backward passes are not bitwise)
    device: str = "cpu"

    def __post_init__(self):
        """Every value checked when the config is made (and by ``dataclasses.replace``), so a bad one is refused
        with a BadArgumentError naming the field before any work, not minutes into a heal. Whether torch can use
        ``device`` is checked when the heal starts (that needs torch)."""
        for field, allowed in _CHOICES.items():
            if getattr(self, field) not in allowed:
                raise BadArgumentError(f"heal: {field} must be one of {allowed}, not {getattr(self, field)!r}")
        if not isinstance(self.device, str) or not _DEVICE.fullmatch(self.device):
            raise BadArgumentError(f"heal: device must be cpu or a CUDA device such as cuda or cuda:1, not {self.device!r}")
        for field in ("local_output", "fake_quant"):
            if not isinstance(getattr(self, field), bool):
                raise BadArgumentError(f"heal: {field} must be True or False, not {getattr(self, field)!r}")
        if self.quantize is not None and not isinstance(self.quantize, str):
            raise BadArgumentError(f"heal: quantize must be a quantization mode or None, not {self.quantize!r}")
        if self.backtrack != "auto":
            number("heal backtrack (a number or 'auto')", self.backtrack, 0, 1)
        # (field, low, high, low open, high open, whole number); None passes (where None is allowed, below)
        checks = [("minutes", 0, None, True, False, False), ("lr", 0, None, True, False, False),
                  ("local", 0, 1, False, False, False), ("local_lr", 0, None, True, False, False),
                  ("local_lr_start", 0, 1, True, False, False), ("holdout", 0, 1, True, True, False),
                  ("backtrack_floor", 0, 1, False, False, False), ("backtrack_z", 0, None, True, False, False),
                  ("ema", 0, 1, False, True, False), ("ranges", 0, 1, False, True, False),
                  ("ranges_lr", 0, 1, True, False, False), ("steps", 1, None, False, False, True),
                  ("seed", 0, None, False, False, True), ("refit_rows", 1, None, False, False, True),
                  ("local_eval_every", 1, None, False, False, True), ("holdout_batches", 1, None, False, False, True),
                  ("eval_every", 1, None, False, False, True), ("warmup", 0, None, False, False, True),
                  ("prime", 0, None, False, False, True), ("floor_falls", 1, None, False, False, True),
                  ("threads", 1, None, False, False, True), ("cache_bytes", 0, None, False, False, True)]
        nullable = {"steps", "local_lr", "local_lr_start", "threads"}
        for field, lo, hi, lo_open, hi_open, whole in checks:
            value = getattr(self, field)
            if value is None and field not in nullable:
                raise BadArgumentError(f"heal: {field} needs a value")
            if isinstance(value, bool) or (value is not None and not isinstance(value, (int, float))):
                raise BadArgumentError(f"heal: {field} needs a number, not {value!r}")
            number(f"heal {field}", value, lo, hi, lo_open=lo_open, hi_open=hi_open, integer=whole)
