"""Dock widget "Markers & deformation": SparseAlign on a tilt-series layer, with live updates.

Thin: it collects parameters, runs :func:`napari_cryoalign.backend.markers.find.find_markers_job`
through :class:`JobRunner`, and shows what the job yields:

* ``markers`` -> a points layer on every tilt image (projected, deformed centres; features:
  marker, weight, x/y/z in nm) and the 3D positions in a small reconstruction-space plot
  (x-y and x-z) inside the widget;
* ``loss`` -> the loss plot; ``deformation`` -> the vectors layer and the |D| image.

Result: the deformation at the chosen time as a vectors layer on a grid (the apparent
shift in the image acquired at that time, placed on that image) and ``|D|`` (nm) as an
image; the residual (data minus forward model) as an image layer per tilt; a table of the
fitted coefficients; a weight threshold that hides weak markers (and leaves them out of
the export); export of markers (STAR + IMOD point files) and the deformation (JSON).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from magicgui.widgets import (
    ComboBox,
    Container,
    FileEdit,
    FloatSlider,
    FloatSpinBox,
    LineEdit,
    PushButton,
    SpinBox,
)
from qtpy.QtWidgets import QLabel, QTableWidget, QTableWidgetItem

from .._layer_geometry import layer_array, layer_voxel_size, plugin_metadata, tomogram_name
from ..backend.jobs import Job, Partial
from ._base import JobWidget, add_or_update_layer, handler

POINTS = "markers"
VECTORS = "deformation vectors"
MAGNITUDE = "deformation |D| (nm)"
RESIDUAL = "marker residual"


def width_text(info: dict) -> str:
    """``marker sigma 15.3 nm (estimated; nominal 5 nm)`` from a ``Partial("marker_width", ...)`` value."""
    text = f"marker sigma {float(info['sigma_nm']):.3g} nm ({info.get('source', 'given')}"
    est = info.get("estimate") or {}
    if info.get("source") == "estimated":
        text += f" from {est.get('n_blobs')} beads"
    elif est.get("source") == "estimated":
        text += f"; measured {float(est['sigma_nm']):.3g} nm"
    if info.get("nominal_sigma_nm") is not None:
        text += f"; nominal {float(info['nominal_sigma_nm']):.3g} nm"
    return text + ")"


class MarkersWidget(JobWidget):
    """Find gold markers and the beam-induced deformation of a tilt series (SparseAlign)."""

    job_name = "Markers & deformation"

    def __init__(self, napari_viewer, parent=None):
        super().__init__(napari_viewer, parent)
        self.layer = ComboBox(label="tilt series", choices=self._image_layers)
        self.tlt = FileEdit(label="angles (.tlt)", mode="r", filter="*.tlt *.rawtlt *.txt", value="")
        self.order = FileEdit(label="acquisition order (optional)", mode="r", value="")
        self.bead = FloatSpinBox(label="bead diameter (nm)", value=10.0, min=0.1, max=1000.0, step=1.0)
        self.degree = SpinBox(label="deformation degree", value=2, min=0, max=5)
        self.levels = LineEdit(label="levels", value="auto")
        self.thickness = FloatSpinBox(label="thickness (nm, 0 = auto)", value=0.0, min=0.0, max=5000.0, step=10.0)
        self.sigma = FloatSpinBox(label="marker sigma (nm, 0 = measured)", value=0.0, min=0.0, max=500.0, step=1.0)
        self.preprocess = ComboBox(label="pre-processing", choices=["anscombe", "log", "none", "off"], value="anscombe")
        self.time = FloatSlider(label="time t", value=1.0, min=0.0, max=1.0, step=0.05)
        self.arrow_scale = FloatSpinBox(label="arrow scale", value=1.0, min=0.1, max=100.0, step=0.5)
        self.threshold = FloatSlider(label="min weight", value=0.0, min=0.0, max=1.0, step=0.05)
        self.out_dir = FileEdit(label="export to", mode="d", value=str(Path.cwd() / "markers_out"))
        self.make_overwrite_box()
        self.export_button = PushButton(text="Export markers + deformation")
        self.export_button.enabled = False
        self.form = Container(widgets=[self.layer, self.tlt, self.order, self.bead, self.degree, self.levels,
                                       self.thickness, self.sigma, self.preprocess, self.time, self.arrow_scale,
                                       self.threshold, self.out_dir, self.overwrite, self.export_button])
        self.form_layout.addWidget(self.form.native)
        self.width_label = QLabel("marker width: measured when the job runs (or the marker sigma given)")
        self.width_label.setWordWrap(True)
        self.form_layout.addWidget(self.width_label)
        self._make_plots()
        self.table = QTableWidget(0, 4)
        self.table.setHorizontalHeaderLabels(["component", "term", "t power", "nm"])
        self.table.setMinimumHeight(120)
        self.form_layout.addWidget(self.table)
        self.result = None
        self._geometry = None
        self._scale = (1.0, 1.0, 1.0)
        self._losses = np.zeros(0)
        self.time.changed.connect(self._show_deformation_result)
        self.arrow_scale.changed.connect(self._show_deformation_result)
        self.threshold.changed.connect(self._apply_threshold)
        self.export_button.changed.connect(self.export)
        self.viewer.layers.events.inserted.connect(self._reset_choices)
        self.viewer.layers.events.removed.connect(self._reset_choices)

    # -- helpers -----------------------------------------------------------------------------
    def _image_layers(self, *_):
        return [layer.name for layer in self.viewer.layers if layer._type_string == "image" and layer.ndim == 3
                and layer.name not in (RESIDUAL,)]

    def _reset_choices(self, *_):
        self.layer.reset_choices()

    def _make_plots(self):
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.figure = Figure(figsize=(4, 3.2), tight_layout=True)
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(240)
        self.ax_loss = self.figure.add_subplot(2, 1, 1)
        self.ax_xy = self.figure.add_subplot(2, 2, 3)
        self.ax_xz = self.figure.add_subplot(2, 2, 4)
        self.form_layout.addWidget(self.canvas)

    def _path(self, edit) -> str | None:
        v = str(edit.value).strip()
        return v if v and v != "." and Path(v).is_file() else None

    def input_files(self) -> list[Path]:
        return [Path(p) for p in (self._path(self.tlt), self._path(self.order)) if p is not None]

    # -- job ---------------------------------------------------------------------------------
    def make_job(self) -> Job:
        from ..backend.markers.find import find_markers_job
        from ..errors import InputError
        from ..io import read_tlt
        from ..io.tilt import read_acquisition_order

        name = self.layer.value
        if not name or name not in self.viewer.layers:
            raise InputError("a tilt-series image layer (n_tilts, y, x)", field="tilt series", got=name)
        layer = self.viewer.layers[name]
        data = np.asarray(layer_array(layer))
        meta = plugin_metadata(layer.metadata)
        tlt = self._path(self.tlt)
        if tlt is not None:
            angles = read_tlt(tlt, n_tilts=data.shape[0])
        elif "tilt_angles_deg" in meta:
            angles = np.asarray(meta["tilt_angles_deg"], dtype=np.float64)
        else:
            raise InputError("a .tlt file with one angle per image (chosen here, or <stack name>.tlt beside the "
                             "stack's file)", field="angles", got="none")
        order_file = self._path(self.order)
        if order_file is not None:
            order = read_acquisition_order(order_file, n_tilts=data.shape[0])
        else:
            order = (meta.get("truth") or {}).get("acquisition_order")
        pixel_nm = layer_voxel_size(layer) / 10.0
        self._scale = tuple(float(s) for s in layer.scale)
        self._data_name = tomogram_name(layer)
        self._losses = np.zeros(0)
        self._geometry = None
        self._order = order
        return find_markers_job(
            data, angles, bead_diameter_nm=float(self.bead.value), pixel_size_nm=pixel_nm, acquisition_order=order,
            sigma_nm=float(self.sigma.value) or None, thickness_nm=float(self.thickness.value) or None,
            preprocess=None if self.preprocess.value == "off" else self.preprocess.value,
            degree=int(self.degree.value), levels=str(self.levels.value).strip() or "auto",
        )

    # -- live updates -------------------------------------------------------------------------
    def on_partial(self, partial: Partial) -> None:
        if partial.name == "geometry":
            self._geometry = partial.value
        elif partial.name == "marker_width":
            self.width_label.setText(width_text(partial.value))
        elif partial.name == "markers":
            snap = partial.value
            self._show_markers(snap.positions_nm, snap.weights, snap.projected_px)
        elif partial.name == "loss":
            self._losses = np.asarray(partial.value)
            self._plot_loss()
        elif partial.name == "deformation":
            self._show_deformation(partial.value, self._geometry)

    def _points_layer_data(self, positions_nm, weights, projected_px):
        q = np.asarray(projected_px)
        n_t, m = q.shape[:2]
        pts = np.column_stack([np.repeat(np.arange(n_t), m), q[:, :, 1].ravel(), q[:, :, 0].ravel()])
        w = np.asarray(weights, dtype=np.float64)
        p = np.asarray(positions_nm, dtype=np.float64).reshape(-1, 3)
        feats = pd.DataFrame({"marker": np.tile(np.arange(m), n_t), "weight": np.tile(w, n_t),
                              "x_nm": np.tile(p[:, 0], n_t), "y_nm": np.tile(p[:, 1], n_t),
                              "z_nm": np.tile(p[:, 2], n_t)})
        return pts, feats

    def _show_markers(self, positions_nm, weights, projected_px):
        pts, feats = self._points_layer_data(positions_nm, weights, projected_px)
        layer = add_or_update_layer(self.viewer, (pts, {"name": POINTS, "scale": self._scale, "features": feats,
                                                        "size": 4.0, "face_color": "transparent",
                                                        "border_color": "cyan", "border_width": 0.15}, "points"))
        layer.shown = feats["weight"].to_numpy() >= float(self.threshold.value)
        p = np.asarray(positions_nm).reshape(-1, 3)
        for ax, (i, j), lab in ((self.ax_xy, (0, 1), "y"), (self.ax_xz, (0, 2), "z")):
            ax.clear()
            ax.scatter(p[:, i], p[:, j], c=np.asarray(weights), s=12, cmap="viridis", vmin=0, vmax=1)
            ax.set_xlabel("x (nm)", fontsize=7)
            ax.set_ylabel(f"{lab} (nm)", fontsize=7)
            ax.tick_params(labelsize=6)
        self.canvas.draw_idle()

    def _plot_loss(self):
        self.ax_loss.clear()
        if self._losses.size:
            self.ax_loss.semilogy(np.arange(1, self._losses.size + 1), np.maximum(self._losses, 1e-12), "o-", ms=3)
        self.ax_loss.set_xlabel("ADCG step", fontsize=7)
        self.ax_loss.set_ylabel("loss", fontsize=7)
        self.ax_loss.tick_params(labelsize=6)
        self.canvas.draw_idle()

    def _show_deformation(self, deformation, geometry):
        if geometry is None or deformation is None:
            return
        from ..backend.markers.fields import deformation_field

        f = deformation_field(deformation, geometry, t=float(self.time.value))
        s = float(self.arrow_scale.value)
        vec = np.zeros((len(f.points_vu), 2, 3))
        vec[:, 0, 0] = f.image_index
        vec[:, 0, 1:] = f.points_vu
        vec[:, 1, 1:] = f.apparent_px * s
        feats = pd.DataFrame({"D_x_nm": f.displacement_nm[:, 0], "D_y_nm": f.displacement_nm[:, 1],
                              "D_z_nm": f.displacement_nm[:, 2]})
        layer = add_or_update_layer(self.viewer, (vec, {"name": VECTORS, "scale": self._scale, "features": feats,
                                                        "edge_color": "yellow", "edge_width": 0.6}, "vectors"))
        if len(layer.features) == len(feats):  # add_or_update_layer replaces only the data of a vectors layer
            layer.features = feats
        step = f.step_px
        mag = f.magnitude_nm.astype(np.float32)
        sy, sx = self._scale[1] * step, self._scale[2] * step
        ty = self._scale[1] * float(f.points_vu[0, 0])
        tx = self._scale[2] * float(f.points_vu[0, 1])
        add_or_update_layer(self.viewer, (mag, {"name": MAGNITUDE, "scale": (sy, sx), "translate": (ty, tx),
                                                "colormap": "magma", "opacity": 0.5, "blending": "additive"}, "image"))

    # -- result ------------------------------------------------------------------------------
    def on_result(self, result) -> None:
        self.result = result
        self._geometry = result.geometry
        self._show_markers(result.positions_nm, result.weights, result.projected_px)
        self._show_deformation_result()
        res = result.residual()
        lo, hi = np.percentile(res, [0.5, 99.5])
        add_or_update_layer(self.viewer, (res, {"name": RESIDUAL, "scale": self._scale, "colormap": "PiYG",
                                                "contrast_limits": (float(min(lo, -1e-3)), float(max(hi, 1e-3))),
                                                "visible": False}, "image"))
        self._fill_table(result)
        self.export_button.enabled = True
        self.status.setText(f"{result.n_markers} markers, loss {result.loss_history[-1]['loss']:.4g}"
                            if result.loss_history else f"{result.n_markers} markers")
        text = width_text(result.marker_width) if result.marker_width else self.width_label.text()
        for w in result.warnings:
            text += f"\nwarning: {w}"
        self.width_label.setText(text)

    def _show_deformation_result(self, *_):
        if self.result is not None:
            self._show_deformation(self.result.deformation, self.result.geometry)

    def _fill_table(self, result):
        model = result.deformation
        comps = result.params.get("components", "z")
        rows = []
        for k, comp in enumerate("xyz"):
            if comp not in comps:
                continue
            for i, name in enumerate(model.term_names):
                for z in range(model.time_degree):
                    rows.append((comp, name, str(z + 1), f"{model.coefficients[k, i, z]:.3f}"))
        self.table.setRowCount(len(rows))
        for r, row in enumerate(rows):
            for c, text in enumerate(row):
                self.table.setItem(r, c, QTableWidgetItem(text))

    def _apply_threshold(self, *_):
        if POINTS in self.viewer.layers:
            layer = self.viewer.layers[POINTS]
            if "weight" in layer.features:
                layer.shown = layer.features["weight"].to_numpy() >= float(self.threshold.value)

    @handler
    def export(self, *_):
        """Write the markers above the weight threshold and the deformation into the export folder."""
        from ..backend.markers.export import write_results

        if self.result is None:
            return None
        out = Path(self.out_dir.value)
        selected = self.result.select(float(self.threshold.value))
        return self.export_files(
            [out], lambda overwrite: write_results(out, selected, acquisition_order=self._order, overwrite=overwrite,
                                                   tomo_name=str(self._data_name)),
            done=f"wrote the markers and the deformation to {out}")
