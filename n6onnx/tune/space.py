"""The recipe space ``n6onnx tune`` searches: which passes at which strength, int8 on/off, heal on/off.
(On CUDA the reduced-precision stage is float16: the trial parameter keeps its name "int8", the recipe says fp16.)

A recipe is an ordered list of passes (block drops first, so that attention passes rank among the
blocks left), then int8, then heal. Dimensions that the model does not have (no GELU, no FFN, no
MoE, fewer attention blocks) are left out of the space.
"""

from __future__ import annotations

import dataclasses

FFN_RATIOS = ("4/3", "2", "3")  # hidden width = RATIO x d_model (the original is 4 x)
MOE_DROPS = ("phi:1", "phi:2")  # Phi sub-experts, dropping the 1 or 2 least used per token


@dataclasses.dataclass(frozen=True)
class Recipe:
    passes: tuple[str, ...] = ()
    quantize: str | None = None
    heal: bool = False

    @property
    def label(self) -> str:
        parts = list(self.passes) + ([self.quantize] if self.quantize else []) + (["heal"] if self.heal else [])
        return " + ".join(parts) if parts else "fp32 (original)"

    def to_json(self) -> dict:
        return {"passes": list(self.passes), "quantize": self.quantize, "heal": self.heal, "label": self.label}


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """What the space may use, from ``inspect``."""

    gelu: int = 0
    ffn: int = 0
    attention: int = 0  # rewritable attention blocks
    moe: int = 0

    @classmethod
    def of(cls, inspect_report) -> "ModelInfo":
        k = inspect_report.kinds
        return cls(gelu=k["gelu"].found, ffn=k["ffn"].found,
                   attention=sum(1 for s in k["attention"].sites if "index" in s.detail), moe=k["moe"].found)


def suggest(trial, info: ModelInfo, *, heal: bool, stage: str = "int8", fake_quant: bool = True) -> Recipe:
    """A recipe from an Optuna trial (define-by-run: conditional parameters); ``stage``: the reduced precision
    its "int8" parameter switches on (``stages.STAGE``: int8 on the CPU, fp16 on CUDA); ``fake_quant``: whether a
    heal can train against that stage (int8: fake quantization). Where it cannot (fp16), a recipe without a pass
    has nothing to heal: the float original healed in float is the original."""
    passes: list[str] = []
    n_att = info.attention
    cap = max(1, n_att // 2)  # never drop or replace more than half of the blocks
    if n_att >= 2:
        nb = trial.suggest_int("block_drop", 0, cap)
        if nb:
            passes.append(f"block=drop:{nb}")
        left = cap - nb
        if left >= 1:
            kind = trial.suggest_categorical("attention", ["none", "drop", "fftmix"])
            if kind != "none":
                n = trial.suggest_int(f"attention_{kind}", 1, left)
                passes.append(f"attention={kind}:{n}")
    if info.gelu:
        if trial.suggest_categorical("gelu", ["keep", "phi6"]) == "phi6":
            passes.append("gelu=phi6")
    if info.ffn:
        r = trial.suggest_categorical("ffn", ["keep", *FFN_RATIOS])
        if r != "keep":
            passes.append(f"ffn=phi-bottleneck:{r}")
    if info.moe:
        m = trial.suggest_categorical("moe", ["keep", "sparse", "phi", *MOE_DROPS])
        if m != "keep":
            passes.append(f"moe={m}")
    q = stage if trial.suggest_categorical("int8", [False, True]) else None
    h = bool(trial.suggest_categorical("heal", [False, True])) if heal else False
    h = h and bool(passes or q and fake_quant)  # the float original has nothing to heal
    return Recipe(tuple(passes), q, h)


def seeds(info: ModelInfo, *, heal: bool, fake_quant: bool = True) -> list[dict]:
    """First trials (Optuna ``enqueue_trial``): with ``heal`` and a stage a heal can train against
    (``fake_quant``: int8), the int8 original healed (under fake quantization); then the single
    strongest-evidence recipes, with the stage."""
    keep = {"block_drop": 0, "attention": "none", "gelu": "keep", "ffn": "keep", "moe": "keep", "int8": True,
            "heal": False}
    out = []
    if heal and fake_quant:  # first: the int8 original healed against its int8 graph, what heal adds to int8 alone
        out.append({**keep, "heal": True})
    if info.attention >= 2:
        out.append({**keep, "block_drop": 1})
        out.append({**keep, "attention": "drop", "attention_drop": 1})
    if info.ffn:
        out.append({**keep, "ffn": "2"})
    return out
