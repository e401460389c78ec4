"""pareto.png: fidelity against latency and energy, one row of panels per setting."""

from __future__ import annotations

import io as _io

from .build import Panel, Report


def render(rep: Report) -> bytes:
    """pareto.png as bytes (matplotlib's Agg canvas; pyplot and the global backend are not touched)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows: list[list[Panel]] = []
    for st in rep.settings:
        rows.append([p for p in rep.panels if p.setting == st["name"]])
    ncols = max([len(r) for r in rows] or [1])
    nrows = max(len(rows), 1)
    fig = Figure(figsize=(5.6 * ncols, 4.4 * nrows), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    if not any(p.points for p in rep.panels):
        ax = fig.add_subplot(1, 1, 1)
        ax.axis("off")
        ax.text(0.5, 0.5, "nothing to plot:\nno variant has both a validate and a bench result",
                ha="center", va="center", fontsize=12)
    else:
        for i, row in enumerate(rows):
            for j, p in enumerate(row):
                ax = fig.add_subplot(nrows, ncols, i * ncols + j + 1)
                _draw(ax, p)
    buf = _io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _draw(ax, p: Panel) -> None:
    ax.set_xlabel(p.axis, fontsize=9)
    ax.set_ylabel("fidelity: cosine_mean vs original", fontsize=9)
    what = "latency" if p.metric == "latency" else f"energy, {p.energy_method}"
    ax.set_title(f"fidelity vs {what}\n{p.setting}", fontsize=9)
    ax.grid(True, alpha=0.3)
    if not p.points:
        ax.text(0.5, 0.5, "no variant with fidelity and this figure", transform=ax.transAxes, ha="center", va="center")
        return
    for q in p.points:
        orig = q["role"] == "original"
        color = "black" if orig else ("tab:green" if q["pareto"] else "tab:blue")
        if "band" in q:
            ax.errorbar([q["x"]], [q["y"]], xerr=[[q["x"] - q["band"]["low"]], [q["band"]["high"] - q["x"]]],
                        fmt="none", ecolor=color, alpha=0.4, capsize=3)
        ax.scatter([q["x"]], [q["y"]], s=60, marker="*" if orig else "o", color=color, zorder=3,
                   edgecolors="black" if q["pareto"] else "none")
        ax.annotate(q["name"], (q["x"], q["y"]), textcoords="offset points", xytext=(5, 4), fontsize=8)
    front = sorted((q for q in p.points if q["pareto"]), key=lambda q: q["x"])
    if len(front) > 1:
        ax.plot([q["x"] for q in front], [q["y"] for q in front], "--", color="tab:green", alpha=0.6, zorder=2)
    if p.energy_method == "estimated":
        ax.text(0.01, 0.01, "estimated: CPU-seconds x assumed W/core (bars: band)", transform=ax.transAxes,
                fontsize=7, color="dimgray", va="bottom")
    ax.margins(x=0.15, y=0.1)
