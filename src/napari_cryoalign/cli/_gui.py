"""``cryoalign gui``: open napari with napari-cryoalign's dock widgets and a sample (or your files)."""

from __future__ import annotations

SAMPLES = ("tomogram", "subtomograms", "tiltseries", "particles")


def register(sub) -> None:
    p = sub.add_parser("gui", help="open napari with the dock widgets and a sample data set", description=__doc__)
    p.add_argument("files", nargs="*", metavar="FILE", help="MRC/STAR files to open instead of the sample")
    p.add_argument("--sample", choices=SAMPLES + ("none",), default="tomogram", help="sample data to open (default: tomogram)")
    p.add_argument("--screenshot", metavar="PNG", help="save a screenshot of the whole window to PNG and quit (for docs)")
    p.set_defaults(func=run)


def widget_names() -> list[str]:
    """Display names of every dock widget the manifest contributes."""
    from npe2 import PluginManifest

    pm = PluginManifest.from_distribution("napari-cryoalign")
    return [w.display_name for w in (pm.contributions.widgets or [])]


def open_viewer(files=(), *, sample: str = "tomogram", show: bool = True):
    """A napari viewer with every napari-cryoalign dock widget and the data opened."""
    import napari

    viewer = napari.Viewer(title="napari-cryoalign", show=show)
    for name in widget_names():
        viewer.window.add_plugin_dock_widget("napari-cryoalign", name)
    if files:
        viewer.open(list(files), plugin="napari-cryoalign")
    elif sample != "none":
        viewer.open_sample("napari-cryoalign", sample)
    return viewer


def _focus_on_points(viewer) -> None:
    """Show the slice through the most particles, so they are visible on opening."""
    import numpy as np

    from ..widgets._base import show_particles_in_thick_slices

    for layer in viewer.layers:
        if layer._type_string == "points" and len(layer.data) and layer.ndim == 3:
            show_particles_in_thick_slices(viewer, layer)
            z = layer.data[:, 0] * layer.scale[0] + layer.translate[0]
            hist, edges = np.histogram(z, bins=max(1, len(z) // 3))
            best = 0.5 * (edges[hist.argmax()] + edges[hist.argmax() + 1])
            step = viewer.dims.range[0].step or 1.0
            viewer.dims.set_current_step(0, int(round((best - viewer.dims.range[0].start) / step)))
            return


def run(args) -> int:
    import napari

    viewer = open_viewer(args.files, sample=args.sample)
    _focus_on_points(viewer)
    images = [layer for layer in viewer.layers if layer._type_string == "image"]
    if images:
        viewer.layers.selection.active = images[0]
    if args.screenshot:
        viewer.window._qt_window.resize(1600, 1000)
        from qtpy.QtCore import QTimer

        def _shoot():
            viewer.screenshot(args.screenshot, canvas_only=False, flash=False)
            print(f"screenshot written to {args.screenshot}")
            viewer.close()

        QTimer.singleShot(1500, _shoot)
    napari.run()
    return 0
