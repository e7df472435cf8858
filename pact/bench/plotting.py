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
    """Grid, legend outside the data, PNG at ``path``; the figure is closed after."""
    import matplotlib.pyplot as plt

    for axis in axes if hasattr(axes, "__len__") else [axes]:
        axis.grid(True, which="both", alpha=0.3)
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(Path(path), format="png", dpi=120)
    plt.close(fig)
