"""Matplotlib set-up shared by the benchmark plots (imported only when a plot is asked for)."""

from __future__ import annotations

from pathlib import Path


def figure(columns: int = 1):
    """A figure and its axes with the non-interactive backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")  # headless machines and CI have no display
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, columns, figsize=(6.4 * columns, 4.8), squeeze=False)
    return fig, axes[0] if columns > 1 else axes[0][0]


def save(fig, axes, path: str | Path) -> None:
    """Grid, a legend (right of the axes when long), PNG at ``path``; the figure is closed
    after."""
    import matplotlib.pyplot as plt

    outside = False
    for axis in axes if hasattr(axes, "__len__") else [axes]:
        axis.grid(True, which="both", alpha=0.3)
        entries = len(axis.get_legend_handles_labels()[0])
        if entries > 8:  # a long legend would hide curves: put it right of the axes
            axis.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
            outside = True
        elif entries:
            axis.legend(fontsize="small")
    if outside:  # widen the figure by the legend's column, keeping the axes' size
        width, height = fig.get_size_inches()
        fig.set_size_inches(width + 2.6, height)
    fig.tight_layout()
    fig.savefig(Path(path), format="png", dpi=120, bbox_inches="tight" if outside else None)
    plt.close(fig)
