"""Where pivotal tokens fall along their solutions: the pivot-position plot beside a pairs file."""

from __future__ import annotations

from pathlib import Path

from phiforge.files import write_with
from phiforge.posttrain.pts.search import ProblemResult


def plot_pivot_positions(results: list[ProblemResult], path: Path) -> None:
    """Histogram of where pivots fall along their solutions (position / solution length)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for kind in ("correct", "incorrect"):
        where = [pv["position"] / pv["length"] for r in results for pv in r.pivots if pv["trace"] == kind]
        ax.hist(where, bins=20, range=(0, 1), alpha=0.6, label=f"{kind} solutions ({len(where)})")
    ax.set_xlabel("relative position of the pivotal token in the solution")
    ax.set_ylabel("pivots")
    ax.set_title("Where pivotal tokens fall")
    ax.legend()
    fig.tight_layout()
    write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)
