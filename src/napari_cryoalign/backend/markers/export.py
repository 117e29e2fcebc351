"""Writing SparseAlign results: markers (STAR, IMOD point text), deformation (JSON), reprojection (MRC).

Coordinates (see ``docs/markers.md``):

* marker positions are estimated in nm from the volume centre (x, y, z; undeformed, t = 0);
* in files they are **0-based voxel coordinates of the reconstruction** whose voxel size is
  the tilt-series pixel size and whose shape is ``volume_shape = (nz, ny, nx)``
  (``nx, ny`` the detector size): ``index = position / pixel + N // 2`` (CONVENTIONS.md);
* the IMOD point files list ``object contour x y z`` per line (``point2model`` reads them;
  0-based pixel coordinates): ``markers_imod.txt`` holds the 3D positions (object 1, one
  contour per marker), ``markers_fid.txt`` the projected traces in the tilt series (object 1,
  contour = marker, z = 0-based tilt index), like an IMOD fiducial model.

Every file is written atomically (temporary file in the same folder, then ``os.replace``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ...io._atomic import atomic_write
from .adcg import SparseAlignResult

__all__ = [
    "OUTPUT_NAMES",
    "deformation_to_dict",
    "positions_to_voxels",
    "read_deformation_json",
    "volume_shape_for",
    "write_deformation_json",
    "write_imod_fiducials",
    "write_imod_points",
    "write_markers_star",
    "write_reprojection",
    "write_results",
]

#: names of the files :func:`write_results` writes
OUTPUT_NAMES = {"star": "markers.star", "deformation": "deformation.json", "reprojection": "reprojection.mrc",
                "imod": "markers_imod.txt", "fiducials": "markers_fid.txt"}

FORMAT = "napari-cryoalign SparseAlign deformation, version 1"


def volume_shape_for(result: SparseAlignResult, *, thickness_nm: float | None = None) -> tuple[int, int, int]:
    """``(nz, ny, nx)`` of the reconstruction the marker coordinates refer to.

    ``nz`` covers ``thickness_nm`` (default: twice the estimation's ``z_range_nm``).
    """
    g = result.geometry
    ny, nx = g.detector_shape
    th = thickness_nm if thickness_nm is not None else 2.0 * float(result.params.get("z_range_nm", 0.0))
    nz = max(1, int(np.ceil(th / g.pixel_size_nm)))
    return (nz, 1 if g.line_detector else ny, nx)


def positions_to_voxels(positions_nm, pixel_size_nm: float, volume_shape) -> np.ndarray:
    """nm from the centre ``(M, 3)`` -> 0-based voxel coordinates ``(x, y, z)`` of ``volume_shape`` (z, y, x)."""
    nz, ny, nx = (int(v) for v in volume_shape)
    return np.asarray(positions_nm, dtype=np.float64).reshape(-1, 3) / pixel_size_nm + np.array(
        [nx // 2, ny // 2, nz // 2], dtype=np.float64)


def write_markers_star(path, result: SparseAlignResult, *, volume_shape=None, tomo_name: str = "tomo",
                       overwrite: bool = False) -> Path:
    """Markers as a RELION particle STAR file (coordinates in voxels, ``rlnAutopickFigureOfMerit`` = weight)."""
    from ...io.star_columns import write_particles

    shape = volume_shape if volume_shape is not None else volume_shape_for(result)
    g = result.geometry
    xyz = positions_to_voxels(result.positions_nm, g.pixel_size_nm, shape)
    extra = {"cryoalignMarkerXNm": result.positions_nm[:, 0], "cryoalignMarkerYNm": result.positions_nm[:, 1],
             "cryoalignMarkerZNm": result.positions_nm[:, 2]}
    return Path(write_particles(path, coordinates_xyz=xyz, scores=result.weights, tomo_name=tomo_name,
                                tomogram_shape=shape, voxel_size=10.0 * g.pixel_size_nm, extra_columns=extra,
                                overwrite=overwrite))


def _write_text(path, lines, overwrite: bool) -> Path:
    with atomic_write(path, mode="w", overwrite=overwrite) as f:
        f.write("".join(lines))
    return Path(path)


def write_imod_points(path, result: SparseAlignResult, *, volume_shape=None, overwrite: bool = False) -> Path:
    """3D marker positions as an IMOD point file: ``object contour x y z`` (voxels, 0-based), one contour per marker.

    ``point2model -input markers_imod.txt -output markers.mod -image tomogram.mrc`` makes an IMOD model.
    """
    shape = volume_shape if volume_shape is not None else volume_shape_for(result)
    xyz = positions_to_voxels(result.positions_nm, result.geometry.pixel_size_nm, shape)
    lines = [f"1 {j + 1} {x:.3f} {y:.3f} {z:.3f}\n" for j, (x, y, z) in enumerate(xyz)]
    return _write_text(path, lines, overwrite)


def write_imod_fiducials(path, result: SparseAlignResult, *, overwrite: bool = False) -> Path:
    """Projected marker traces as IMOD points: ``object contour x y tilt_index`` (pixels, 0-based).

    One contour per marker, one point per tilt image (like an IMOD fiducial model of the stack).
    """
    q = np.asarray(result.projected_px)
    lines = []
    for j in range(q.shape[1]):
        for i in range(q.shape[0]):
            lines.append(f"1 {j + 1} {q[i, j, 0]:.3f} {q[i, j, 1]:.3f} {i}\n")
    return _write_text(path, lines, overwrite)


def deformation_to_dict(result: SparseAlignResult, *, acquisition_order=None) -> dict:
    """The documented deformation JSON (see ``docs/markers.md``)."""
    g = result.geometry
    d = result.deformation.to_dict()
    order = None if acquisition_order is None else [int(i) for i in np.asarray(acquisition_order).ravel()]
    return {
        "format": FORMAT,
        "units": {"coefficients": "nm", "positions": "nm", "time": "dimensionless, 0 (first image) to 1 (last)"},
        "deformation": d,
        "basis": {
            "formula": "D_k(r, t) = sum_zeta sum_i coefficients_nm[k][i][zeta-1] * (x/L)^a (y/L)^b (z/L)^c * t^zeta",
            "components": ["x", "y", "z"],
            "terms": d["terms"],
            "term_exponents_xyz": d["term_exponents_xyz"],
            "length_scale_nm": d["length_scale_nm"],
            "time_powers": list(range(1, int(d["time_degree"]) + 1)),
            "estimated_components": result.params.get("components", "z"),
        },
        "coordinate_origin": "volume centre: detector pixel (nx//2, ny//2) at tilt 0 and the slab centre in z; x, y "
                             "in the tilt-0 image plane (x along detector columns, y = tilt axis), z along the beam "
                             "at tilt 0; a point r moves to r + D(r, t)",
        "projection": "u = x cos(theta) + z sin(theta), v = y (nm from the centres); pixel = u / pixel_size_nm + nx//2",
        "time_mapping": {
            "rule": "t[order[k]] = k / (n_tilts - 1): the k-th acquired image (0-based) has time k/(n-1)",
            "acquisition_order": order,
            "tilt_angles_deg": [float(a) for a in g.tilt_angles_deg],
            "times": [float(t) for t in g.times],
        },
        "geometry": {"detector_shape_yx": list(g.detector_shape), "pixel_size_nm": float(g.pixel_size_nm),
                     "marker_sigma_nm": float(g.sigma_nm),
                     "marker_sigma_source": result.marker_width.get("source", "given"),
                     "nominal_marker_sigma_nm": result.marker_width.get("nominal_sigma_nm"),
                     "marker_width_estimate": result.marker_width.get("estimate"),
                     "line_detector": bool(g.line_detector)},
        "warnings": list(result.warnings),
        "markers": {"n": result.n_markers, "positions_nm_xyz": np.round(result.positions_nm, 4).tolist(),
                    "weights": np.round(result.weights, 5).tolist()},
        "fit": {"levels": list(result.levels), "loss_history": result.loss_history, "runtime_s": result.runtime_s,
                "params": result.params},
    }


def write_deformation_json(path, result: SparseAlignResult, *, acquisition_order=None, overwrite: bool = False) -> Path:
    with atomic_write(path, mode="w", overwrite=overwrite) as f:
        json.dump(deformation_to_dict(result, acquisition_order=acquisition_order), f, indent=1)
    return Path(path)


def read_deformation_json(path):
    """Read the deformation model back: returns ``(PolynomialDeformation, dict)``."""
    from ...errors import InputError
    from ..deformation import PolynomialDeformation

    p = Path(path)
    try:
        d = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise InputError("a deformation JSON file", path=p, field="content", got=str(e)) from None
    if d.get("format") != FORMAT or "deformation" not in d:
        raise InputError(FORMAT, path=p, field="format", got=d.get("format"))
    return PolynomialDeformation.from_dict(d["deformation"]), d


def write_reprojection(path, result: SparseAlignResult, *, overwrite: bool = False) -> Path:
    """The forward model ``(T, ny, nx)`` as an MRC stack (pre-processed units: bead peak 1)."""
    from ...io.mrc import write_mrc

    return Path(write_mrc(path, result.reprojection, voxel_size=10.0 * result.geometry.pixel_size_nm,
                          overwrite=overwrite, is_stack=True))


def write_results(out_dir, result: SparseAlignResult, *, acquisition_order=None, volume_shape=None,
                  tomo_name: str = "tomo", overwrite: bool = False) -> dict[str, Path]:
    """Write markers.star, deformation.json, reprojection.mrc, markers_imod.txt, markers_fid.txt into ``out_dir``.

    Checks every output path first (nothing is written if one exists and ``overwrite`` is False).
    """
    from ...errors import InputError
    from ...io._atomic import check_output_path

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError("a folder for the outputs", path=out, field="out", got="a file")
    out.mkdir(parents=True, exist_ok=True)
    paths = {k: out / v for k, v in OUTPUT_NAMES.items()}
    for p in paths.values():
        check_output_path(p, overwrite=overwrite)
    write_markers_star(paths["star"], result, volume_shape=volume_shape, tomo_name=tomo_name, overwrite=overwrite)
    write_deformation_json(paths["deformation"], result, acquisition_order=acquisition_order, overwrite=overwrite)
    write_reprojection(paths["reprojection"], result, overwrite=overwrite)
    write_imod_points(paths["imod"], result, volume_shape=volume_shape, overwrite=overwrite)
    write_imod_fiducials(paths["fiducials"], result, overwrite=overwrite)
    return paths
