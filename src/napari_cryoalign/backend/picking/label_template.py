"""A template for template matching averaged from the user's labelled particles (no map needed).

A biologist who clicks a few particles has no clean map of them; template matching with the
simulator's own map (or any map from elsewhere) is not what they could run. This module makes
the template they *can* have, from the labels alone, with the subtomogram-averaging backend
(:mod:`..align`):

1. **Boxes.** A cubic box (default: the smallest even edge >= 1.5 particle diameters, at least
   16 voxels) is cut around every label (:func:`~..align.extract.extract_subtomograms`); boxes
   reaching outside the tomogram are skipped and listed. Each box is normalised to zero mean
   and unit standard deviation. Every box has the tomogram's missing wedge
   (:func:`~..wedge.particle_fourier_mask`, tilt axis y).
2. **Reference-free start.** The wedge-compensated mean of the boxes as cut
   (:func:`~..align.average.wedge_compensated_average`) is averaged over all rotations about
   the box centre (a *rotational average*: a spherically symmetric blob with the particles'
   radial profile). Every box is aligned to it by translation (the exhaustive search with the
   4-rotation grid; for a sphere the rotation does not matter), which centres the boxes and
   scores how well each matches the profile.
3. **Seed.** A spherical reference cannot choose orientations, and the two half sets would
   break its symmetry each their own way. The box that matches the rotational average best (a
   typical, well-centred particle, not a label on empty ice) seeds both half sets instead,
   with its own missing wedge, low-passed to ``lowpass_angstrom`` (the reference-free start
   of :func:`~..align.average.iterative_average_job`).
4. **Iterative alignment.** ``iterations`` rounds of
   :func:`~..align.average.iterative_average_job`: each half set aligned to its own average
   (rotation grid ``angular_step_deg``, refined locally), re-averaged (wedge-compensated),
   each half's reference low-passed to the current FSC 0.143 resolution (gold standard apart
   from the shared seed), so the half maps give an FSC and a resolution estimate.
5. **The template.** The average low-passed to ``lowpass_angstrom``
   (:func:`~..fourier.lowpass`), re-centred on its centre of mass (protein contrast, which
   may be bright or dark), normalised to zero mean and unit standard deviation under a soft
   spherical mask of the particle diameter (mask-weighted) and multiplied by it (``mask``). The
   protein keeps the contrast sign it has in the tomogram, so the map goes straight into
   :func:`~.template.template_match_job`.

With fewer than :data:`MIN_ALIGNED` usable labels (1 to 4) there is too little signal to
align orientations and too few particles for half sets: the template is the **rotational
average** of the centred boxes (step 2, low-passed, masked, normalised) - a blob with the
right size and radial profile, the classical fallback for globular particles. The result's
``method`` says which was made.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ...errors import InputError
from ..align.average import FSCReport, iterative_average_job, wedge_compensated_average
from ..align.exhaustive import align_exhaustive_job
from ..align.extract import check_box_size, extract_subtomograms
from ..align.types import AlignmentResult
from ..fourier import lowpass, sphere_mask
from ..geometry import shift_volume
from ..jobs import Job, Progress, run_job, subjob
from ..wedge import particle_fourier_mask
from .picker import check_tomogram, diameter_voxels

__all__ = ["MIN_ALIGNED", "LabelTemplate", "default_template_box", "label_template", "label_template_job"]

#: with fewer usable labels the template is a rotational average (no orientation alignment, no half sets)
MIN_ALIGNED = 5
#: method names in :attr:`LabelTemplate.method`
ALIGNED, ROTATIONAL = "aligned average", "rotational average"


@dataclass(frozen=True, eq=False)
class LabelTemplate:
    """A template averaged from labelled particles.

    Attributes
    ----------
    map : ``(N, N, N)`` float32, ``(z, y, x)``, centred at index ``N // 2``: low-passed, normalised to zero
        mean and unit standard deviation under a soft sphere of the particle diameter (mask-weighted) and
        multiplied by it (0 outside), protein with the contrast sign it has in the tomogram
    voxel_size : Å per voxel (the tomogram's)
    box : N, voxels
    n_used : number of labels averaged
    rows : ``(n_used,)`` the labels averaged (0-based rows of the input)
    skipped : tuple of :class:`~..align.extract.Skipped` (row, reason): labels whose box fell outside the
        tomogram (or was all zero)
    method : ``"aligned average"`` (orientations aligned in ``iterations`` rounds) or ``"rotational average"``
        (fewer than :data:`MIN_ALIGNED` labels, or ``iterations=0``)
    iterations : alignment rounds run (0 for the rotational average)
    lowpass_angstrom : the low-pass applied, Å (at least 2 voxels, Nyquist)
    diameter_angstrom : particle diameter (mask), Å
    contrast : +1.0 when the protein is brighter than its surroundings in the tomogram, -1.0 when darker
    fsc : half-map FSC (aligned average only; its half sets hold half the labels each), else None
    resolution_angstrom : FSC 0.143 resolution of the half maps, Å, or None
    half_maps : the two half sets' averages, finished like ``map`` (aligned average only), else None: a
        label scored against the half it is *not* in is scored without its own noise in the reference
    label_half : ``(n_used,)`` 1 or 2, the half set of each label averaged (order of ``rows``), or None
    """

    map: np.ndarray
    voxel_size: float
    box: int
    n_used: int
    rows: np.ndarray
    skipped: tuple = ()
    method: str = ALIGNED
    iterations: int = 0
    lowpass_angstrom: float = float("nan")
    diameter_angstrom: float = float("nan")
    contrast: float = 1.0
    fsc: FSCReport | None = field(default=None, repr=False)
    resolution_angstrom: float | None = None
    half_maps: tuple | None = field(default=None, repr=False)
    label_half: np.ndarray | None = None

    @property
    def mask_radius_voxels(self) -> float:
        """Radius of the sphere that holds the particle, voxels (half the diameter plus one, inside the box):
        the ``mask_radius`` for :func:`~.template.template_match_job`."""
        return float(min(0.5 * self.diameter_angstrom / self.voxel_size + 1.0, self.box // 2 - 1))

    def describe(self) -> str:
        """One line: what was averaged and how (for messages)."""
        res = f", half-map FSC 0.143 at {self.resolution_angstrom:.0f} Å" if self.resolution_angstrom else ""
        skip = f", {len(self.skipped)} skipped (box outside the tomogram)" if self.skipped else ""
        how = f"{self.method} of {self.n_used} label{'s' if self.n_used != 1 else ''}"
        if self.method == ALIGNED:
            how += f", {self.iterations} alignment round{'s' if self.iterations != 1 else ''}"
        return (f"{how}{skip}; box {self.box} voxels of {self.voxel_size:g} Å, low-pass {self.lowpass_angstrom:.0f} Å"
                f"{res}")


def default_template_box(diameter_voxels: float) -> int:
    """The smallest even box edge >= 1.5 particle diameters (voxels), at least 16."""
    return max(16, 2 * math.ceil(0.75 * float(diameter_voxels)))


def _check_labels(labels_xyz, *, path=None) -> np.ndarray:
    arr = np.asarray(labels_xyz, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 3:
        raise InputError("particle coordinates as an (n, 3) array of (x, y, z) voxels", path=path, field="labels",
                         got=f"shape {arr.shape}")
    if arr.shape[0] == 0:
        raise InputError("at least one labelled particle to average a template from", path=path, field="labels",
                         got="no labels")
    if not np.isfinite(arr).all():
        raise InputError("finite coordinates", path=path, field="labels", got="NaN or inf")
    return arr


def _rotational_average(volume: np.ndarray) -> np.ndarray:
    """Average of ``(N, N, N)`` over all rotations about index ``N // 2`` (linear in the radius)."""
    n = volume.shape[0]
    g = np.arange(n, dtype=np.float64) - n // 2
    r = np.sqrt(g[:, None, None] ** 2 + g[None, :, None] ** 2 + g[None, None, :] ** 2)
    # shells of width 1/2 voxel: fine enough for a linear profile, each shell holds voxels
    idx = np.rint(2.0 * r).astype(np.int64).ravel()
    sums = np.bincount(idx, weights=np.asarray(volume, dtype=np.float64).ravel())
    counts = np.bincount(idx)
    have = counts > 0
    radii = np.flatnonzero(have) / 2.0
    profile = sums[have] / counts[have]
    return np.interp(r, radii, profile).astype(np.float32)


def _contrast(volume: np.ndarray, radius: float) -> float:
    """+1 when the centre (within ``radius``) is brighter than the shell just outside it, else -1."""
    n = volume.shape[0]
    g = np.arange(n, dtype=np.float64) - n // 2
    r = np.sqrt(g[:, None, None] ** 2 + g[None, :, None] ** 2 + g[None, None, :] ** 2)
    inside = volume[r <= radius]
    shell = volume[(r > radius) & (r <= min(radius + 3.0, n // 2))]
    if inside.size == 0 or shell.size == 0:
        return 1.0
    return 1.0 if float(inside.mean()) >= float(shell.mean()) else -1.0


def _centre(volume: np.ndarray, contrast: float, radius: float) -> np.ndarray:
    """Shift ``volume`` so that the centre of mass of its protein (``contrast`` x density above the
    median, within ``radius`` + 2 of the box centre) lands on ``N // 2`` (Fourier shift, sub-voxel)."""
    n = volume.shape[0]
    g = np.arange(n, dtype=np.float64) - n // 2
    zz, yy, xx = np.meshgrid(g, g, g, indexing="ij")
    near = np.sqrt(zz**2 + yy**2 + xx**2) <= radius + 2.0
    v = contrast * np.asarray(volume, dtype=np.float64)
    w = np.clip(v - np.median(v[near]), 0.0, None) * near
    total = float(w.sum())
    if total <= 0:
        return volume
    com_xyz = np.array([(w * xx).sum(), (w * yy).sum(), (w * zz).sum()]) / total
    if np.abs(com_xyz).max() > radius:  # not a particle-like mass: leave it
        return volume
    return np.asarray(shift_volume(np.asarray(volume, dtype=np.float32), -com_xyz), dtype=np.float32)


def _finish(volume, *, contrast: float, radius: float, lowpass_angstrom: float, voxel_size: float,
            mask: bool) -> np.ndarray:
    """Low-pass, re-centre, subtract the mask-weighted mean, divide by the mask-weighted standard deviation and
    multiply by the soft sphere of ``radius`` voxels (so the map sums to 0 and is 0 outside the mask)."""
    n = volume.shape[0]
    v = np.asarray(lowpass(np.asarray(volume, dtype=np.float32), lowpass_angstrom, voxel_size_angstrom=voxel_size),
                   dtype=np.float32)
    v = _centre(v, contrast, radius)
    edge = max(1.0, min(3.0, n // 2 - radius - 1.0))
    m = sphere_mask((n, n, n), radius, soft_edge=edge).numpy().astype(np.float64)
    if not mask:
        m = np.ones_like(m)
    wsum = float(m.sum())
    mu = float((v * m).sum() / wsum)
    sd = math.sqrt(float((m * (v - mu) ** 2).sum() / wsum))
    if not sd > 0:
        raise InputError("labelled particles with some contrast", field="labels", got="a flat average")
    out = (v - mu) * m
    return (out / sd).astype(np.float32)


def label_template_job(
    tomogram,
    labels_xyz,
    *,
    voxel_size: float,
    diameter_angstrom: float,
    box: int | None = None,
    lowpass_angstrom: float | None = 40.0,
    iterations: int = 3,
    angular_step_deg: float = 30.0,
    tilt_range_deg: tuple[float, float] | None = (-60.0, 60.0),
    mask: bool = True,
    device="cpu",
    path=None,
    labels_path=None,
) -> Job[LabelTemplate]:
    """Average a template from labelled particles (a job; see the module docstring for the method).

    Parameters
    ----------
    tomogram : ``(z, y, x)`` array or memmap
    labels_xyz : ``(n, 3)`` labelled particle centres, 0-based voxels ``(x, y, z)``; at least one. Labels
        whose box reaches outside the tomogram are skipped (listed in the result)
    voxel_size : Å per voxel of the tomogram
    diameter_angstrom : particle diameter, Å (box size, alignment shift range, mask)
    box : even box edge in voxels (default :func:`default_template_box`: >= 1.5 diameters, >= 16)
    lowpass_angstrom : resolution of the template, Å (raised-cosine low-pass; at least 2 voxels, Nyquist;
        None: Nyquist)
    iterations : alignment rounds (gold-standard half sets); 0: the rotational average. With fewer than
        :data:`MIN_ALIGNED` usable labels the rotational average is made whatever ``iterations`` says
    angular_step_deg : rotation grid of the global alignment search (refined locally to a ninth of it)
    tilt_range_deg : the tomogram's tilt range (min, max) for the missing wedge of the boxes; None: none
    mask : multiply the template by a soft sphere of the particle diameter (else the whole box is kept)
    device : torch device for the alignment ("cpu", "cuda", "auto")
    path, labels_path : the tomogram's and the labels' files, named in messages

    Yields
    ------
    :class:`~..jobs.Progress` per stage and alignment batch (cancellable at each)

    Returns
    -------
    :class:`LabelTemplate`

    Raises
    ------
    InputError
        No labels, non-finite coordinates, a diameter that does not fit in the tomogram (or whose box
        does not), a bad box, no label whose box lies inside the tomogram.
    """
    from .._tensor import resolve_device

    shape = check_tomogram(tomogram, path=path)
    vs = float(voxel_size) if voxel_size is not None else float("nan")
    d_vox = diameter_voxels(diameter_angstrom, vs, shape=shape, path=path)
    labels = _check_labels(labels_xyz, path=labels_path)
    if box is None:
        b = default_template_box(d_vox)
        if b > min(shape):
            raise InputError(f"a particle diameter whose box (1.5 diameters, {b} voxels) fits in the tomogram "
                             f"({min(shape)} voxels along its smallest axis); give a smaller box", path=path,
                             field="diameter", got=f"{diameter_angstrom:g} Å = {d_vox:.1f} voxels")
    else:
        b = check_box_size(box, tomogram_shape=shape, path=path)
        if b < d_vox:
            raise InputError(f"a box at least as large as the particle ({d_vox:.1f} voxels)", path=path,
                             field="box", got=b)
    if int(iterations) != iterations or iterations < 0:
        raise InputError("an integer >= 0", field="iterations", got=iterations)
    if lowpass_angstrom is not None and not (math.isfinite(lowpass_angstrom) and lowpass_angstrom > 0):
        raise InputError("a low-pass resolution > 0 Å", field="lowpass_angstrom", got=lowpass_angstrom)
    res = max(float(lowpass_angstrom) if lowpass_angstrom is not None else 0.0, 2.0 * vs)
    dev = resolve_device(device)
    radius = 0.5 * d_vox
    fmax = min(0.5, vs / res + 2.0 / b)  # alignment uses the band the template keeps (plus an edge)

    yield Progress(0, None, f"cutting {len(labels)} boxes of {b} voxels")
    ext = extract_subtomograms(tomogram, labels, b, path=path, pad=False)
    skipped = tuple(ext.skipped)
    if len(ext.rows) == 0:
        raise InputError("at least one label whose box lies inside the tomogram", path=labels_path, field="labels",
                         got=f"all {len(labels)} skipped: " + "; ".join(f"row {s.row}: {s.reason}"
                                                                        for s in skipped[:3]))
    parts = ext.volumes - ext.volumes.mean(axis=(1, 2, 3), keepdims=True)
    parts = parts / np.maximum(parts.std(axis=(1, 2, 3), keepdims=True), 1e-12)
    parts = parts.astype(np.float32)
    n = len(parts)
    masks = particle_fourier_mask(b, tilt_range_deg=tilt_range_deg)
    aligned = n >= MIN_ALIGNED and iterations > 0
    total = 3 + (int(iterations) * 3 + 2 if aligned else 0)

    # reference-free start: the rotational average of the wedge-compensated mean, then centre every box on it
    yield Progress(1, total, f"centring {n} boxes on their rotational average")
    blob = _rotational_average(wedge_compensated_average(parts, None, particle_masks=masks, device=dev))
    blob = np.asarray(lowpass(blob, res, voxel_size_angstrom=vs), dtype=np.float32)
    centring = yield from subjob(
        align_exhaustive_job(parts, blob, particle_masks=masks, angular_step_deg=180.0, refine_levels=0,
                             max_shift_voxels=min(b / 4, max(2.0, radius)), max_frequency=fmax, device=dev),
        prefix="centring", at=(1, total), partials=False)
    eye = np.broadcast_to(np.eye(3), (n, 3, 3)).copy()
    centred = AlignmentResult(eye, np.asarray(centring.origins_voxels), np.asarray(centring.scores), "exhaustive")
    mean_c = wedge_compensated_average(parts, centred, particle_masks=masks, device=dev)
    blob = _rotational_average(mean_c)
    contrast = _contrast(blob, radius)
    fsc = half_maps = label_half = None
    if not aligned:
        method, avg, done_iters = ROTATIONAL, blob, 0
    else:
        # the seed: the box that best matches the centred rotational average (a typical, well-centred
        # particle, not a label on empty ice) starts both half sets with its own missing wedge
        seed = int(np.argmax(np.nan_to_num(np.asarray(centring.scores, dtype=np.float64), nan=-np.inf)))
        perm = np.array([seed] + [i for i in range(n) if i != seed], dtype=np.int64)
        result = yield from subjob(
            iterative_average_job(parts[perm], particle_masks=masks, iterations=int(iterations),
                                  angular_step_deg=angular_step_deg, voxel_size_angstrom=vs,
                                  start_resolution_angstrom=res, device=dev),
            offset=(2, total), prefix="alignment", partials=False)
        method, avg, done_iters, fsc = ALIGNED, result.average, int(iterations), result.fsc
        label_half = np.empty(n, dtype=np.int64)
        label_half[perm] = np.asarray(result.half, dtype=np.int64)
    yield Progress(total - 1, total, "low-pass, centre, mask")
    finish = {"contrast": contrast, "radius": radius, "lowpass_angstrom": res, "voxel_size": vs, "mask": mask}
    tmap = _finish(avg, **finish)
    if label_half is not None and result.half1 is not None and result.half2 is not None:
        half_maps = (_finish(result.half1, **finish), _finish(result.half2, **finish))
    yield Progress(total, total, "done")
    resolution = None
    if fsc is not None and math.isfinite(fsc.resolution_0143):
        resolution = float(fsc.resolution_0143)
    return LabelTemplate(map=tmap, voxel_size=vs, box=b, n_used=n, rows=np.asarray(ext.rows, dtype=np.int64),
                         skipped=skipped, method=method, iterations=done_iters, lowpass_angstrom=res,
                         diameter_angstrom=float(diameter_angstrom), contrast=contrast, fsc=fsc, half_maps=half_maps,
                         label_half=label_half,
                         resolution_angstrom=resolution)


def label_template(tomogram, labels_xyz, *, progress: bool = False, **kwargs) -> LabelTemplate:
    """Plain-function form of :func:`label_template_job` (same keyword arguments)."""
    return run_job(label_template_job(tomogram, labels_xyz, **kwargs), progress=progress,
                   description="template from labels")
