"""The tune report (``study.TuneReport``, which imports this module to render itself) as a rich
table, JSON and a matplotlib plot (fidelity against latency)."""

from __future__ import annotations

import io as _io
import json
import pathlib

from ..io import atomic_write


def _f(x, spec=".4f") -> str:
    return "-" if x is None else format(x, spec)


def rows(rep, reasons: bool = True) -> list[tuple[str, ...]]:
    """One row per reference and front point, then the other measured trials (pruned/failed last); with
    ``reasons`` off, a pruned or failed trial's status is the word only (``reasons()`` lists why)."""
    int8 = rep.int8
    front = {id(p) for p in rep.front}
    order = rep.references + [p for p in rep.front if p.role == "trial"] + sorted(
        (p for p in rep.trials if id(p) not in front),
        key=lambda p: (p.status != "complete", -(getattr(p, rep.key) or -2)))
    out = []
    for p in order:
        mark = ("chosen" if p is rep.chosen else "") + (" front" if id(p) in front else "") + (
            " anchor" if p is int8 else "")
        vs_int8 = (p.speedup / int8.speedup) if (int8 is not None and int8.speedup and p.speedup) else None
        e = (p.timing or {}).get("energy_mj_per_inference_estimated")
        out.append((p.role if p.role != "trial" else f"#{p.number}", p.label, healing(p), _f(p.cosine),
                    _f(p.nn, ".3f"), _f(p.top1, ".4f"),
                    _f(p.latency, ".2f"), _f(p.speedup, ".2f"), _f(vs_int8, ".2f"), _f(e, ".1f"),
                    (mark.strip() or p.status) + (f": {p.reason}" if p.status != "complete" and reasons else "")))
    return out


def reasons(rep) -> list[str]:
    """Why each pruned or failed trial stopped, one line each (the terminal table shows the word only)."""
    return [f"#{p.number} {p.status}: {p.reason}" for p in rep.trials if p.status != "complete" and p.reason]


def healing(p) -> str:
    """How a healed point was healed and for how long (e.g. "fake-quant int8, 95 s"); "-" if not healed."""
    h = p.healing
    return "-" if not h else f"{h['mode']}, {h['seconds']:.0f} s"


HEADER = ("", "recipe", "heal", "cosine", "NN", "top-1", "p50 ms", "x fp32", "x int8", "mJ est.", "")


def header(rep) -> tuple[str, ...]:
    """HEADER, with the reduced-precision stage tune used ("x fp16" on CUDA) and the energy measured or not."""
    stage = rep.setting.get("stage", "int8")
    measured = str(rep.setting.get("energy", "")).startswith("measured")
    return HEADER[:8] + (f"x {stage}", "mJ" if measured else "mJ est.", "")


def table(rep):
    from rich import box
    from rich.table import Table

    t = Table(title=f"tune: {rep.model} ({rep.gates()}; held-out data)", box=box.SIMPLE_HEAD, pad_edge=False,
              padding=(0, 1, 0, 0))
    body, head = rows(rep, reasons=False), header(rep)
    # a column no point has (top-1 for an encoder, NN for a decoder) is left out, so the table fits a terminal
    keep = [k for k, h in enumerate(head) if h in ("", "recipe") or any(r[k] != "-" for r in body)]
    for k in keep:  # numbers and the role never wrap; the recipe, the heal and the status fold
        text = head[k] in ("recipe", "heal") or k == len(head) - 1
        t.add_column(head[k], overflow="fold", no_wrap=not text, justify="left" if text or k == 0 else "right",
                     min_width=14 if head[k] == "recipe" else None, ratio=2 if head[k] == "recipe" else None)
    for r in body:
        t.add_row(*(r[k] for k in keep))
    t.caption = ("x fp32 / x " + head[8].split()[-1] + ": median speed-up; mJ: energy per inference"
                 + (", estimated" if head[9].endswith("est.") else ""))
    return t


def plot_png(rep) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    f = lambda p: getattr(p, rep.key)  # noqa: E731  (cosine, or a decoder's top-1 agreement)
    done = [p for p in rep.trials if p.relative_latency is not None and f(p) is not None]
    ax.scatter([p.relative_latency for p in done], [f(p) for p in done], s=14, c="0.6", label="trials")
    fr = [p for p in rep.front if p.relative_latency is not None]
    ax.plot([p.relative_latency for p in fr], [f(p) for p in fr], "-o", c="tab:blue", ms=5, label="Pareto front")
    for p, c in zip(rep.references, ("black", "tab:orange", "tab:green")):
        if p.relative_latency is not None and f(p) is not None:
            ax.scatter([p.relative_latency], [f(p)], marker="s", s=50, c=c, label=p.label, zorder=3)
    if rep.chosen is not None:
        ax.scatter([rep.chosen.relative_latency], [f(rep.chosen)], marker="*", s=160, c="tab:red", label="chosen",
                   zorder=4)
    ax.axhline(rep.min_top1 if rep.key == "top1" else rep.min_cosine, ls="--", c="tab:red", lw=0.8)
    ax.set_xlabel("latency relative to the fp32 original (timed interleaved with it), "
                  + ", ".join(f"{k}={v}" for k, v in (rep.setting.get("dims") or {}).items()))
    ax.set_ylabel("held-out top-1 agreement with the original" if rep.key == "top1" else
                  "held-out cosine vs original")
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    buf = _io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def write(rep, out_dir: pathlib.Path) -> list[pathlib.Path]:
    """tune.json, tune.md (the table) and tune.png in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    md = ["| " + " | ".join(header(rep)) + " |", "|" + "---|" * len(HEADER)]
    md += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows(rep)]
    files = {"tune.json": json.dumps(rep.to_json(), indent=2, default=str).encode(),
             "tune.md": ("\n".join(md) + "\n").encode(), "tune.png": plot_png(rep)}
    for name, data in files.items():
        atomic_write(out_dir / name, data)
    return [out_dir / n for n in files]
