"""Small matplotlib plots for dock widgets, all on one base (:class:`PlotCanvas`).

A live loss curve, a score histogram with a threshold, the FSC curve of half maps, and the
viewing directions on a Mollweide map. They are Qt widgets (matplotlib's Qt canvas) that only
draw what they are given; nothing here computes more than a histogram of numbers it is handed.
"""

from __future__ import annotations

import numpy as np
from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure

__all__ = ["FSCPlot", "LossPlot", "OrientationPlot", "PlotCanvas", "ScoreHistogram"]


def _figure(height: float) -> Figure:
    fig = Figure(figsize=(3.2, height), dpi=90, layout="constrained")
    fig.patch.set_alpha(0.0)
    return fig


def _style(ax) -> None:
    for side in ("top", "right"):
        if side in ax.spines:
            ax.spines[side].set_visible(False)
    ax.tick_params(labelsize=7)


class PlotCanvas(FigureCanvasQTAgg):
    """A matplotlib canvas for a dock widget: one axes (``self.ax``), small fonts, a minimum height.

    Parameters
    ----------
    height : figure height in inches (the width is 3.2)
    min_height : minimum height of the widget in pixels
    title : axes title, or None
    projection : matplotlib projection of the axes (e.g. "mollweide"), or None
    """

    def __init__(self, *, height: float, min_height: int, title: str | None = None, projection: str | None = None,
                 parent=None):
        self.figure = _figure(height)
        super().__init__(self.figure)
        if parent is not None:
            self.setParent(parent)
        self.ax = self.figure.add_subplot(111, projection=projection)
        _style(self.ax)
        if title:
            self.ax.set_title(title, fontsize=8)
        self.setMinimumHeight(min_height)


class LossPlot(PlotCanvas):
    """A loss curve that grows while a job trains.

    ``add(step, loss)`` appends a point; the canvas redraws at most every ``redraw_every``
    points (and on :meth:`flush`), so thousands of steps stay cheap. ``steps`` and ``losses``
    hold what was added (a continued training run continues the x axis).
    """

    def __init__(self, *, title: str = "training loss", redraw_every: int = 5, parent=None):
        super().__init__(height=1.6, min_height=120, title=title, parent=parent)
        self.ax.set_xlabel("iteration", fontsize=7)
        (self._line,) = self.ax.plot([], [], lw=0.8, color="#1f77b4")
        (self._smooth,) = self.ax.plot([], [], lw=1.4, color="#ff7f0e")
        self.redraw_every = max(1, int(redraw_every))
        self.steps: list[float] = []
        self.losses: list[float] = []

    def clear(self) -> None:
        self.steps.clear()
        self.losses.clear()
        self.flush()

    def add(self, step: float, loss: float) -> None:
        self.steps.append(float(step))
        self.losses.append(float(loss))
        if len(self.steps) % self.redraw_every == 0:
            self.flush()

    def flush(self) -> None:
        """Redraw with everything added so far."""
        x = np.asarray(self.steps)
        y = np.asarray(self.losses)
        self._line.set_data(x, y)
        if y.size >= 5:
            k = max(2, y.size // 20)
            sm = np.convolve(y, np.ones(k) / k, mode="valid")
            self._smooth.set_data(x[k - 1 :], sm)
        else:
            self._smooth.set_data([], [])
        if y.size:
            finite = y[np.isfinite(y)]
            lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
            pad = 0.05 * (hi - lo) if hi > lo else 0.5
            self.ax.set_xlim(float(x.min()), float(max(x.max(), x.min() + 1)))
            self.ax.set_ylim(lo - pad, hi + pad)
        self.draw_idle()


class ScoreHistogram(PlotCanvas):
    """Histogram of scores with a vertical threshold line.

    :meth:`set_scores` redraws the bars (scores below the threshold grey, above coloured);
    :meth:`set_threshold` only moves the line and recolours bars, so dragging a slider is cheap.
    """

    def __init__(self, *, title: str = "scores", bins: int = 40, parent=None):
        super().__init__(height=1.5, min_height=110, title=title, parent=parent)
        self.bins = int(bins)
        self._bars = None
        self._edges = np.zeros(0)
        self.threshold = 0.0
        self._line = self.ax.axvline(0.0, color="#d62728", lw=1.2)
        self.counts = np.zeros(0, dtype=int)

    def set_scores(self, scores, *, value_range: tuple[float, float] | None = None) -> None:
        s = np.asarray(scores, dtype=np.float64)
        s = s[np.isfinite(s)]
        if self._bars is not None:
            self._bars.remove()
            self._bars = None
        if value_range is None:
            value_range = (float(s.min()), float(s.max())) if s.size else (0.0, 1.0)
        lo, hi = value_range
        if hi <= lo:
            hi = lo + 1.0
        self.counts, self._edges = np.histogram(s, bins=self.bins, range=(lo, hi))
        widths = np.diff(self._edges)
        self._bars = self.ax.bar(self._edges[:-1], np.maximum(self.counts, 0), width=widths, align="edge",
                                 linewidth=0)
        self.ax.set_xlim(lo, hi)
        self.ax.set_ylim(0.0, max(1.0, float(self.counts.max()) * 1.1) if self.counts.size else 1.0)
        self.set_threshold(self.threshold)

    def set_threshold(self, threshold: float) -> None:
        self.threshold = float(threshold)
        self._line.set_xdata([self.threshold, self.threshold])
        if self._bars is not None:
            for patch, left in zip(self._bars.patches, self._edges[:-1]):
                patch.set_facecolor("#1f77b4" if left + 0.5 * (self._edges[1] - self._edges[0]) >= self.threshold
                                    else "#bbbbbb")
        self.draw_idle()


class FSCPlot(PlotCanvas):
    """The FSC curve of two half maps with the 0.143 and 0.5 lines, redrawn on every update."""

    def __init__(self, parent=None):
        super().__init__(height=1.8, min_height=130, parent=parent)
        self.report = None

    def show_report(self, report) -> None:
        """Draw an ``FSCReport`` (curve against 1/Å, resolutions in the title)."""
        self.report = report
        ax = self.ax
        ax.clear()
        freq = np.asarray(report.curve.frequency) / report.voxel_size_angstrom
        ax.plot(freq, report.curve.fsc, "-", lw=1.2)
        ax.axhline(0.143, color="grey", ls="--", lw=0.7)
        ax.axhline(0.5, color="grey", ls=":", lw=0.7)
        ax.set_ylim(-0.1, 1.05)
        ax.set_xlabel("1/Å", fontsize=7)
        ax.set_title(f"FSC: {report.resolution_0143:.1f} Å (0.143), {report.resolution_05:.1f} Å (0.5)", fontsize=8)
        _style(ax)
        self.draw_idle()


class OrientationPlot(PlotCanvas):
    """Viewing directions (``Aᵀ e_z``) on a Mollweide map, coloured by confidence."""

    def __init__(self, parent=None):
        super().__init__(height=1.9, min_height=140, projection="mollweide", parent=parent)
        self.n_points = 0

    def show(self, rotations, confidence) -> None:
        """Draw the viewing directions of ``(n, 3, 3)`` rotations, coloured by ``(n,)`` confidence."""
        d = np.asarray(rotations)[:, 2, :]  # third row of A = viewing direction in the reference frame
        lon = np.arctan2(d[:, 1], d[:, 0])
        lat = np.arcsin(np.clip(d[:, 2], -1, 1))
        self.ax.clear()
        self.ax.scatter(lon, lat, c=np.asarray(confidence), s=3, cmap="viridis")
        self.ax.set_title("viewing directions (colour: confidence)", fontsize=8)
        self.ax.tick_params(labelsize=6)
        self.n_points = len(lon)
        self.draw_idle()
