"""Backend results -> napari LayerData tuples ``(data, kwargs, layer_type)``.

Shared by the sample-data contributions, the dock widgets and ``cryoalign gui``. Nothing
here imports napari: LayerData tuples are plain Python, so this module is cheap to import
and easy to test. Scales are in Å (voxel size), per CONVENTIONS.md.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .backend.geometry import euler_to_matrix

#: one colour per class (1-based class k -> _CLASS_COLORS[(k - 1) % len])
_CLASS_COLORS = ["#ff7f0e", "#1f77b4", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf"]


def class_colors(classes) -> np.ndarray:
    """RGBA-less hex colours for 1-based class numbers."""
    classes = np.asarray(classes, dtype=int)
    return np.array([_CLASS_COLORS[(int(c) - 1) % len(_CLASS_COLORS)] for c in classes])


def particle_features(*, euler_deg=None, classes=None, class_names=None, scores=None) -> pd.DataFrame:
    """A features table with RELION column names, as the STAR reader makes it."""
    cols = {}
    if euler_deg is not None:
        e = np.asarray(euler_deg, dtype=np.float64)
        cols["rlnAngleRot"], cols["rlnAngleTilt"], cols["rlnAnglePsi"] = e[:, 0], e[:, 1], e[:, 2]
    if classes is not None:
        cols["rlnClassNumber"] = np.asarray(classes, dtype=np.int64)
        if class_names is not None:
            cols["class_name"] = [class_names[int(c) - 1] for c in classes]
    if scores is not None:
        cols["rlnAutopickFigureOfMerit"] = np.asarray(scores, dtype=np.float64)
    return pd.DataFrame(cols)


def orientation_vectors(coordinates_zyx, euler_deg, *, length: float) -> np.ndarray:
    """napari vectors ``(n, 2, 3)``: from each particle, the direction of the reference's z axis.

    The reference z axis ``(0, 0, 1)`` (x, y, z) maps to ``A @ e_z`` in the tomogram; napari
    wants ``(z, y, x)`` components.
    """
    a = euler_to_matrix(np.asarray(euler_deg, dtype=np.float64))
    d_xyz = a[:, :, 2]
    vec = np.empty((len(a), 2, 3))
    vec[:, 0] = np.asarray(coordinates_zyx, dtype=np.float64)
    vec[:, 1] = d_xyz[:, ::-1] * length
    return vec


def tomogram_layers(sim, *, name: str = "tomogram") -> list[tuple]:
    """A simulated tomogram (``TomogramSimulation``): the tomogram and the true particles (points, vectors)."""
    v = float(sim.voxel_size)
    truth = sim.truth
    zyx = np.asarray(truth.coordinates_xyz, dtype=np.float64)[:, ::-1]
    feats = particle_features(euler_deg=truth.euler_deg, classes=truth.classes, class_names=truth.class_names)
    tomo = np.asarray(sim.tomogram, dtype=np.float32)
    lo, hi = np.percentile(tomo[:: max(1, tomo.shape[0] // 16)], [0.5, 99.5])
    shape = tuple(int(s) for s in tomo.shape)
    meta = {"napari_cryoalign": {"voxel_size_angstrom": v, "tomogram_shape": shape, "tomo_name": name, "params": sim.params}}
    radius = np.asarray(truth.radii_voxels, dtype=np.float64)
    layers = [
        (tomo, {"name": name, "scale": (v, v, v), "contrast_limits": (float(lo), float(hi)), "metadata": meta}, "image"),
        (
            zyx,
            {
                "name": f"{name} truth",
                "scale": (v, v, v),
                "features": feats,
                "size": np.maximum(2 * radius, 4.0),
                "face_color": "transparent",
                "border_color": list(class_colors(truth.classes)) if len(zyx) else "yellow",
                "border_width": 0.08,
                # a particle is drawn as the disc its sphere cuts from the slice (with thick slices)
                "projection_mode": "rescale_spherical",
                "metadata": meta,
            },
            "points",
        ),
    ]
    if len(zyx):
        layers.append(
            (
                orientation_vectors(zyx, truth.euler_deg, length=float(np.median(radius))),
                {"name": f"{name} orientations", "scale": (v, v, v), "edge_color": "cyan", "edge_width": 0.6, "visible": False},
                "vectors",
            )
        )
    return layers


def subtomogram_layers(sset, *, name: str = "subtomograms") -> list[tuple]:
    """A ``SubtomogramSet``: the particles as a 4D stack and the class references."""
    v = float(sset.voxel_size_angstrom)
    vols = np.asarray(sset.volumes, dtype=np.float32)
    meta = {
        "napari_cryoalign": {
            "voxel_size_angstrom": v,
            "euler_deg": np.asarray(sset.euler_deg).tolist(),
            "origins_angstrom": np.asarray(sset.origins_angstrom).tolist(),
            "classes": np.asarray(sset.classes).tolist(),
            "class_names": list(sset.class_names),
            "params": sset.params,
        }
    }
    lo, hi = np.percentile(vols, [0.5, 99.5])
    refs = np.asarray(sset.references, dtype=np.float32)
    return [
        (
            refs,
            {"name": f"{name} references", "scale": (1.0, v, v, v), "colormap": "gray", "visible": False,
             "metadata": {"napari_cryoalign": {"class_names": list(sset.class_names)}}},
            "image",
        ),
        (
            vols,
            {"name": name, "scale": (1.0, v, v, v), "contrast_limits": (float(lo), float(hi)), "metadata": meta,
             "axis_labels": ("particle", "z", "y", "x")},
            "image",
        ),
    ]


def particle_image_layers(pset, *, name: str = "particle images") -> list[tuple]:
    """A ``ParticleImageSet``: the images as a stack ``(n, y, x)`` with the truth in metadata."""
    p = float(pset.pixel_size_angstrom)
    imgs = np.asarray(pset.images, dtype=np.float32)
    lo, hi = np.percentile(imgs, [0.5, 99.5])
    meta = {
        "napari_cryoalign": {
            "pixel_size_angstrom": p,
            "structure": pset.structure,
            "euler_deg": np.asarray(pset.euler_deg).tolist(),
            "origins_angstrom": np.asarray(pset.origins_angstrom).tolist(),
            "random_subset": np.asarray(pset.random_subset).tolist(),
            "params": pset.params,
        }
    }
    return [
        (imgs, {"name": name, "scale": (1.0, p, p), "contrast_limits": (float(lo), float(hi)), "metadata": meta,
                "axis_labels": ("image", "y", "x")}, "image")
    ]


def marker_tiltseries_layers(ts, *, name: str = "marker tilt series") -> list[tuple]:
    """A ``MarkerTiltSeries``: the tilt series ``(n_tilts, y, x)`` and the true projected bead centres.

    Points are ``(tilt index, v, u)`` in pixels of the stack, so on every tilt image the
    points mark where the deformed beads project.
    """
    p = float(ts.pixel_size_angstrom)
    series = np.asarray(ts.tilt_series, dtype=np.float32)
    lo, hi = np.percentile(series, [0.5, 99.5])
    proj = np.asarray(ts.projected_px, dtype=np.float64)  # (n_tilts, n_beads, 2) as (u, v)
    n_tilts, n_beads = proj.shape[:2]
    tilt_idx = np.repeat(np.arange(n_tilts), n_beads)
    pts = np.column_stack([tilt_idx, proj[:, :, 1].ravel(), proj[:, :, 0].ravel()])
    feats = pd.DataFrame(
        {
            "bead": np.tile(np.arange(n_beads), n_tilts),
            "tilt_deg": np.repeat(np.asarray(ts.tilt_angles_deg, dtype=np.float64), n_beads),
            "time": np.repeat(np.asarray(ts.times, dtype=np.float64), n_beads),
        }
    )
    meta = {"napari_cryoalign": {"pixel_size_angstrom": p, "tilt_angles_deg": np.asarray(ts.tilt_angles_deg).tolist(),
                                 "truth": ts.truth_dict()}}
    bead_px = ts.bead_diameter_nm / ts.pixel_size_nm
    return [
        (series, {"name": name, "scale": (1.0, p, p), "contrast_limits": (float(lo), float(hi)), "metadata": meta,
                  "axis_labels": ("tilt", "y", "x")}, "image"),
        (pts, {"name": f"{name} true beads", "scale": (1.0, p, p), "features": feats, "size": max(3.0, 1.6 * bead_px),
               "face_color": "transparent", "border_color": "orange", "border_width": 0.1}, "points"),
    ]


def copick_run_layers(data, objects=()) -> list[tuple]:
    """LayerData for a copick run opened with :func:`~.io.copick_project.load_copick_run`: the tomogram at
    its level (world units Å; metadata naming the run as ``rlnTomoName`` and the level's voxel size, as
    the widgets read a tomogram) and one points layer per (object, user, session), named
    ``"<run> <object> (<user>/<session>)"``. ``objects``: the project's pickable objects (their radius, Å,
    sets the points' size)."""
    ref = data.ref
    sample = data.tomogram[:: max(1, data.tomogram.shape[0] // 8)]
    lo, hi = (float(v) for v in np.percentile(sample, (0.5, 99.5)))
    meta = {"napari_cryoalign": {"tomo_name": ref.run, "voxel_size_angstrom": (data.voxel_size,) * 3,
                                 "shape": tuple(int(s) for s in data.tomogram.shape),
                                 "copick": {"config": ref.config, "run": ref.run, "voxel_spacing": ref.voxel_size,
                                            "tomo_type": ref.tomo_type, "level": data.level}}}
    layers = [(data.tomogram, {"name": f"{ref.run} {ref.tomo_type}", "scale": (data.voxel_size,) * 3,
                               "metadata": meta, "contrast_limits": (lo, hi if hi > lo else lo + 1.0),
                               "colormap": "gray"}, "image")]
    radii = {o.name: getattr(o, "radius", None) for o in objects}
    for m, xyz, scores in data.picks:
        radius = radii.get(m["object"])
        layers.append((np.asarray(xyz, dtype=np.float64).reshape(-1, 3)[:, ::-1].copy(), {
            "name": copick_picks_layer_name(ref.run, m), "scale": (ref.voxel_size,) * 3,
            "size": 2 * float(radius) / ref.voxel_size if radius else 10.0, "face_color": "transparent",
            "border_color": "cyan", "projection_mode": "rescale_spherical",
            "features": pd.DataFrame({"score": np.asarray(scores, dtype=float)}),
            "metadata": {"napari_cryoalign": {"voxel_size_angstrom": ref.voxel_size, "tomo_name": ref.run,
                                              "copick": {**m, "run": ref.run}}}}, "points"))
    return layers


def copick_picks_layer_name(run: str, meta: dict) -> str:
    """The points layer of one (object, user, session) of a copick run."""
    return f"{run} {meta['object']} ({meta['user_id']}/{meta['session_id']})"
