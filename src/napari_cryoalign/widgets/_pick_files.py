"""The file actions of the "Pick particles" widget: export picks, import labels, save and load the model,
save the template averaged from the labels.

A mixin of :class:`~.pick.PickWidget` (it needs the widget's tomogram, candidates, labels,
picker and file fields). Every write goes through :meth:`~._base.JobWidget.export_files`
(never over an open file or an existing one unless "overwrite existing files" is ticked);
every failure through the widget's one error reporter.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import InputError
from ._base import handler

__all__ = ["LABEL_AVERAGE", "STAR_FORMS", "PickFileActions"]

STAR_FORMS = {"RELION 4 and 5": "both", "RELION 4": "relion4", "RELION 5": "relion5"}
#: the template-matching reference averaged from the labels (a choice of the widget's reference box)
LABEL_AVERAGE = "average of the labels"


def _file(edit) -> Path | None:
    v = edit.value
    return None if v is None or str(v) in ("", ".") else Path(v)


class PickFileActions:
    """Export picks (STAR), import labels (STAR), save / load the picker model, save the label template (MRC)."""

    def input_files(self) -> list[Path]:
        files = [_file(self.labels_star), _file(self.reference_file), self.labels.autosave_path,
                 self.labels.negatives_path]
        return [p for p in files if p is not None]

    @handler
    def export_picks(self, *_) -> Path | None:
        """Write the shown picks (sorted by score) as a RELION STAR file; returns its path."""
        from ..io import write_particles

        tomo = self.tomogram_geometry()
        out = _file(self.star_file)
        if out is None:
            raise InputError("an output STAR file name", field="picks STAR", got="none")
        idx = self.shown_indices()
        picks = self.picks

        def write(overwrite: bool) -> Path:
            return write_particles(
                out, coordinates_xyz=picks.coordinates_xyz[idx], scores=picks.scores[idx],
                euler_deg=None if picks.euler_deg is None else picks.euler_deg[idx], tomo_name=tomo.name,
                tomogram_shape=tomo.shape, voxel_size=tomo.voxel_size, form=STAR_FORMS[self.star_form.value],
                sort_by_score=True, overwrite=overwrite)

        path = self.export_files([out], write, done=f"exported {len(idx)} picks to {out.name}")
        return None if path is None else Path(path)

    @handler
    def import_labels(self, *_) -> int:
        """Add the particles of a STAR file to the labels (undoable); returns how many."""
        from ..io import coordinates_xyz, read_particles

        tomo = self.tomogram_geometry()
        src = _file(self.labels_star)
        if src is None:
            raise InputError("a STAR file to import", field="labels STAR", got="none")
        xyz = coordinates_xyz(read_particles(src, tomogram_shape=tomo.shape, voxel_size=tomo.voxel_size))
        self.add_labels(xyz)
        self.status.setText(f"imported {len(xyz)} labels from {src.name}")
        return len(xyz)

    @handler
    def save_model(self, *_) -> Path | None:
        """Write the current picker to the model file."""
        from ..backend.picking import save_picker

        if self.picker is None:
            raise InputError("a model to save (press Train first)", field="model", got="none")
        out = _file(self.model_file)
        if out is None:
            raise InputError("a model file name", field="model file", got="none")
        picker = self.picker
        path = self.export_files([out], lambda overwrite: save_picker(out, picker, overwrite=overwrite),
                                 done=f"saved model to {out.name}")
        return None if path is None else Path(path)

    @handler
    def save_label_template(self, *_) -> Path | None:
        """Write the last template averaged from the labels (MRC, the tomogram's voxel size)."""
        from ..io import write_mrc

        tmpl = self.label_template
        if tmpl is None:
            raise InputError(f"a label template to save (choose '{LABEL_AVERAGE}' and press Match first)",
                             field="label template", got="none")
        out = _file(self.template_file)
        if out is None:
            raise InputError("an MRC file name", field="label template file", got="none")
        path = self.export_files([out], lambda overwrite: write_mrc(out, tmpl.map, voxel_size=tmpl.voxel_size,
                                                                    overwrite=overwrite),
                                 done=f"saved the label template to {out.name}")
        return None if path is None else Path(path)

    @handler
    def load_model(self, *_) -> bool:
        """Read the model file: the picker for Train (continued) and Pick with model."""
        from ..backend.picking import load_picker

        src = _file(self.model_file)
        if src is None:
            raise InputError("a model file name", field="model file", got="none")
        picker = load_picker(src, device=self.device.value if self.device.value != "auto" else "cpu")
        self.picker = picker
        self.diameter.value = float(picker.diameter_angstrom)
        self.class_prior.value = float(picker.class_prior)
        done = picker.training.get("iterations_done", 0)
        self.status.setText(f"loaded model ({picker.diameter_angstrom:g} Å, {done} iterations trained)")
        return True
