"""npe2 reader: MRC volumes/stacks as image layers, STAR particle files as points layers.

* MRC (``.mrc .rec .map .st .mrcs .ali``, also ``.gz``/``.bz2``): an image layer with
  ``scale`` from the header's voxel size in Å, ``(vz, vy, vx)``; stacks (tilt series,
  particle stacks) get scale 1 on the stack axis. Large files are memory-mapped. An IMOD
  angle file beside a 3D file (``<stem>.tlt`` or ``<stem>.rawtlt``, one angle per image)
  goes into the metadata as ``tilt_angles_deg``, so "Markers & deformation" finds it.
* STAR of 2D particle images (``rlnImageName`` = ``index@stack.mrcs``, no coordinates): the
  images as an image layer ``(n, y, x)`` (``role: "particle images"``, for "Pose inference").
* copick configuration (``.json`` with pickable objects and a root): its first run's tomogram at the
  finest resolution level of at most 256³ voxels and the run's picks (one points layer per object, user
  and session); the *Copick project* widget opens the other runs and levels.
* STAR: a points layer at ``(z, y, x)`` = ``(rlnCoordinateZ, Y, X)`` (0-based voxels), with
  every column of the particle table kept in ``features``. The layer scale is the voxel
  size found in the STAR file (optics/general blocks) or in the header of the tomogram it
  names (``rlnTomoName`` + an MRC suffix next to the STAR file), so the points sit on the
  tomogram they were picked in.

Errors in a file the user opened become a napari notification (never a traceback dialog)
and the reader returns no layer.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from .errors import CryoAlignError
from .io._kinds import MRC_SUFFIXES, maybe_kind_of_file

log = logging.getLogger(__name__)


def get_reader(path):
    """Return a reader function for ``path`` if this plugin can read it, else None."""
    if isinstance(path, (str, os.PathLike)) and str(path).lower().endswith(".json"):
        return read_copick_config if _is_copick_config(path) else None
    if isinstance(path, (list, tuple)):
        if not path or any(maybe_kind_of_file(p) not in ("mrc", "star") for p in path):
            return None
        return read_files
    if maybe_kind_of_file(path) in ("mrc", "star"):
        return read_files
    return None


def _is_copick_config(path) -> bool:
    """A JSON file that looks like a copick project's configuration (pickable objects and a root)."""
    import json

    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and "pickable_objects" in data and (
        "overlay_root" in data or "static_root" in data or "config_type" in data)


#: File > Open on a copick config shows its first run at the coarsest level with at most this many voxels
COPICK_OPEN_MAX_VOXELS = 256 ** 3


def read_copick_config(path) -> list[tuple]:
    """File > Open on a copick configuration: its first run's tomogram (the finest resolution level with at
    most :data:`COPICK_OPEN_MAX_VOXELS` voxels) and its picks; the *Copick project* widget opens the others."""
    from ._layers import copick_run_layers
    from .io.copick_project import copick_levels, copick_tomogram_shape, copick_tomograms, load_copick_run, open_copick

    try:
        refs, missing = copick_tomograms(path)
        if not refs:
            raise CryoAlignError(f"no run with a tomogram ({'; '.join(f'{k}: {v}' for k, v in missing.items())})")
        ref = refs[0]
        levels = [name for name, _ in copick_levels(ref)]
        level = next((name for name in levels if np.prod(copick_tomogram_shape(ref, level=name))
                      <= COPICK_OPEN_MAX_VOXELS), levels[-1])
        layers = copick_run_layers(load_copick_run(ref, level=level), open_copick(path).config.pickable_objects)
    except (CryoAlignError, OSError, ValueError) as exc:
        _notify_error(f"Could not open {path}: {exc}")
        return [(None,)]
    n_runs = len(refs) + len(missing)
    if n_runs > 1:
        _notify_info(f"{path}: showing run {ref.run} of {n_runs}; the Copick project widget opens the others")
    return layers


def read_files(path) -> list[tuple]:
    """Read one path or a list of paths into napari LayerData tuples."""
    paths = path if isinstance(path, (list, tuple)) else [path]
    layers: list[tuple] = []
    for p in paths:
        try:
            layers.extend(read_layer_data(p))
        except (CryoAlignError, OSError, ValueError) as exc:
            _notify_error(f"Could not open {p}: {exc}")
    # napari's "read, but nothing to show" sentinel: the user gets our notification, not a
    # second error about no reader being able to open the file
    return layers or [(None,)]


def read_layer_data(path: str | os.PathLike) -> list[tuple]:
    """LayerData tuples for one file (raises :class:`~napari_cryoalign.errors.InputError` on bad input)."""
    kind = maybe_kind_of_file(path)
    if kind == "mrc":
        return [mrc_layer_data(path)]
    if kind == "star":
        return [star_layer_data(path)]
    raise CryoAlignError(f"{path}: not a file type napari-cryoalign reads")


def mrc_layer_data(path: str | os.PathLike) -> tuple:
    from .io import read_mrc

    vol = read_mrc(path, mmap="auto")
    vx, vy, vz = vol.voxel_size
    data = vol.data
    if data.ndim == 3 and vol.is_stack:
        scale = (1.0, vy, vx)
        axis_labels = ("tilt/image", "y", "x")
    elif data.ndim == 3:
        scale = (vz, vy, vx)
        axis_labels = ("z", "y", "x")
    else:
        scale = (vy, vx)
        axis_labels = ("y", "x")
    lo, hi = _contrast_limits(data)
    meta = {
        "napari_cryoalign": {
            "path": str(Path(path).resolve()),
            "voxel_size_angstrom": tuple(float(v) for v in vol.voxel_size),
            "is_stack": bool(vol.is_stack),
            "shape": tuple(int(s) for s in data.shape),
        }
    }
    if data.ndim == 3:
        meta["napari_cryoalign"].update(_tilt_angles_beside(path, n_images=int(data.shape[0])))
    kwargs = {
        "name": Path(path).name,
        "scale": scale,
        "contrast_limits": (lo, hi),
        "metadata": meta,
        "colormap": "gray",
    }
    kwargs["axis_labels"] = axis_labels
    return (data, kwargs, "image")


def _tilt_angles_beside(path, *, n_images: int) -> dict:
    """``{"tilt_angles_deg", "tlt_path"}`` from an IMOD angle file next to a stack (``<stem>.tlt``, else
    ``<stem>.rawtlt``) with one angle per image; ``{}`` when there is none (or it does not fit)."""
    from .io import read_tlt
    from .io._kinds import file_stem

    p = Path(path)
    for suffix in (".tlt", ".rawtlt"):
        tlt = p.with_name(file_stem(p) + suffix)
        if tlt.is_file():
            try:
                angles = read_tlt(tlt, n_tilts=n_images)
            except (CryoAlignError, OSError, ValueError) as exc:
                log.warning("%s: not used for %s: %s", tlt, p.name, exc)
                continue
            return {"tilt_angles_deg": [float(a) for a in angles], "tlt_path": str(tlt.resolve())}
    return {}


def _contrast_limits(data: np.ndarray) -> tuple[float, float]:
    """Robust contrast limits (0.5 and 99.5 percentiles) from a subsample, so big maps stay fast."""
    flat = np.asarray(data).reshape(-1)
    step = max(1, flat.size // 2_000_000)
    sample = np.asarray(flat[::step], dtype=np.float32)
    lo, hi = np.percentile(sample, [0.5, 99.5])
    if not np.isfinite(lo) or not np.isfinite(hi) or hi <= lo:
        lo, hi = float(sample.min()), float(sample.max())
        if hi <= lo:
            hi = lo + 1.0
    return float(lo), float(hi)


def _find_tomogram(star_path: Path, tomo_name: str | None) -> Path | None:
    if not tomo_name:
        return None
    folder = star_path.parent
    base = Path(tomo_name).name
    candidates = [folder / base] + [folder / f"{Path(base).stem if Path(base).suffix in MRC_SUFFIXES else base}{s}" for s in MRC_SUFFIXES]
    for c in candidates:
        if c.is_file() and maybe_kind_of_file(c) == "mrc":
            return c
    return None


def star_layer_data(path: str | os.PathLike) -> tuple:
    from .io import mrc_info, particle_block, particle_table, read_star, tomo_names

    path = Path(path)
    blocks = read_star(path)
    particles = particle_block(blocks, path=path)[1]
    if _is_particle_image_set(particles):
        return particle_images_layer_data(path)
    # a tomogram named in the STAR file gives shape (for RELION 5 coordinates) and voxel size
    names = tomo_names(particles)
    names = [] if names is None else list(dict.fromkeys(names))
    tomo = _find_tomogram(path, names[0] if len(names) == 1 else None)
    tomo_shape = None
    voxel = None
    if tomo is not None:
        info = mrc_info(tomo)
        tomo_shape = tuple(int(s) for s in info["shape"])
        voxel = float(info["voxel_size"][0])
    table = particle_table(blocks, path=path, tomogram_shape=tomo_shape, voxel_size=voxel)
    voxel = table.voxel_size  # the tomogram's, else the STAR file's (optics/general block)
    df = table.data
    xyz = np.stack([df["rlnCoordinateX"], df["rlnCoordinateY"], df["rlnCoordinateZ"]], axis=1).astype(np.float64)
    features = df.reset_index(drop=True).copy()
    score_col = "rlnAutopickFigureOfMerit" if "rlnAutopickFigureOfMerit" in features else None
    kwargs = {
        "name": path.stem,
        "features": features,
        "scale": (voxel or 1.0,) * 3,
        "size": 10,
        "face_color": "transparent",
        "border_color": "yellow",
        "projection_mode": "rescale_spherical",
        "metadata": {
            "napari_cryoalign": {
                "path": str(path.resolve()),
                "star_form": table.form,
                "voxel_size_angstrom": voxel,
                "tomogram_shape": tomo_shape,
                "optics": None if table.optics is None else table.optics.to_dict("list"),
            }
        },
    }
    if score_col is not None:
        kwargs["border_color"] = score_col
        kwargs["border_colormap"] = "viridis"
    return (xyz[:, ::-1].copy(), kwargs, "points")


def _is_particle_image_set(particles) -> bool:
    """A STAR file of 2D particle images (``index@stack.mrcs``, no coordinates), as RELION's Extract writes."""
    cols = set(getattr(particles, "columns", ()))
    if "rlnImageName" not in cols or {"rlnCoordinateX", "rlnCenteredCoordinateXAngst"} & cols or not len(particles):
        return False
    return "@" in str(particles["rlnImageName"].iloc[0])


def particle_images_layer_data(path: str | os.PathLike) -> tuple:
    """A particle-image STAR file as an image layer: the images ``(n, y, x)`` in row order, pixel size in Å.

    The layer's metadata names the STAR file (``path``) and ``role: "particle images"``, so
    "Pose inference" takes the particles from it.
    """
    from .io import read_particle_images

    path = Path(path)
    images, table = read_particle_images(path)
    px = float(table.voxel_size)
    lo, hi = _contrast_limits(images)
    meta = {"napari_cryoalign": {"path": str(path.resolve()), "role": "particle images", "voxel_size_angstrom": px,
                                 "is_stack": True, "shape": tuple(int(s) for s in images.shape)}}
    kwargs = {"name": path.stem, "scale": (1.0, px, px), "contrast_limits": (lo, hi), "colormap": "gray",
              "metadata": meta, "axis_labels": ("image", "y", "x")}
    return (images, kwargs, "image")


def _notify_info(message: str) -> None:
    try:
        from napari.utils.notifications import show_info

        show_info(message)
    except Exception:  # noqa: BLE001 - outside napari
        log.info(message)


def _notify_error(message: str) -> None:
    log.error(message)
    try:
        from napari.utils.notifications import show_error

        show_error(message)
    except ImportError:  # pragma: no cover - napari is a dependency
        pass
