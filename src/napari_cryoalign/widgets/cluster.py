"""Dock widget "Cluster": sort particles into classes (joint alignment + clustering, or classical PCA).

Inputs: a points layer on a tomogram image layer (boxes are cut around the points) or a
subtomogram STAR file; the number of classes (or "estimate"); the method. The job runs in
the background (Run / Cancel, progress); while it iterates, a 2-D embedding scatter plot
coloured by class is redrawn, the class averages appear as image layers, and each point of
the layer gets its class and confidence in ``features`` (``rlnClassNumber``,
``rlnMaxValueProbDistribution``) and a face colour by class.

"refine rounds" > 0 (or class references given) refines each class on its own after the clustering
(:mod:`napari_cryoalign.backend.cluster.refine`, as ``cryoalign cluster --refine-rounds`` and step 6 of
``cryoalign workflow``): local rounds at the class's own resolution and half-set averages; a class that
stays poor gets an ab-initio initial model of its own particles ("initial model for poor classes"); a
user's map of an expected species ("class references", any box and voxel size) seeds the class it fits.

The plot and the points layer are linked both ways: a lasso (drag) or a click (shift adds)
in the plot selects those particles in the layer (``layer.selected_data``); selecting points
in the viewer highlights them in the plot. A class can be merged into another or discarded;
"Export STAR" writes the particles with ``rlnClassNumber`` (1-based), poses and confidence
(discarded ones left out) and one MRC per remaining class average. All computation is in
:mod:`napari_cryoalign.backend.cluster`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    PushButton,
    SpinBox,
)
from matplotlib.path import Path as MplPath
from matplotlib.widgets import LassoSelector

from .._layers import class_colors
from ..backend.jobs import Job, Partial
from ._base import JobWidget, add_or_update_layer, handler
from ._particles import SCORE, ParticleInputs
from ._plots import PlotCanvas

METHODS = ("joint", "classical")
CLASS = "rlnClassNumber"
CONFIDENCE = "rlnMaxValueProbDistribution"
DISCARDED = -1


class EmbeddingPlot(PlotCanvas):
    """2-D scatter of the particles coloured by class; lasso / click selection; highlighted selection.

    ``set_points(xy, classes)`` redraws; ``select(indices)`` highlights (and, unless
    ``notify=False``, calls ``on_select(sorted indices)``); ``select_polygon(vertices)`` and
    ``select_nearest(x, y, add=False)`` are what the lasso and a click do.
    """

    def __init__(self, *, on_select=None, parent=None):
        super().__init__(height=2.6, min_height=180, title="embedding (drag: lasso, click: pick)", parent=parent)
        self.on_select = on_select
        self.xy = np.zeros((0, 2))
        self.classes = np.zeros(0, dtype=int)
        self.selected: set[int] = set()
        self._scatter = None
        self._highlight = self.ax.scatter([], [], s=70, facecolors="none", edgecolors="#d62728", linewidths=1.4)
        self.lasso = LassoSelector(self.ax, self._lasso_done)

    def set_points(self, xy, classes) -> None:
        self.xy = np.asarray(xy, dtype=float).reshape(-1, 2)
        self.classes = np.asarray(classes, dtype=int).reshape(-1)
        if self._scatter is not None:
            self._scatter.remove()
        colors = np.where(self.classes[:, None] == DISCARDED, "#bbbbbb",
                          class_colors(np.maximum(self.classes, 0) + 1)[:, None])[:, 0]
        self._scatter = self.ax.scatter(self.xy[:, 0], self.xy[:, 1], c=list(colors), s=18, linewidths=0)
        if len(self.xy):
            lo, hi = self.xy.min(0), self.xy.max(0)
            pad = 0.08 * np.maximum(hi - lo, 1e-6)
            self.ax.set_xlim(lo[0] - pad[0], hi[0] + pad[0])
            self.ax.set_ylim(lo[1] - pad[1], hi[1] + pad[1])
        self.selected = {i for i in self.selected if i < len(self.xy)}
        self._draw_selection()

    def select(self, indices, *, notify: bool = True) -> None:
        self.selected = {int(i) for i in indices if 0 <= int(i) < len(self.xy)}
        self._draw_selection()
        if notify and self.on_select is not None:
            self.on_select(sorted(self.selected))

    def select_polygon(self, vertices) -> list[int]:
        """Select the particles inside a polygon ``[(x, y), ...]`` in data coordinates."""
        if len(self.xy) == 0 or len(vertices) < 3:
            return []
        inside = np.flatnonzero(MplPath(np.asarray(vertices, dtype=float)).contains_points(self.xy))
        self.select(inside)
        return inside.tolist()

    def select_nearest(self, x: float, y: float, *, add: bool = False) -> int | None:
        """Select the particle nearest to ``(x, y)`` (data coordinates); ``add`` keeps the current selection."""
        if len(self.xy) == 0:
            return None
        span = np.maximum(self.xy.max(0) - self.xy.min(0), 1e-9)
        d = np.linalg.norm((self.xy - [x, y]) / span, axis=1)
        i = int(np.argmin(d))
        self.select((self.selected | {i}) if add else {i})
        return i

    def _lasso_done(self, vertices) -> None:
        verts = np.asarray(vertices, dtype=float)
        if len(verts) < 3 or np.ptp(verts, axis=0).max() < 1e-9 * max(1.0, np.abs(verts).max()):
            mods = getattr(self.lasso, "_state", set())
            self.select_nearest(*verts[0], add="shift" in mods or "add" in mods)
        else:
            self.select_polygon(verts)

    def _draw_selection(self) -> None:
        idx = sorted(self.selected)
        self._highlight.set_offsets(self.xy[idx] if idx else np.zeros((0, 2)))
        self._highlight.set_zorder(3)
        self.draw_idle()


class ClusterWidget(ParticleInputs, JobWidget):
    """Cluster particles (joint or classical), with a linked embedding plot, class averages and edits."""

    job_name = "Cluster"

    def __init__(self, napari_viewer, parent=None):
        super().__init__(napari_viewer, parent)
        particle_inputs = self._make_particle_inputs()
        self.n_classes = SpinBox(label="classes", value=2, min=1, max=50)
        self.estimate = CheckBox(label="estimate number of classes", value=False)
        self.method = ComboBox(label="method", choices=list(METHODS), value="joint")
        self.iterations = SpinBox(label="iterations", value=4, min=1, max=50)
        self.angular_step = FloatSpinBox(label="angular step (°)", value=30.0, min=3.0, max=90.0, step=5.0)
        self.refine_levels = SpinBox(label="refine levels", value=2, min=0, max=4)
        # joint: highest frequency searched (cycles/voxel) on cropped volumes; 0.5 = full box (= the CLI's
        # --search-frequency; backend.cluster.classify.SEARCH_FREQUENCY)
        self.search_frequency = FloatSpinBox(label="search frequency (1/voxel)", value=0.25, min=0.05, max=0.5,
                                             step=0.05)
        # after the clustering: each class refined on its own (= the CLI's --refine-rounds, --ab-initio-below,
        # --class-reference; backend.cluster.refine)
        self.refine_rounds = SpinBox(label="refine rounds (0: off)", value=0, min=0, max=10)
        self.ab_initio = CheckBox(label="initial model for poor classes", value=True)
        self.class_references = FileEdit(label="class references", mode="rm", filter="*.mrc *.map *.rec")
        self.form = Container(widgets=[*particle_inputs, self.n_classes,
                                       self.estimate, self.method, self.iterations, self.angular_step,
                                       self.refine_levels, self.search_frequency, self.refine_rounds,
                                       self.ab_initio, self.class_references, *self._make_tilt_range()])
        self.form_layout.addWidget(self.form.native)
        self.plot = EmbeddingPlot(on_select=self._plot_selected)
        self.form_layout.addWidget(self.plot)
        self.edit_class = ComboBox(label="class", choices=[])
        self.into_class = ComboBox(label="merge into", choices=[])
        self.merge_button = PushButton(text="Merge class")
        self.discard_button = PushButton(text="Discard class")
        self.show_button = PushButton(text="Show class particles")
        self.show_all_button = PushButton(text="Show all")
        self.export_file = FileEdit(label="export to", mode="w", filter="*.star",
                                    value=str(Path.cwd() / "clusters.star"))
        self.export_button = PushButton(text="Export STAR + averages")
        self.after = Container(widgets=[self.edit_class, self.show_button, self.show_all_button, self.into_class,
                                        self.merge_button, self.discard_button, self.export_file,
                                        self.make_overwrite_box(), self.export_button])
        self.form_layout.addWidget(self.after.native)
        self._set_editable(False)
        self.source.changed.connect(self._show_inputs)
        self.estimate.changed.connect(self._show_inputs)
        self.method.changed.connect(self._show_inputs)
        self.refine_rounds.changed.connect(self._show_inputs)
        self.class_references.changed.connect(self._show_inputs)
        self.merge_button.changed.connect(lambda *_: self.merge_class(self._class_of(self.edit_class.value),
                                                                      self._class_of(self.into_class.value)))
        self.discard_button.changed.connect(lambda *_: self.discard_class(self._class_of(self.edit_class.value)))
        self.export_button.changed.connect(self.export)
        self.show_button.changed.connect(lambda *_: self.show_class(self._class_of(self.edit_class.value)))
        self.show_all_button.changed.connect(lambda *_: self.show_class(None))
        self._show_inputs()
        self.pset = None
        self.result = None
        self.classes = None  # (m,) current labels of the kept particles, 0-based, DISCARDED = -1
        self.confidence = None
        self.embedding = None
        self.averages = None
        self.alignment = None
        self.refined = None  # RefinedClasses of the last run with refinement
        self._linked_layer = None
        self._syncing = False

    # -- inputs ----------------------------------------------------------------------------
    def _show_inputs(self, *_):
        self._show_particle_inputs()
        self.n_classes.enabled = not self.estimate.value
        self.search_frequency.visible = self.method.value == "joint"
        self.ab_initio.enabled = self.refine_rounds.value > 0 or bool(self._reference_paths())

    def _reference_paths(self) -> list[Path]:
        value = self.class_references.value
        paths = [value] if isinstance(value, (str, Path)) else list(value or ())
        return [Path(p) for p in paths if str(p) not in ("", ".")]

    def _read_references(self, box: int, voxel: float):
        """The class references at the particles' box and voxel size (None when none is chosen)."""
        from ..backend.cluster.refine import read_class_references

        return read_class_references(self._reference_paths(), voxel_size=voxel, box=box) or None

    def make_job(self) -> Job:
        from ..backend.cluster.classify import cluster_subtomograms_job

        pset = self._load_particles()
        box = pset.box
        mask = self._particle_mask(box)
        k = "estimate" if self.estimate.value else int(self.n_classes.value)
        job = cluster_subtomograms_job(pset.volumes, n_classes=k, method=self.method.value,
                                       particle_masks=mask,
                                       iterations=int(self.iterations.value),
                                       angular_step_deg=float(self.angular_step.value),
                                       refine_levels=int(self.refine_levels.value),
                                       search_frequency=float(self.search_frequency.value),
                                       voxel_size_angstrom=pset.voxel, inside_masks=pset.inside_masks)
        refs = self._read_references(box, pset.voxel)
        if int(self.refine_rounds.value) > 0 or refs:
            job = _cluster_then_refine(job, pset.volumes, particle_masks=mask, inside_masks=pset.inside_masks,
                                       voxel_size_angstrom=pset.voxel, rounds=int(self.refine_rounds.value),
                                       references=refs, ab_initio_below=None if self.ab_initio.value else 0.0)
        self.pset = pset
        self.refined = None
        self.result = self.classes = self.confidence = self.embedding = self.averages = self.alignment = None
        self._set_editable(False)
        self._link_layer(pset.points)
        return job

    # -- live updates ----------------------------------------------------------------------
    def on_partial(self, partial: Partial) -> None:
        if self.pset is None:
            return
        if partial.name == "classes":
            self.classes = np.asarray(partial.value, dtype=int).copy()
        elif partial.name == "confidence":
            self.confidence = np.asarray(partial.value, dtype=float)
        elif partial.name == "embedding":
            self.embedding = np.asarray(partial.value, dtype=float)
        elif partial.name == "averages":
            self.averages = np.asarray(partial.value)
            self._show_averages()
            return
        elif partial.name == "alignment":
            self.alignment = partial.value
            return
        else:
            return
        self._show_classes()

    def on_result(self, result) -> None:
        if hasattr(result, "clusters"):  # RefinedClasses: the clustering after the class refinement
            self.refined, result = result, result.clusters
        self.result = result
        self.classes = np.asarray(result.classes, dtype=int).copy()
        self.confidence = np.asarray(result.confidence, dtype=float)
        self.embedding = np.asarray(result.embedding, dtype=float)
        self.averages = np.asarray(result.averages)
        self.alignment = result.alignment
        self._show_averages()
        self._show_classes()
        self._set_editable(True)
        sizes = ", ".join(f"{c + 1}: {s}" for c, s in enumerate(result.class_sizes))
        msg = f"{len(self.classes)} particles in {result.n_classes} classes ({result.method}); sizes {sizes}"
        if self.refined is not None:
            ab = self.refined.initial_models
            msg += "; refined, half-set FSC 0.143 " + ", ".join(
                f"{c + 1}: {r:.0f} Å" + (" (initial model)" if c in ab and ab[c]["kept"] else "")
                + (f" (reference {self.refined.references[c] + 1})" if c in self.refined.references else "")
                for c, r in enumerate(self.refined.resolutions) if np.isfinite(r))
        skipped = self.pset.skipped if self.pset else []
        if skipped:
            msg += f"; skipped {len(skipped)}: " + "; ".join(f"#{s.row} {s.reason}" for s in skipped[:5])
        self.status.setText(msg)

    def _show_averages(self) -> None:
        v = self.pset.voxel
        for c, avg in enumerate(self.averages):
            name = f"class {c + 1} average"
            if self.classes is not None and len(self.classes) and not np.any(self.classes == c) \
                    and self.result is not None:
                continue
            add_or_update_layer(self.viewer, (np.asarray(avg, np.float32), {"name": name, "scale": (v, v, v),
                                                                            "colormap": "gray"}, "image"))

    def _show_classes(self) -> None:
        if self.classes is None:
            return
        if self.embedding is not None and len(self.embedding) == len(self.classes):
            self.plot.set_points(self.embedding, self.classes)
        layer = self._layer()
        if layer is None:
            return
        n = len(layer.data)
        rows = self.pset.rows
        feats = layer.features.copy() if len(layer.features) == n else None
        import pandas as pd

        if feats is None:
            feats = pd.DataFrame(index=range(n))
        cls = np.zeros(n, dtype=np.int64)  # 0 = no class (skipped or discarded)
        cls[rows] = np.where(self.classes == DISCARDED, 0, self.classes + 1)
        feats[CLASS] = cls
        conf = np.full(n, np.nan)
        if self.confidence is not None and len(self.confidence) == len(rows):
            conf[rows] = self.confidence
        feats[CONFIDENCE] = conf
        if self.embedding is not None and len(self.embedding) == len(rows):
            for j in range(2):
                col = np.full(n, np.nan)
                col[rows] = self.embedding[:, j]
                feats[f"cluster_embedding_{j + 1}"] = col
        if self.alignment is not None and len(self.alignment) == len(rows):
            eul = np.full((n, 3), np.nan)
            eul[rows] = self.alignment.euler_deg
            for j, c in enumerate(("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")):
                feats[c] = eul[:, j]
            sc = np.full(n, np.nan)
            sc[rows] = self.alignment.scores
            feats[SCORE] = sc
        layer.features = feats
        colors = np.where(cls[:, None] == 0, "#bbbbbb", class_colors(np.maximum(cls, 1))[:, None])[:, 0]
        layer.face_color = list(colors)

    # -- the plot <-> layer link -----------------------------------------------------------
    def _layer(self):
        name = self.pset.points if self.pset else None
        if name is None or name not in self.viewer.layers:
            return None
        layer = self.viewer.layers[name]
        return layer if len(layer.data) == len(self.pset.zyx) else None  # the layer changed since the run

    def _link_layer(self, name) -> None:
        if self._linked_layer is not None:
            try:
                self._linked_layer.selected_data.events.items_changed.disconnect(self._layer_selected)
            except (TypeError, ValueError, RuntimeError):
                pass
            self._linked_layer = None
        if name is not None and name in self.viewer.layers:
            self._linked_layer = self.viewer.layers[name]
            self._linked_layer.selected_data.events.items_changed.connect(self._layer_selected)

    def _plot_selected(self, indices) -> None:
        """Plot -> layer: particle indices (rows of the run) -> points selected in the viewer."""
        layer = self._layer()
        if layer is None or self._syncing:
            return
        self._syncing = True
        try:
            layer.selected_data = {int(self.pset.rows[i]) for i in indices}
        finally:
            self._syncing = False

    def _layer_selected(self, *_) -> None:
        """Layer -> plot: highlight the selected points' particles (no echo back)."""
        if self._syncing or self.pset is None or self._linked_layer is None:
            return
        where = {int(r): i for i, r in enumerate(self.pset.rows)}
        chosen = [where[int(j)] for j in self._linked_layer.selected_data if int(j) in where]
        self.plot.select(chosen, notify=False)

    # -- edits -----------------------------------------------------------------------------
    def _set_editable(self, on: bool) -> None:
        for w in (self.merge_button, self.discard_button, self.export_button, self.show_button,
                  self.show_all_button):
            w.enabled = on
        if on and self.classes is not None:
            names = [f"class {c + 1}" for c in sorted(set(self.classes.tolist()) - {DISCARDED})]
            self.edit_class.choices = names
            self.into_class.choices = names

    @staticmethod
    def _class_of(name) -> int | None:
        return None if not name else int(str(name).split()[-1]) - 1

    @handler
    def merge_class(self, source: int, target: int) -> int:
        """Move every particle of class ``source`` (0-based) into ``target``; returns how many moved.

        The moved particles keep their poses against their old average until the next run
        re-aligns them; the target's average is kept as it is.
        """
        if self.classes is None or source is None or target is None or source == target:
            return 0
        moved = int(np.sum(self.classes == source))
        self.classes[self.classes == source] = target
        self._drop_average_layer(source)
        self._show_classes()
        self._set_editable(True)
        self.status.setText(f"merged class {source + 1} into class {target + 1} ({moved} particles)")
        return moved

    @handler
    def discard_class(self, cls: int) -> int:
        """Mark the particles of class ``cls`` (0-based) as discarded (left out of the export); returns how many."""
        if self.classes is None or cls is None:
            return 0
        gone = int(np.sum(self.classes == cls))
        self.classes[self.classes == cls] = DISCARDED
        self._drop_average_layer(cls)
        self._show_classes()
        self._set_editable(True)
        self.status.setText(f"discarded class {cls + 1} ({gone} particles)")
        return gone

    @handler
    def show_class(self, cls: int | None) -> int:
        """Show only the particles of class ``cls`` (0-based) in the points layer, selected there and in the
        plot; None shows every particle again. Returns how many are shown."""
        layer = self._layer()
        if layer is None or self.classes is None:
            return 0
        n = len(layer.data)
        if cls is None:
            layer.shown = np.ones(n, dtype=bool)
            layer.selected_data = set()
            self.plot.select([], notify=False)
            self.status.setText(f"showing all {n} particles")
            return n
        members = np.flatnonzero(self.classes == cls)
        shown = np.zeros(n, dtype=bool)
        shown[np.asarray(self.pset.rows)[members]] = True
        layer.shown = shown
        self._syncing = True
        try:
            layer.selected_data = {int(r) for r in np.asarray(self.pset.rows)[members]}
        finally:
            self._syncing = False
        self.plot.select(members.tolist(), notify=False)
        if f"class {cls + 1} average" in self.viewer.layers:
            self.viewer.layers.selection.active = layer
        self.status.setText(f"class {cls + 1}: {len(members)} particles shown")
        return int(len(members))

    def _drop_average_layer(self, cls: int) -> None:
        name = f"class {cls + 1} average"
        if name in self.viewer.layers:
            self.viewer.layers.remove(name)

    def input_files(self) -> list[Path]:
        star = self.star.value if self.source.value != "points on tomogram" else None
        return [] if star is None or str(star) in ("", ".") else [Path(star)]

    @handler
    def export(self, *_) -> Path | None:
        """Write the kept particles with ``rlnClassNumber`` (1-based), poses and confidence, plus the class averages
        as ``<stem>_class_NNN.mrc`` beside the STAR file."""
        from ..io import write_mrc

        if self.classes is None or self.alignment is None or self.pset is None:
            return None
        out = Path(self.export_file.value)
        keep = np.flatnonzero(self.classes != DISCARDED)
        extra = {CLASS: self.classes[keep] + 1, CONFIDENCE: np.asarray(self.confidence)[keep]}
        classes = sorted(set(self.classes[keep].tolist()))
        maps = {c: out.with_name(f"{out.stem}_class_{c + 1:03d}.mrc") for c in classes}

        def write(overwrite: bool) -> Path:
            path = self.pset.write_star(out, self.alignment, keep=keep, extra_columns=extra, overwrite=overwrite)
            for c, where in maps.items():
                write_mrc(where, self.averages[c], voxel_size=self.pset.voxel, overwrite=overwrite)
            return path

        return self.export_files([out, *maps.values()], write, done=f"wrote {out} and {len(maps)} class averages")


def _cluster_then_refine(cluster_job, volumes, **refine_options):
    """The clustering job, then :func:`..backend.cluster.refine.refine_classes_job` on its result; the
    clustering's events are forwarded as they are, the refinement's after "refine: ". Returns RefinedClasses."""
    from ..backend.cluster.refine import refine_classes_job
    from ..backend.jobs import subjob

    clusters = yield from subjob(cluster_job)
    return (yield from subjob(refine_classes_job(volumes, clusters, **refine_options), prefix="refine"))
