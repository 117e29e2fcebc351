"""Dock widget "Simulate data": make data with known truth from real structures, in the background.

One widget for the four simulators (tomogram, subtomograms, marker tilt series, particle
images). It collects parameters, runs the backend job through :class:`JobRunner` (progress
bar, Cancel, newest request wins) and adds the result and its ground truth as layers;
"Save to folder" writes the same files as ``cryoalign simulate ...``.
"""

from __future__ import annotations

from pathlib import Path

from magicgui.widgets import ComboBox, Container, FileEdit, FloatSpinBox, PushButton, Select, SpinBox

from .. import _layers
from ..backend.jobs import Job
from ._base import JobWidget, add_or_update_layer, handler

KINDS = {
    "Tomogram with particles (picking)": "tomogram",
    "Subtomograms (alignment, clustering)": "subtomograms",
    "Tilt series with gold markers": "tiltseries",
    "Particle images (pose)": "particles",
}


def _structures() -> list[str]:
    from ..backend.simulate.structures import list_structures

    return list_structures()


class SimulateWidget(JobWidget):
    """Simulate a data set and show it with its truth."""

    job_name = "Simulate"

    def __init__(self, napari_viewer, parent=None):
        super().__init__(napari_viewer, parent)
        names = _structures()
        self.kind = ComboBox(label="data", choices=list(KINDS), value=list(KINDS)[0])
        self.seed = SpinBox(label="seed", value=0, min=0, max=2**31 - 1)
        # tomogram
        self.tomo_z = SpinBox(label="size z", value=64, min=16, max=1024, step=16)
        self.tomo_xy = SpinBox(label="size y, x", value=192, min=32, max=2048, step=32)
        self.tomo_particles = SpinBox(label="particles", value=40, min=0, max=5000)
        self.tomo_structures = Select(label="structures", choices=names, value=names[:3])
        self.tomo_dose = FloatSpinBox(label="dose (e/Å²)", value=100.0, min=1.0, max=1000.0, step=10.0)
        self.tomo_gold = SpinBox(label="gold beads", value=4, min=0, max=200)
        # subtomograms
        self.sub_structures = Select(label="structures", choices=names, value=names[:3])
        self.sub_n = SpinBox(label="per class", value=10, min=1, max=10000)
        self.sub_box = SpinBox(label="box (voxels)", value=32, min=16, max=128, step=8)
        self.sub_snr = FloatSpinBox(label="SNR", value=0.1, min=0.001, max=1000.0, step=0.01)
        # tilt series
        self.ts_preset = ComboBox(label="preset", choices=["sample (realistic)", "paper3d", "paper2d"], value="sample (realistic)")
        # particles
        self.part_structure = ComboBox(label="structure", choices=names, value=names[0])
        self.part_n = SpinBox(label="images", value=200, min=1, max=100000)
        self.part_box = SpinBox(label="box (pixels)", value=64, min=16, max=512, step=8)
        self.part_snr = FloatSpinBox(label="SNR", value=0.1, min=0.001, max=1000.0, step=0.01)

        self._groups = {
            "tomogram": [self.tomo_z, self.tomo_xy, self.tomo_particles, self.tomo_structures, self.tomo_dose, self.tomo_gold],
            "subtomograms": [self.sub_structures, self.sub_n, self.sub_box, self.sub_snr],
            "tiltseries": [self.ts_preset],
            "particles": [self.part_structure, self.part_n, self.part_box, self.part_snr],
        }
        self.out_dir = FileEdit(label="save to", mode="d", value=str(Path.cwd() / "simulated"))
        self.save_button = PushButton(text="Save last result to folder")
        self.save_button.enabled = False
        self.make_overwrite_box()
        widgets = [self.kind, self.seed] + [w for group in self._groups.values() for w in group]
        self.form = Container(widgets=widgets + [self.out_dir, self.overwrite, self.save_button])
        self.form_layout.addWidget(self.form.native)
        self.kind.changed.connect(self._show_group)
        self.save_button.changed.connect(self.save_last)
        self._show_group()
        self.last_result = None
        self.last_kind = None

    # -- parameters ------------------------------------------------------------------------
    @property
    def kind_key(self) -> str:
        return KINDS[self.kind.value]

    def _show_group(self, *_):
        for key, group in self._groups.items():
            for w in group:
                w.visible = key == self.kind_key

    def make_job(self) -> Job:
        kind, seed = self.kind_key, int(self.seed.value)
        self._pending_kind = kind
        if kind == "tomogram":
            from ..backend.simulate.tomogram import simulate_tomogram_job

            if not self.tomo_structures.value and self.tomo_particles.value:
                raise ValueError("choose at least one structure")
            z, xy = int(self.tomo_z.value), int(self.tomo_xy.value)
            return simulate_tomogram_job(
                shape=(z, xy, xy),
                structures=list(self.tomo_structures.value),
                n_particles=int(self.tomo_particles.value),
                dose=float(self.tomo_dose.value),
                n_gold=int(self.tomo_gold.value),
                seed=seed,
            )
        if kind == "subtomograms":
            from ..backend.simulate.subtomograms import simulate_subtomograms_job

            if not self.sub_structures.value:
                raise ValueError("choose at least one structure")
            return simulate_subtomograms_job(
                list(self.sub_structures.value),
                n_per_class=int(self.sub_n.value),
                box=int(self.sub_box.value),
                snr=float(self.sub_snr.value),
                seed=seed,
            )
        if kind == "tiltseries":
            from ..backend.simulate.markers import sample_marker_tiltseries_job, simulate_marker_tiltseries_job

            if self.ts_preset.value in ("paper3d", "paper2d"):
                return simulate_marker_tiltseries_job(preset=self.ts_preset.value, seed=seed)
            return sample_marker_tiltseries_job(seed=seed)
        from ..backend.simulate.particles import simulate_particles_job

        return simulate_particles_job(
            self.part_structure.value,
            n=int(self.part_n.value),
            box=int(self.part_box.value),
            snr=float(self.part_snr.value),
            seed=seed,
        )

    # -- results ---------------------------------------------------------------------------
    def on_result(self, result) -> None:
        kind = self._pending_kind
        layers = {
            "tomogram": lambda r: _layers.tomogram_layers(r, name="simulated tomogram"),
            "subtomograms": lambda r: _layers.subtomogram_layers(r, name="simulated subtomograms"),
            "tiltseries": lambda r: _layers.marker_tiltseries_layers(r, name="simulated marker tilt series"),
            "particles": lambda r: _layers.particle_image_layers(r, name="simulated particle images"),
        }[kind](result)
        for ld in layers:
            add_or_update_layer(self.viewer, ld)
        self.last_result, self.last_kind = result, kind
        self.save_button.enabled = True
        self.status.setText(f"simulated {kind}: {len(layers)} layers")

    @handler
    def save_last(self, *_) -> dict | None:
        """Write the last result with the same writer as ``cryoalign simulate`` (atomic; refuses to overwrite
        unless the overwrite box is ticked)."""
        if self.last_result is None:
            return None
        out, kind, result = Path(self.out_dir.value), self.last_kind, self.last_result
        return self.export_files([out], lambda overwrite: _write(kind, result, out, overwrite=overwrite),
                                 done=f"wrote the simulated {kind} to {out}")


def _write(kind: str, result, out: Path, *, overwrite: bool) -> dict:
    if kind == "tomogram":
        from ..backend.simulate.tomogram import write_tomogram_simulation

        return write_tomogram_simulation(result, out, overwrite=overwrite)
    if kind == "subtomograms":
        from ..backend.simulate.subtomograms import write_subtomogram_set

        return write_subtomogram_set(result, out, overwrite=overwrite)
    if kind == "tiltseries":
        from ..backend.simulate.markers import write_marker_tiltseries

        return write_marker_tiltseries(result, out, overwrite=overwrite)
    from ..backend.simulate.particles import write_particle_set

    return write_particle_set(result, out, overwrite=overwrite)
