"""The "Run on all tomograms" part of the "Pick particles" widget (issue 21).

The current picker is applied to every tomogram of a copick project (its configuration ``.json``),
a RELION 5 ``tomograms.star`` or a list of tomogram files (``.txt``), by the same batch job as
``cryoalign batch pick predict`` (:func:`~..backend.batch.engine.batch_job` on a local Dask
cluster), in the widget's own runner so labelling goes on meanwhile. The model is saved first to
``OUT/model.pt`` (the batch's workers read it from there; a different model replaces an earlier batch's
only with the widget's "overwrite existing files" box); the progress line counts tomograms done,
failed and left; a rerun skips tomograms finished with the same model. For a copick project whose
one particle object is unambiguous the picks are also written back to each run (user
``cryoalign``, session ``0``).
"""

from __future__ import annotations

from pathlib import Path

from magicgui.widgets import Container, FileEdit, Label, PushButton, SpinBox

from ..errors import InputError
from ._runner import JobRunner

__all__ = ["BatchRun", "batch_inputs"]

BATCH_FILTER = "*.json *.star *.txt"


def batch_inputs(path: Path):
    """The tomograms a batch file names: copick config (``.json``), ``tomograms.star`` or a list; and
    the copick object to write picks back as (None: not copick, or no single particle object)."""
    from ..backend.batch import tomograms_from_copick, tomograms_from_list, tomograms_from_star

    suffix = path.suffix.lower()
    if suffix == ".json":
        from ..io.copick_project import open_copick

        particles = [o.name for o in open_copick(path).config.pickable_objects if o.is_particle]
        return tomograms_from_copick(path), (particles[0] if len(particles) == 1 else None)
    if suffix == ".star":
        return tomograms_from_star(path), None
    return tomograms_from_list(path), None


class BatchRun:
    """The widgets and the runner of "Run on all tomograms" for a :class:`~.pick.PickWidget`."""

    def __init__(self, widget):
        self.widget = widget
        self.source = FileEdit(label="all tomograms", mode="r", filter=BATCH_FILTER,
                               tooltip="a copick project (config .json), a RELION 5 tomograms.star or a list of "
                               "tomogram files (.txt)")
        self.out = FileEdit(label="batch output folder", mode="d")
        self.workers = SpinBox(label="workers", value=2, min=1, max=256)
        self.button = PushButton(text="Run on all tomograms")
        self.cancel_button = PushButton(text="Stop batch")
        self.status = Label(value="")
        self.box = Container(widgets=[self.source, self.out, self.workers,
                                      Container(widgets=[self.button, self.cancel_button], layout="horizontal",
                                                labels=False), self.status])
        self.report = None
        self.failed: list[str] = []
        self.runner = JobRunner(f"{widget.job_name}: all tomograms", on_partial=self._on_partial,
                                on_done=self._on_done, on_error=self._on_error, on_state=self._on_state)
        self.button.changed.connect(self.start)
        self.cancel_button.changed.connect(lambda *_: self.runner.cancel())

    def start(self, *_) -> int | None:
        """Save the model into the output folder and start the batch; None (and a message) when it cannot."""
        try:
            job = self._make_job()
        except Exception as exc:  # noqa: BLE001 - a message, never a crash
            self.status.value = f"not started: {exc}"
            self.widget.report(exc)
            return None
        self.failed = []
        self.status.value = "starting the workers..."
        return self.runner.start(job)

    def _make_job(self):
        from ..backend.batch import batch_job, merge_picks, pick_predict_task
        from ..backend.picking import save_picker

        w = self.widget
        if w.picker is None:
            raise InputError("a trained or loaded picker (Train, or Load model) to run on all tomograms",
                             field="model", got="none")
        src = _path(self.source)
        out = _path(self.out)
        if src is None:
            raise InputError("a copick config, a tomograms.star or a list of tomograms", field="all tomograms",
                             got="none")
        if out is None:
            raise InputError("an output folder", field="batch output folder", got="none")
        inputs, obj = batch_inputs(src)
        out.mkdir(parents=True, exist_ok=True)
        model = out / "model.pt"
        # an unchanged model keeps its file (the rerun skips finished tomograms); another one replaces it only
        # with the widget's "overwrite existing files" box, as every file the widget writes
        if not _same_model(model, w.picker) and w.export_files(
                [model], lambda overwrite: save_picker(model, w.picker, overwrite=overwrite),
                done=f"saved the model for the batch to {model}") is None:
            raise InputError("the model saved to the batch folder (tick 'overwrite existing files' to replace the "
                             "model a batch there used)", path=model, field="model", got="not saved")
        import hashlib

        params = {"model": str(model.resolve()), "model_digest": hashlib.sha256(model.read_bytes()).hexdigest()[:20],
                  "threshold": float(w.threshold.value), "min_distance_angstrom": w._min_distance_angstrom(),
                  "heatmap": False, "device": "cpu", "copick_object": obj, "copick_session": "0"}
        return batch_job("pick predict", pick_predict_task, inputs, out, params=params,
                         workers=int(self.workers.value), threads_per_worker=1, merge=merge_picks)

    def _on_partial(self, p) -> None:
        if p.name == "tomogram" and p.value.status == "failed":
            self.failed.append(f"{p.value.name} ({p.value.error})")

    def _on_state(self, state) -> None:
        if state.running and state.message:
            self.status.value = state.message + (f"; failed: {'; '.join(self.failed[-3:])}" if self.failed else "")

    def _on_done(self, report) -> None:
        self.report = report
        done, skipped, failed = report.count("done"), report.count("skipped"), report.count("failed")
        merged = report.merged.get("particles")
        self.status.value = (f"{done} done, {skipped} finished before, {failed} failed of {len(report.outcomes)} "
                             f"tomograms in {report.seconds:.0f} s" + (f"; wrote {merged}" if merged else "")
                             + (f"; failed: {'; '.join(self.failed[-3:])}" if self.failed else ""))

    def _on_error(self, exc) -> None:
        self.status.value = f"failed: {exc}"
        self.widget.report(exc)


def _same_model(path: Path, picker) -> bool:
    """Whether ``path`` holds a picker with ``picker``'s weights and trained size."""
    from ..backend.picking import load_picker

    if not path.is_file():
        return False
    try:
        saved = load_picker(path)
    except Exception:  # noqa: BLE001 - an unreadable old file is simply replaced
        return False
    if saved.diameter_angstrom != picker.diameter_angstrom or saved.voxel_size != picker.voxel_size:
        return False
    a, b = saved.net.state_dict(), picker.net.state_dict()
    return a.keys() == b.keys() and all(a[k].shape == b[k].shape and bool((a[k] == b[k].cpu()).all()) for k in a)


def _path(edit) -> Path | None:
    v = edit.value
    return None if v is None or str(v) in ("", ".") else Path(v)
