"""Plots are optional: matplotlib is the ``plot`` extra. A PNG that cannot be drawn is skipped with a one-line
warning and every other output is still written."""
from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

from kvi_engine.utils.atomic import atomic_write_bytes
from kvi_engine.utils.extras import MissingExtra, require


class PlotSkipped(UserWarning):
    """A PNG was not drawn because matplotlib (the ``plot`` extra) is missing."""


def pyplot(what: str):
    """``matplotlib.pyplot`` on the non-interactive Agg backend, or :class:`MissingExtra` naming ``what``."""
    matplotlib = require("matplotlib", "plot", what)
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save_png(fig, path: str | os.PathLike, dpi: int = 110) -> Path:
    """Write ``fig`` to ``path`` atomically and close it."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def plot_or_skip(draw, *args, **kwargs) -> bool:
    """``draw(*args, **kwargs)``; False (and a :class:`PlotSkipped` warning) when matplotlib is missing."""
    try:
        draw(*args, **kwargs)
    except MissingExtra as e:
        warnings.warn(f"{e} (the PNG was skipped; every other file was written)", PlotSkipped, stacklevel=2)
        return False
    return True
