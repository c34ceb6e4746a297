"""pareto.png: decode speed against quality for every trial in a lock, the Pareto front and the quality
budget marked, the winner and the baselines labelled. Drawn headless (Agg) from the lock alone."""

from __future__ import annotations

import io

from haqa.bundle.lock import Lock
from haqa.bundle.lock.records import Contender, TrialRecord

KLD_FLOOR = 1e-4  # a log axis cannot show 0; KLDs below this are drawn at it


def _x(rec: TrialRecord | Contender, synthetic: bool) -> float | None:
    """Where a trial or contender sits across: its peak memory (MiB) for synthetic weights, else its KLD."""
    if synthetic:
        peak = rec.bench.peak_rss_bytes if isinstance(rec, TrialRecord) else rec.peak_rss_bytes
        return (peak or 0) / 2**20 or None
    return max(rec.quality.kld_mean, KLD_FLOOR) if rec.quality else None


def pareto_png(lock: Lock) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    synthetic = lock.synthetic
    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=110)
    _trials(ax, lock, synthetic)
    winner = lock.metrics
    wx = _x(winner, synthetic)
    if wx is not None:
        ax.scatter([wx], [winner.bench.decode.mean], s=160, facecolors="none", edgecolors="tab:red",
                   lw=2, label=f"chosen: {winner.name}", zorder=4)
    _baselines(ax, lock, synthetic)
    _axes(ax, lock, synthetic)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})  # no timestamp: same lock, same bytes
    plt.close(fig)
    return buf.getvalue()


def _trials(ax, lock: Lock, synthetic: bool) -> None:
    """Every measured trial, within the budget or not, and the Pareto front through them."""
    trials = [t for t in lock.trials if t.status == "ok"]
    points = [(_x(t, synthetic), t.bench.decode.mean, t) for t in trials if _x(t, synthetic) is not None]
    inside = [(x, y) for x, y, t in points if t.within_budget]
    outside = [(x, y) for x, y, t in points if not t.within_budget]
    if inside:
        ax.scatter(*zip(*inside, strict=False), s=28, color="tab:blue", label="trial within the budget", zorder=3)
    if outside:
        ax.scatter(*zip(*outside, strict=False), s=28, color="tab:gray", marker="x", label="trial over the budget",
                   zorder=3)
    front = sorted(((x, y) for x, y, t in points if _on_front(x, y, points)), key=lambda p: p[0])
    if front:
        ax.step([p[0] for p in front], [p[1] for p in front], where="post", color="tab:orange", lw=1.5,
                marker="o", markerfacecolor="none", markersize=10, label="Pareto front", zorder=2)


def _baselines(ax, lock: Lock, synthetic: bool) -> None:
    """The contenders of the side-by-side comparison other than the chosen one, labelled."""
    for label, side in (lock.comparison.contenders if lock.comparison else {}).items():
        if label == "tuned" or not side.measured:
            continue
        bx = _x(side, synthetic)
        if bx:
            ax.scatter([bx], [side.decode.median], s=70, marker="D", color="tab:green", zorder=4)
            ax.annotate(f"{label} ({side.quant})", (bx, side.decode.median), textcoords="offset points",
                        xytext=(6, -10), fontsize=8, color="tab:green")


def _axes(ax, lock: Lock, synthetic: bool) -> None:
    budget = lock.recipe.quality_budget.max_kld
    if synthetic:
        ax.set_xlabel("peak resident host memory of the benchmark (MiB, measured; GPU memory not included)")
        ax.set_title(f"{lock.recipe.name} on {lock.target.name}: speed against memory "
                     "(synthetic weights: no quality)", fontsize=10)
    else:
        ax.set_xscale("log")
        ax.axvline(budget, color="tab:red", ls="--", lw=1, label=f"quality budget (KLD {budget})")
        ax.set_xlabel(f"mean KL divergence against the source (log; lower is better; below {KLD_FLOOR:g} drawn at it)")
        ax.set_title(f"{lock.recipe.name} on {lock.target.name}: speed against quality", fontsize=10)
    ax.set_ylabel("decode tokens/s (measured mean)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="best")


def _on_front(x: float, y: float, points) -> bool:
    """Not dominated: nothing at least as fast with at most the same x (KLD or memory), strictly better in one."""
    return not any(y2 >= y and x2 <= x and (y2 > y or x2 < x) for x2, y2, _ in points)
