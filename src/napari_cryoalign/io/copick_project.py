"""copick projects: the multi-tomogram data model (runs, voxel spacings, OME-Zarr tomograms, picks).

napari-cryoalign reads and writes copick's *filesystem* projects (``"config_type": "filesystem"``,
a ``local://`` or plain-path overlay root, optionally a static root) with copick's own
implementation (``copick.impl.filesystem``). A project on the CZ cryoET Data Portal needs the full
copick install with its portal client, which is not part of this package's environment
(requirements/copick.txt says why).

Conventions (copick's, pinned by tests/io/test_copick_project.py):

* a tomogram is an OME-Zarr multiscale group; level ``"0"`` is the full resolution, array axes
  ``(z, y, x)``; the voxel spacing (Å) names its folder;
* pick locations are in **Å**, ``x_Å = x_voxel * voxel_size`` with the centre of voxel ``i`` at
  ``i * voxel_size`` (copick, napari-copick and the Data Portal convert with ``location /
  voxel_size``); :func:`picks_to_voxels` and :func:`voxels_to_picks` are the only conversions in
  this package;
* picks belong to a pickable object, a ``user_id`` and a ``session_id``; copick does not lock
  files, so exactly one writer may write one (run, user, session, object).

Importing copick sets the root logger to INFO with a rich handler: :func:`import_copick` undoes
that, so a user's logging configuration (and pytest's) is left as it was.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import InputError

__all__ = ["CopickTomogramRef", "CopickRunData", "load_copick_run", "copick_levels", "copick_tomogram_shape",
           "import_copick", "open_copick",
           "copick_tomograms", "read_copick_tomogram",
           "copick_voxel_spacings", "write_copick_picks", "read_copick_picks", "new_copick_project",
           "COPICK_USER"]

#: the user_id of picks napari-cryoalign writes back to a copick project
COPICK_USER = "cryoalign"


def import_copick():
    """Import copick, leaving the root logger as it was (copick sets it to INFO with its own handler)."""
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    try:
        import copick
        import copick.impl.filesystem  # noqa: F401  (the import that configures logging)
    except ImportError as err:  # pragma: no cover - the environment always has it
        raise InputError("copick installed (scripts/setup.sh installs it; pip install --no-deps -r "
                         "requirements/copick.txt)", field="copick", got=str(err)) from err
    finally:
        root.setLevel(level)
        for h in list(root.handlers):
            if h not in handlers:
                root.removeHandler(h)
        for h in handlers:
            if h not in root.handlers:
                root.addHandler(h)
    return copick


def open_copick(config: str | os.PathLike):
    """Open a copick filesystem project from its configuration JSON.

    Raises
    ------
    InputError
        The file is missing, not JSON, or not a filesystem project (``field="config_type"``).
    """
    p = Path(config)
    if not p.is_file():
        raise InputError("an existing copick configuration file (JSON)", path=p, field="file",
                         got="no such file" if not p.exists() else "a folder")
    try:
        data = json.loads(p.read_text())
    except (OSError, ValueError) as err:
        raise InputError("a copick configuration in JSON", path=p, field="file", got=str(err)) from err
    kind = data.get("config_type", "filesystem")
    if kind != "filesystem":
        raise InputError("a copick filesystem project (\"config_type\": \"filesystem\"); Data Portal projects "
                         "need the full copick install", path=p, field="config_type", got=repr(kind))
    data["config_type"] = "filesystem"
    for key in ("overlay_root", "static_root"):
        root = data.get(key)
        if isinstance(root, str) and "://" not in root and not os.path.isabs(root):
            data[key] = str((p.parent / root).resolve())  # a relative root is relative to the config file
    import_copick()
    from copick.impl.filesystem import CopickConfigFSSpec, CopickRootFSSpec

    try:
        return CopickRootFSSpec(CopickConfigFSSpec(**data))
    except Exception as err:  # pydantic's ValidationError names the bad field
        raise InputError("a valid copick configuration", path=p, field="config", got=str(err)) from err


@dataclass(frozen=True)
class CopickTomogramRef:
    """One run's tomogram in a copick project, as strings (what a Dask task takes).

    Attributes
    ----------
    config : the project's configuration file
    run : the run's name (becomes ``rlnTomoName``)
    voxel_size : the voxel spacing, Å
    tomo_type : the tomogram's type (``wbp``, ``denoised``, ...)
    """

    config: str
    run: str
    voxel_size: float
    tomo_type: str

    def describe(self) -> str:
        return f"{self.config} run {self.run!r} ({self.tomo_type} at {self.voxel_size:g} Å)"


def copick_voxel_spacings(root) -> list[float]:
    """Every voxel spacing (Å) that some run of the project has, sorted."""
    return sorted({float(vs.voxel_size) for run in root.runs for vs in run.voxel_spacings})


def copick_tomograms(config: str | os.PathLike, *, runs: Sequence[str] | None = None,
                     voxel_size: float | None = None, tomo_type: str | None = None,
                     ) -> tuple[list[CopickTomogramRef], dict[str, str]]:
    """The tomograms of a copick project, one per run.

    Parameters
    ----------
    config : the project's configuration JSON
    runs : run names to use (default: every run); a name the project lacks is an error
    voxel_size : the voxel spacing in Å (default: the smallest the project has)
    tomo_type : the tomogram type (default: the run's only one, else ``wbp``, else the first by name)

    Returns
    -------
    ``(refs, missing)``: the tomograms found, and ``{run: why}`` for runs without one at that
    spacing (a batch reports them as failed rather than stopping).
    """
    root = open_copick(config)
    names = [r.name for r in root.runs]
    if runs:
        unknown = [r for r in runs if r not in names]
        if unknown:
            raise InputError("run names of the project", path=config, field="--runs",
                             got=", ".join(unknown[:5]) + f" (it has {len(names)} runs: {', '.join(names[:5])}...)")
        names = list(runs)
    if not names:
        raise InputError("a project with at least one run", path=config, field="runs", got="none")
    if voxel_size is None:
        spacings = copick_voxel_spacings(root)
        if not spacings:
            raise InputError("runs with a voxel spacing", path=config, field="voxel_spacings", got="none")
        voxel_size = spacings[0]
    refs, missing = [], {}
    for name in names:
        run = root.get_run(name)
        vs = run.get_voxel_spacing(float(voxel_size))
        if vs is None:
            missing[name] = f"no voxel spacing {voxel_size:g} Å"
            continue
        types = sorted({t.tomo_type for t in vs.tomograms})
        if tomo_type is not None:
            chosen = tomo_type if tomo_type in types else None
        else:
            chosen = types[0] if len(types) == 1 else ("wbp" if "wbp" in types else (types[0] if types else None))
        if chosen is None:
            missing[name] = (f"no tomogram {tomo_type!r}" if tomo_type else "no tomogram") + \
                f" at {voxel_size:g} Å (has: {', '.join(types) or 'none'})"
            continue
        refs.append(CopickTomogramRef(str(config), name, float(voxel_size), chosen))
    return refs, missing


def _tomogram(ref: CopickTomogramRef):
    root = open_copick(ref.config)
    run = root.get_run(ref.run)
    vs = None if run is None else run.get_voxel_spacing(ref.voxel_size)
    tomos = [] if vs is None else [t for t in vs.tomograms if t.tomo_type == ref.tomo_type]
    if not tomos:
        raise InputError(f"a {ref.tomo_type!r} tomogram at {ref.voxel_size:g} Å", path=ref.config,
                         field=f"run {ref.run}", got="none")
    return tomos[0]


def read_copick_tomogram(ref: CopickTomogramRef, *, level: int | str = 0) -> np.ndarray:
    """A run's tomogram at one resolution level (0: full), as a float32 ``(z, y, x)`` array in memory.

    Raises
    ------
    InputError
        No such tomogram or level, or a volume that is not 3D.
    """
    import zarr

    tomo = _tomogram(ref)
    try:
        group = zarr.open(tomo.zarr(), mode="r")
        arr = group[str(level)]
    except (KeyError, ValueError, OSError) as err:
        raise InputError(f"an OME-Zarr tomogram with resolution level {level}", path=ref.config,
                         field=f"run {ref.run} {ref.tomo_type}",
                         got=f"no array {str(level)!r}" if isinstance(err, KeyError) else str(err)) from err
    if arr.ndim != 3:
        raise InputError("a 3D tomogram", path=ref.config, field=f"run {ref.run}", got=f"shape {arr.shape}")
    return np.asarray(arr[...], dtype=np.float32)


def picks_to_voxels(locations_angstrom, voxel_size: float) -> np.ndarray:
    """copick pick locations ``(n, 3)`` Å (x, y, z) -> voxel coordinates (x, y, z)."""
    return np.asarray(locations_angstrom, dtype=np.float64).reshape(-1, 3) / float(voxel_size)


def voxels_to_picks(coordinates_xyz, voxel_size: float) -> np.ndarray:
    """Voxel coordinates ``(n, 3)`` (x, y, z) -> copick pick locations in Å."""
    return np.asarray(coordinates_xyz, dtype=np.float64).reshape(-1, 3) * float(voxel_size)


def write_copick_picks(ref: CopickTomogramRef, coordinates_xyz, *, object_name: str, session_id: str,
                       user_id: str = COPICK_USER, scores=None, rotations=None) -> Any:
    """Write picks (voxels, x y z) to the run as (object, user, session), replacing what that writer
    stored before. ``rotations``: ``(n, 3, 3)`` particle-to-tomogram rotations in the (x, y, z) frame
    (copick's transform convention), identity when None. Returns copick's picks object.

    Raises
    ------
    InputError
        The object is not a pickable object of the project.
    """
    root = open_copick(ref.config)
    objects = [o.name for o in root.config.pickable_objects]
    if object_name not in objects:
        raise InputError("a pickable object of the copick project", path=ref.config, field="--object",
                         got=f"{object_name!r} (the project has: {', '.join(objects) or 'none'})")
    run = root.get_run(ref.run)
    picks = run.new_picks(object_name, session_id=session_id, user_id=user_id, exist_ok=True)
    xyz = voxels_to_picks(coordinates_xyz, ref.voxel_size)
    transforms = None
    if rotations is not None:
        transforms = np.tile(np.eye(4), (len(xyz), 1, 1))
        transforms[:, :3, :3] = np.asarray(rotations, dtype=np.float64).reshape(-1, 3, 3)
    picks.from_numpy(xyz, transforms, scores=None if scores is None else np.asarray(scores, dtype=float))
    picks.store()
    return picks


def read_copick_picks(ref: CopickTomogramRef, *, object_name: str | None = None, user_id: str | None = None,
                      session_id: str | None = None) -> list[tuple[dict, np.ndarray, np.ndarray]]:
    """The run's picks: ``[(meta, coordinates_xyz_voxels, scores)]``, one per (object, user, session)
    with ``meta = {"object", "user_id", "session_id"}``, voxels at the reference's voxel size."""
    root = open_copick(ref.config)
    run = root.get_run(ref.run)
    kw = {k: v for k, v in (("object_name", object_name), ("user_id", user_id), ("session_id", session_id))
          if v is not None}
    out = []
    for p in run.get_picks(**kw):
        pts, _ = p.numpy()
        out.append(({"object": p.pickable_object_name, "user_id": p.user_id, "session_id": p.session_id},
                    picks_to_voxels(pts, ref.voxel_size), p.scores()))
    return out


def new_copick_project(config: str | os.PathLike, overlay_root: str | os.PathLike, *,
                       objects: Sequence[dict], name: str = "napari-cryoalign project") -> Any:
    """Write a new copick filesystem project's configuration (what tests and the sample data use).

    ``objects``: pickable objects as dicts (``name``, ``is_particle``, ``label``, ``radius`` Å, ...).
    """
    copick = import_copick()
    p = Path(config)
    if p.exists():
        raise InputError("a configuration file that does not exist yet", path=p, field="output",
                         got="an existing file")
    from ._atomic import write_json

    data = {"config_type": "filesystem", "name": name, "description": "", "version": copick.__version__,
            "pickable_objects": [dict({"is_particle": True, "color": [200, 60, 60, 255]}, label=i + 1, **o)
                                 for i, o in enumerate(objects)],
            "overlay_root": "local://" + str(Path(overlay_root).resolve()),
            "overlay_fs_args": {"auto_mkdir": True}}
    write_json(p, data)
    return open_copick(p)


def copick_tomogram_shape(ref: CopickTomogramRef, *, level: int | str = 0) -> tuple[int, int, int]:
    """The ``(z, y, x)`` shape of a run's tomogram at resolution ``level`` (read from the Zarr metadata only)."""
    import zarr

    return tuple(int(v) for v in zarr.open(_tomogram(ref).zarr(), mode="r")[str(level)].shape)


def copick_levels(ref: CopickTomogramRef) -> list[tuple[str, float]]:
    """The resolution levels of a run's tomogram: ``[(level name, voxel size Å)]``, finest first (from the
    OME-Zarr multiscale metadata; level ``i`` at ``voxel_size * 2**i`` where the metadata says nothing)."""
    import zarr

    group = zarr.open(_tomogram(ref).zarr(), mode="r")
    out = []
    try:
        datasets = group.attrs["multiscales"][0]["datasets"]
        for d in datasets:
            scale = [t for t in d.get("coordinateTransformations", []) if t.get("type") == "scale"]
            out.append((str(d["path"]), float(scale[0]["scale"][-1]) if scale else float("nan")))
    except (KeyError, IndexError, TypeError):
        out = [(k, float("nan")) for k in sorted(group.array_keys())]
    return [(name, v if np.isfinite(v) else ref.voxel_size * 2 ** i) for i, (name, v) in enumerate(out)]


@dataclass
class CopickRunData:
    """A run opened for viewing: the tomogram at one level ``(z, y, x)`` float32, its voxel size (Å), the
    level's name, and the run's picks ``[(meta, coordinates_xyz in voxels of the run's voxel spacing,
    scores)]`` (:func:`read_copick_picks`)."""

    ref: CopickTomogramRef
    tomogram: np.ndarray
    voxel_size: float
    level: str
    picks: list


def load_copick_run(ref: CopickTomogramRef, *, level: int | str = 0) -> CopickRunData:
    """Read a run's tomogram at resolution ``level`` and all of its picks (what the Copick widget shows)."""
    levels = dict(copick_levels(ref))
    name = str(level)
    if name not in levels:
        raise InputError(f"a resolution level of the tomogram ({', '.join(levels)})", path=ref.config,
                         field="level", got=name)
    data = read_copick_tomogram(ref, level=name)
    return CopickRunData(ref, data, float(levels[name]), name, read_copick_picks(ref))
