"""Screenshot of the "Pick particles" widget for docs/widgets/pick.md (and a small measurement).

Opens napari with the sample tomogram, labels a few of its true particles, trains the picker
in the widget (the real background job, as a user would), sets a threshold and saves the whole
window to ``docs/images/widget_pick.png``. It also prints the precision / recall / F1 of the
shown picks against the truth (match radius: half the smallest particle diameter).

Usage (a virtual screen)::

    xvfb-run -a -s "-screen 0 1680x1050x24" .venv/bin/python scripts/screenshot_pick.py \
        [--out docs/images/widget_pick.png] [--iterations 200] [--labels 6] [--threshold 0.5]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="docs/images/widget_pick.png")
    ap.add_argument("--iterations", type=int, default=200)
    ap.add_argument("--labels", type=int, default=6, help="true particles given as labels")
    ap.add_argument("--threshold", type=float, default=0.5)
    ap.add_argument("--diameter", type=float, default=250.0, help="particle diameter in Å")
    args = ap.parse_args(argv)
    for var in ("XDG_CONFIG_HOME", "XDG_CACHE_HOME", "XDG_RUNTIME_DIR"):
        if var not in os.environ:
            os.environ[var] = tempfile.mkdtemp()
            os.chmod(os.environ[var], 0o700)

    import napari
    import numpy as np
    from qtpy.QtWidgets import QApplication

    from napari_cryoalign._layers import tomogram_layers
    from napari_cryoalign.backend.picking import precision_recall_f1
    from napari_cryoalign.backend.simulate.tomogram import sample_tomogram
    from napari_cryoalign.widgets.pick import PickWidget

    sim = sample_tomogram(seed=0)
    viewer = napari.Viewer(title="napari-cryoalign: Pick particles")
    viewer.window.resize(1600, 1000)
    for data, kwargs, kind in tomogram_layers(sim, name="sample tomogram")[:2]:
        layer = getattr(viewer, f"add_{kind}")(data, **kwargs)
    layer.visible = False  # the truth: hidden, used for the numbers below
    widget = PickWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Pick particles", area="right")
    truth = np.asarray(sim.truth.coordinates_xyz)
    rng = np.random.default_rng(0)
    widget.add_labels(truth[rng.choice(len(truth), args.labels, replace=False)])
    widget.diameter.value = args.diameter
    widget.iterations.value = args.iterations
    widget.preview_s.value = 5.0
    t0 = time.perf_counter()
    widget.run()
    app = QApplication.instance()
    while widget.runner.running:
        app.processEvents()
        time.sleep(0.02)
    seconds = time.perf_counter() - t0
    widget.threshold.value = args.threshold
    shown = widget.shown_indices()
    radius = 0.5 * float(np.min(2 * np.asarray(sim.truth.radii_voxels)))
    prf = precision_recall_f1(widget.picks.coordinates_xyz[shown], widget.picks.scores[shown], truth, radius=radius)
    print(f"trained {args.iterations} iterations with {args.labels} labels in {seconds:.0f} s (incl. picking); "
          f"{len(shown)} picks at threshold {args.threshold}: precision {prf.precision:.2f}, "
          f"recall {prf.recall:.2f}, F1 {prf.f1:.2f} (match radius {radius:.1f} voxels, {len(truth)} true)")
    z = round(float(np.median(truth[:, 2])))
    viewer.dims.set_point(0, z * float(sim.voxel_size))
    viewer.layers.selection.active = widget.labels_layer
    viewer.reset_view()
    for _ in range(20):
        app.processEvents()
        time.sleep(0.05)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    viewer.screenshot(str(out), canvas_only=False, flash=False)
    print(f"screenshot written to {out}")
    viewer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
