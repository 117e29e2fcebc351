"""Small matplotlib plots for dock widgets: a live loss curve and a score histogram with a threshold.

Both are Qt widgets (matplotlib's Qt canvas) that only draw what they are given; they are
reused by every widget that trains something or thresholds scores. Nothing here computes
more than a histogram of numbers it is handed.
"""

from __future__ import annotations

import numpy as np
from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure

__all__ = ["LossPlot", "ScoreHistogram"]


def _figure(height: float) -> Figure:
    fig = Figure(figsize=(3.2, height), dpi=90, layout="constrained")
    fig.patch.set_alpha(0.0)
    return fig


def _style(ax) -> None:
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.tick_params(labelsize=7)


class LossPlot(FigureCanvasQTAgg):
    """A loss curve that grows while a job trains.

    ``add(step, loss)`` appends a point; the canvas redraws at most every ``redraw_every``
    points (and on :meth:`flush`), so thousands of steps stay cheap. ``steps`` and ``losses``
    hold what was added (a continued training run continues the x axis).
    """

    def __init__(self, *, title: str = "training loss", redraw_every: int = 5, parent=None):
        self.figure = _figure(1.6)
        super().__init__(self.figure)
        if parent is not None:
            self.setParent(parent)
        self.ax = self.figure.add_subplot(111)
        _style(self.ax)
        self.ax.set_title(title, fontsize=8)
        self.ax.set_xlabel("iteration", fontsize=7)
        (self._line,) = self.ax.plot([], [], lw=0.8, color="#1f77b4")
        (self._smooth,) = self.ax.plot([], [], lw=1.4, color="#ff7f0e")
        self.redraw_every = max(1, int(redraw_every))
        self.steps: list[float] = []
        self.losses: list[float] = []
        self.setMinimumHeight(120)

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


class ScoreHistogram(FigureCanvasQTAgg):
    """Histogram of scores with a vertical threshold line.

    :meth:`set_scores` redraws the bars (scores below the threshold grey, above coloured);
    :meth:`set_threshold` only moves the line and recolours bars, so dragging a slider is cheap.
    """

    def __init__(self, *, title: str = "scores", bins: int = 40, parent=None):
        self.figure = _figure(1.5)
        super().__init__(self.figure)
        if parent is not None:
            self.setParent(parent)
        self.ax = self.figure.add_subplot(111)
        _style(self.ax)
        self.ax.set_title(title, fontsize=8)
        self.bins = int(bins)
        self._bars = None
        self._edges = np.zeros(0)
        self.threshold = 0.0
        self._line = self.ax.axvline(0.0, color="#d62728", lw=1.2)
        self.counts = np.zeros(0, dtype=int)
        self.setMinimumHeight(110)

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
