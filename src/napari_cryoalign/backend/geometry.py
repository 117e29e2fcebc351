"""Rotations, RELION Euler angles and rigid transforms of volumes and images.

Conventions (see ``docs/conventions.md``, which follows ``shared/CONVENTIONS.md``):

* Volumes are ``(z, y, x)`` arrays; images are ``(y, x)``; batches put the batch axis first.
* Rotation matrices act on ``(x, y, z)`` column vectors (``(x, y)`` for images) about the
  box centre, which is index ``N // 2`` on every axis (the DC term after ``fftshift``).
* RELION Euler angles ``(rot, tilt, psi)`` in degrees, ZYZ. The matrix
  ``A = Rotation.from_euler("ZYZ", [rot, tilt, psi], degrees=True).inv().as_matrix()``
  maps reference coordinates to particle coordinates: ``particle(A @ r) = reference(r)``.
* Shifts are in voxels (pixels for images), ordered ``(x, y, z)`` (``(x, y)``), with
  ``out(p) = in(p - shift)``: a positive shift moves the content towards higher indices.

All volume/image functions take torch tensors (any device, float32/float64) or numpy arrays,
and return the same kind they were given.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy.spatial.transform import Rotation

from ._tensor import as_tensor as _as_tensor
from ._tensor import to_caller as _back

__all__ = [
    "euler_to_matrix",
    "matrix_to_euler",
    "random_rotations",
    "rotation_grid",
    "local_rotation_grid",
    "sphere_directions",
    "nearest_rotation",
    "geodesic_angle_deg",
    "matrix_distance",
    "box_center",
    "rotate_volume",
    "shift_volume",
    "shift_phase_ramp",
    "align_particle_to_reference",
    "transform_reference_to_particle",
    "rotate_image",
    "shift_image",
    "angle_to_matrix_2d",
]


# ----------------------------------------------------------------------------------------
# Euler angles and rotation matrices
# ----------------------------------------------------------------------------------------
def euler_to_matrix(angles_deg: np.ndarray | Sequence[float]) -> np.ndarray:
    """RELION ``(rot, tilt, psi)`` in degrees -> rotation matrix ``A``.

    Parameters
    ----------
    angles_deg : array, shape ``(..., 3)``
        ``rlnAngleRot``, ``rlnAngleTilt``, ``rlnAnglePsi`` in degrees (ZYZ).

    Returns
    -------
    ndarray, shape ``(..., 3, 3)``, float64
        ``A`` acting on ``(x, y, z)`` column vectors with ``particle(A @ r) = reference(r)``;
        identical to RELION's ``Euler_angles2matrix``.
    """
    angles = np.asarray(angles_deg, dtype=np.float64)
    if angles.shape[-1] != 3:
        raise ValueError(f"Euler angles must have shape (..., 3), got {angles.shape}")
    lead = angles.shape[:-1]
    mats = Rotation.from_euler("ZYZ", angles.reshape(-1, 3), degrees=True).inv().as_matrix()
    return mats.reshape(*lead, 3, 3)


def matrix_to_euler(matrices: np.ndarray) -> np.ndarray:
    """Rotation matrix ``A`` -> RELION ``(rot, tilt, psi)`` in degrees; inverse of :func:`euler_to_matrix`.

    Parameters
    ----------
    matrices : array, shape ``(..., 3, 3)``

    Returns
    -------
    ndarray, shape ``(..., 3)``: rot and psi in (-180, 180], tilt in [0, 180].
    """
    mats = np.asarray(matrices, dtype=np.float64)
    if mats.shape[-2:] != (3, 3):
        raise ValueError(f"rotation matrices must have shape (..., 3, 3), got {mats.shape}")
    lead = mats.shape[:-2]
    import warnings

    with warnings.catch_warnings():
        # gimbal lock (tilt = 0 or 180) is fine: scipy sets the third angle to 0
        warnings.simplefilter("ignore", UserWarning)
        ang = Rotation.from_matrix(mats.reshape(-1, 3, 3)).inv().as_euler("ZYZ", degrees=True)
    return ang.reshape(*lead, 3)


def random_rotations(n: int, *, seed: int | np.random.Generator | None = None) -> np.ndarray:
    """``n`` rotation matrices drawn uniformly (Haar measure) from SO(3); shape ``(n, 3, 3)``."""
    rng = np.random.default_rng(seed)
    return Rotation.random(n, random_state=rng).as_matrix()


def sphere_directions(step_deg: float) -> np.ndarray:
    """Nearly uniform unit vectors on the sphere with neighbour spacing about ``step_deg``.

    A Fibonacci (golden-spiral) lattice; returns shape ``(n, 3)`` as ``(x, y, z)``.
    """
    if step_deg <= 0:
        raise ValueError(f"angular step must be > 0 degrees, got {step_deg}")
    step = math.radians(step_deg)
    # each point covers about step^2 of the sphere's 4*pi steradians (hexagonal packing factor)
    n = max(2, int(round(4 * math.pi / (step * step * math.sqrt(3) / 2))))
    i = np.arange(n) + 0.5
    z = 1 - 2 * i / n
    phi = math.pi * (1 + 5**0.5) * i
    r = np.sqrt(1 - z * z)
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=1)


def rotation_grid(step_deg: float, *, as_euler: bool = False) -> np.ndarray:
    """A grid covering SO(3) with about ``step_deg`` between neighbours.

    Directions of the particle's z axis on a Fibonacci sphere (``rot``, ``tilt``), times
    in-plane angles ``psi`` every ``step_deg``, turned so that the first element is the
    identity. Returns matrices ``(n, 3, 3)`` (or RELION Euler angles ``(n, 3)`` in degrees
    with ``as_euler=True``).
    """
    dirs = sphere_directions(step_deg)
    tilt = np.degrees(np.arccos(np.clip(dirs[:, 2], -1, 1)))
    rot = np.degrees(np.arctan2(dirs[:, 1], dirs[:, 0]))
    n_psi = max(1, int(round(360.0 / step_deg)))
    psi = np.arange(n_psi) * (360.0 / n_psi) - 180.0
    eul = np.empty((len(dirs) * n_psi, 3))
    eul[:, 0] = np.repeat(rot, n_psi)
    eul[:, 1] = np.repeat(tilt, n_psi)
    eul[:, 2] = np.tile(psi, len(dirs))
    mats = euler_to_matrix(eul)
    # right-multiplying every element by one fixed rotation keeps the cover uniform (Haar
    # measure is invariant) and makes the first element the identity, so "no rotation" is
    # always tested exactly
    mats = mats @ mats[0].T
    return matrix_to_euler(mats) if as_euler else mats


def local_rotation_grid(center: np.ndarray, *, max_angle_deg: float, step_deg: float) -> np.ndarray:
    """Rotations within ``max_angle_deg`` (geodesic) of ``center`` (3x3), spaced about ``step_deg``.

    Built as ``center @ exp(w)`` for rotation vectors ``w`` on a cubic lattice inside a ball;
    the centre itself is the first entry. Returns ``(n, 3, 3)``.
    """
    if max_angle_deg <= 0 or step_deg <= 0:
        raise ValueError("max_angle_deg and step_deg must be > 0")
    k = int(math.floor(max_angle_deg / step_deg))
    ax = np.arange(-k, k + 1) * math.radians(step_deg)
    w = np.stack(np.meshgrid(ax, ax, ax, indexing="ij"), -1).reshape(-1, 3)
    w = w[np.linalg.norm(w, axis=1) <= math.radians(max_angle_deg) + 1e-9]
    w = w[np.argsort(np.linalg.norm(w, axis=1), kind="stable")]
    return np.asarray(center, dtype=np.float64) @ Rotation.from_rotvec(w).as_matrix()


def nearest_rotation(matrices: np.ndarray) -> np.ndarray:
    """The proper rotation nearest (Frobenius) to each ``(..., 3, 3)`` matrix (``U diag(1, 1, det) V^T``), float64.

    Float32 network outputs are orthonormal only to ~1e-7, which reads as a few hundredths of a
    degree in :func:`geodesic_angle_deg` of a rotation with itself.
    """
    m = np.asarray(matrices, dtype=np.float64)
    u, _, vt = np.linalg.svd(m)
    d = np.sign(np.linalg.det(u @ vt))
    u[..., :, 2] *= d[..., None]
    return u @ vt


def geodesic_angle_deg(r1: np.ndarray, r2: np.ndarray) -> np.ndarray:
    """Geodesic angle between rotations, ``arccos((tr(R1 R2^T) - 1) / 2)`` in degrees; shapes broadcast ``(..., 3, 3)``.

    Computed as ``atan2(|M - M^T|_F / (2 sqrt 2), (tr M - 1) / 2)`` with ``M = R1 R2^T`` (the same angle):
    the arccos form loses precision near 0°, where float32 rotations compared with themselves came out
    up to 0.07° apart.
    """
    r1 = np.asarray(r1, dtype=np.float64)
    r2 = np.asarray(r2, dtype=np.float64)
    m = np.einsum("...ik,...jk->...ij", r1, r2)
    cos = (np.trace(m, axis1=-2, axis2=-1) - 1.0) / 2.0
    skew = m - np.swapaxes(m, -1, -2)
    sin = np.sqrt(np.einsum("...ij,...ij->...", skew, skew)) / (2.0 * np.sqrt(2.0))
    return np.degrees(np.arctan2(sin, cos))


def matrix_distance(r1: np.ndarray, r2: np.ndarray) -> np.ndarray:
    """Euclidean (Frobenius) norm of ``R1 - R2`` (the Gum-Net / Jim-Net rotation error), in ``[0, 2*sqrt(2)]``."""
    d = np.asarray(r1, dtype=np.float64) - np.asarray(r2, dtype=np.float64)
    return np.sqrt(np.einsum("...ij,...ij->...", d, d))


# ----------------------------------------------------------------------------------------
# Resampling helpers
# ----------------------------------------------------------------------------------------
def box_center(shape: Sequence[int]) -> tuple[int, ...]:
    """Index of the box centre for each axis: ``N // 2`` (the DC term after fftshift)."""
    return tuple(int(n) // 2 for n in shape)






def _batched(x: torch.Tensor, ndim: int) -> tuple[torch.Tensor, bool]:
    if x.ndim == ndim:
        return x.unsqueeze(0), True
    if x.ndim == ndim + 1:
        return x, False
    raise ValueError(f"expected a {ndim}-D array or a batch of them, got shape {tuple(x.shape)}")


def _float_batch(x, ndim: int) -> tuple[torch.Tensor, bool, bool]:
    """``x`` (an ``ndim``-D array or a batch of them) as a float tensor batch ``(B, *spatial)``, whether it was a
    single array (squeeze the result) and whether it was numpy (return numpy)."""
    t, was_np = _as_tensor(x)
    if not t.is_floating_point():
        t = t.float()
    t, squeeze = _batched(t, ndim)
    return t, squeeze, was_np


def _to_caller(out: torch.Tensor, squeeze: bool, was_np: bool):
    """The result of a batch made by :func:`_float_batch` in the caller's form."""
    return _back(out[0] if squeeze else out, was_np)


def _per_batch(m, batch: int, want: tuple[int, ...], like: torch.Tensor, name: str) -> torch.Tensor:
    """``m`` as a (batch, *want) tensor on ``like``'s device and dtype; a single ``want``-shaped value is broadcast."""
    t, _ = _as_tensor(m, dtype=like.dtype)
    t = t.to(like.device)
    if tuple(t.shape) == want:
        t = t.expand(batch, *want)
    if t.ndim != len(want) + 1 or t.shape[0] != batch or tuple(t.shape[1:]) != want:
        raise ValueError(f"{name} must have shape {want} or ({batch}, *{want}), got {tuple(t.shape)}")
    return t


_MODES = {"linear": "bilinear", "nearest": "nearest"}


def _sample(vol: torch.Tensor, src_idx: torch.Tensor, *, mode: str, padding: str) -> torch.Tensor:
    """Sample ``vol`` (B, *spatial) at voxel-index coordinates ``src_idx`` (B, *spatial_out, ndim) in (x, y[, z]) order."""
    spatial = vol.shape[1:]
    sizes = torch.tensor(spatial[::-1], dtype=src_idx.dtype, device=src_idx.device)  # (x, y[, z]) sizes
    norm = 2.0 * src_idx / (sizes - 1).clamp(min=1) - 1.0
    if mode not in _MODES:
        raise ValueError(f"interpolation must be one of {sorted(_MODES)}, got {mode!r}")
    out = F.grid_sample(
        vol.unsqueeze(1),
        norm.to(vol.dtype),
        mode=_MODES[mode],
        padding_mode=padding,
        align_corners=True,
    )
    return out.squeeze(1)


def _index_grid(shape: Sequence[int], device, dtype) -> torch.Tensor:
    """Coordinates relative to the box centre, (..., ndim) in (x, y[, z]) order, for a (z, y, x)/(y, x) shape."""
    axes = [torch.arange(n, device=device, dtype=dtype) - (n // 2) for n in shape]
    grids = torch.meshgrid(*axes, indexing="ij")
    return torch.stack(grids[::-1], dim=-1)


def _rotate_batch(x: torch.Tensor, rot: torch.Tensor, shift, *, interpolation: str, padding: str) -> torch.Tensor:
    """``out(R @ (r - c) + c + shift) = in(r)`` for a batch ``x`` ``(B, *spatial)`` (2 or 3 spatial axes),
    ``rot`` ``(B, d, d)`` on ``(x, y[, z])``, ``shift`` None or ``(d,)`` / ``(B, d)`` in ``(x, y[, z])``."""
    b, spatial = x.shape[0], x.shape[1:]
    nd = len(spatial)
    p = _index_grid(spatial, x.device, x.dtype)  # (*spatial, d) relative to the centre
    if shift is not None:
        s = _per_batch(shift, b, (nd,), x, "shift")
        p = p.unsqueeze(0) - s.view(b, *([1] * nd), nd)
    else:
        p = p.unsqueeze(0).expand(b, *p.shape)
    # source = R^T p  ->  row-vector form: p @ R
    src = torch.einsum("b...i,bij->b...j", p, rot)
    c = torch.tensor(box_center(spatial)[::-1], dtype=x.dtype, device=x.device)
    return _sample(x, src + c, mode=interpolation, padding=padding)


# ----------------------------------------------------------------------------------------
# Volumes
# ----------------------------------------------------------------------------------------
def rotate_volume(
    volume,
    rotation,
    *,
    shift=None,
    interpolation: str = "linear",
    padding: str = "zeros",
):
    """Rotate volume(s) about the box centre, then shift: ``out(R @ (r - c) + c + shift) = in(r)``.

    Parameters
    ----------
    volume : tensor or array, shape ``(z, y, x)`` or ``(B, z, y, x)``
    rotation : shape ``(3, 3)`` or ``(B, 3, 3)``, acting on ``(x, y, z)``
    shift : shape ``(3,)`` or ``(B, 3)``, voxels in ``(x, y, z)``, applied after the rotation
    interpolation : ``"linear"`` (trilinear) or ``"nearest"``
    padding : ``"zeros"``, ``"border"`` or ``"reflection"`` for samples outside the box

    Returns
    -------
    Same type, shape and device as ``volume``.
    """
    vol, squeeze, was_np = _float_batch(volume, 3)
    rot = _per_batch(rotation, vol.shape[0], (3, 3), vol, "rotation")
    return _to_caller(_rotate_batch(vol, rot, shift, interpolation=interpolation, padding=padding), squeeze, was_np)


def shift_phase_ramp(spatial, shift: torch.Tensor) -> torch.Tensor:
    """The rfft-layout phase factors ``exp(-2 pi i k . shift)`` of a periodic shift.

    ``spatial``: the real-space shape ``(z, y, x)`` or ``(y, x)``; ``shift`` ``(B, ndim)`` in
    ``(x, y[, z])`` order. Multiplying ``rfftn(x)`` by the result gives ``out(r + shift) = in(r)``.
    Returns complex ``(B, *spatial[:-1], spatial[-1] // 2 + 1)``.
    """
    ndim = len(spatial)
    ramp = None
    for axis in range(ndim):  # axis in array order (z, y, x) / (y, x); separable: one 1-D factor per axis
        n = spatial[axis]
        if axis == ndim - 1:
            k = torch.fft.rfftfreq(n, device=shift.device, dtype=shift.dtype)
        else:
            k = torch.fft.fftfreq(n, device=shift.device, dtype=shift.dtype)
        s = shift[:, ndim - 1 - axis]  # shift component along this array axis
        view = [shift.shape[0]] + [1] * ndim
        view[axis + 1] = -1
        term = torch.polar(torch.ones((), dtype=shift.dtype, device=shift.device),
                           -2.0 * math.pi * s[:, None] * k[None, :]).view(view)
        ramp = term if ramp is None else ramp * term
    return ramp


def _fourier_shift(x: torch.Tensor, shift: torch.Tensor, ndim: int) -> torch.Tensor:
    """Sub-voxel periodic shift by phase ramps. ``x`` (B, *spatial), ``shift`` (B, ndim) in (x, y[, z])."""
    spatial = x.shape[1:]
    dims = tuple(range(1, ndim + 1))
    X = torch.fft.rfftn(x, dim=dims) * shift_phase_ramp(spatial, shift.to(x.dtype))
    return torch.fft.irfftn(X, s=spatial, dim=dims)


def shift_volume(volume, shift):
    """Shift volume(s) by ``shift`` voxels ``(x, y, z)`` with sub-voxel accuracy (Fourier phase ramp, periodic).

    ``out(r + shift) = in(r)``. Shapes: volume ``(z, y, x)`` or ``(B, z, y, x)``; shift ``(3,)`` or ``(B, 3)``.
    """
    vol, squeeze, was_np = _float_batch(volume, 3)
    s = _per_batch(shift, vol.shape[0], (3,), vol, "shift")
    return _to_caller(_fourier_shift(vol, s, 3), squeeze, was_np)


def align_particle_to_reference(volume, rotation, origin_voxels=None, *, interpolation: str = "linear"):
    """Bring particle subtomogram(s) into the reference frame, per RELION's conventions.

    Shifts by ``+origin`` (``rlnOrigin*Angst / voxel_size``, ``(x, y, z)``) so that the
    particle's centre lands on ``N // 2``, then rotates by ``A.T`` where ``A`` is the
    matrix of the particle's Euler angles. ``out(r) = in(A @ (r - c) + c - origin)``.

    Shapes: volume ``(z, y, x)`` or ``(B, z, y, x)``; rotation ``(3, 3)``/``(B, 3, 3)``;
    origin ``(3,)``/``(B, 3)`` or None.
    """
    vol, squeeze, was_np = _float_batch(volume, 3)
    b = vol.shape[0]
    a = _per_batch(rotation, b, (3, 3), vol, "rotation")
    a_t = a.transpose(-1, -2)
    shift = None
    if origin_voxels is not None:
        o = _per_batch(origin_voxels, b, (3,), vol, "origin")
        shift = torch.einsum("bij,bj->bi", a_t, o)
    return _to_caller(_rotate_batch(vol, a_t, shift, interpolation=interpolation, padding="zeros"), squeeze, was_np)


def transform_reference_to_particle(reference, rotation, origin_voxels=None, *, interpolation: str = "linear"):
    """Make reference(s) look like the particle: rotate by ``A`` then shift by ``-origin``.

    The inverse of :func:`align_particle_to_reference` (up to interpolation):
    ``out(A @ (r - c) + c - origin) = reference(r)``.
    """
    ref, squeeze, was_np = _float_batch(reference, 3)
    b = ref.shape[0]
    rot = _per_batch(rotation, b, (3, 3), ref, "rotation")
    shift = None
    if origin_voxels is not None:
        shift = -_per_batch(origin_voxels, b, (3,), ref, "origin")
    return _to_caller(_rotate_batch(ref, rot, shift, interpolation=interpolation, padding="zeros"), squeeze, was_np)


# ----------------------------------------------------------------------------------------
# Images
# ----------------------------------------------------------------------------------------
def angle_to_matrix_2d(angle_deg) -> np.ndarray:
    """Counter-clockwise in-plane rotation by ``angle_deg`` acting on ``(x, y)``; shape ``(..., 2, 2)``."""
    a = np.radians(np.asarray(angle_deg, dtype=np.float64))
    c, s = np.cos(a), np.sin(a)
    return np.stack([np.stack([c, -s], -1), np.stack([s, c], -1)], -2)


def rotate_image(image, rotation, *, shift=None, interpolation: str = "linear", padding: str = "zeros"):
    """Rotate image(s) about the centre, then shift: ``out(R @ (r - c) + c + shift) = in(r)``.

    ``image``: ``(y, x)`` or ``(B, y, x)``; ``rotation``: a 2x2 matrix on ``(x, y)`` (or ``(B, 2, 2)``),
    or an angle in degrees (scalar or ``(B,)``); ``shift``: ``(2,)``/``(B, 2)`` pixels in ``(x, y)``.
    """
    img, squeeze, was_np = _float_batch(image, 2)
    rot_np = np.asarray(rotation.detach().cpu() if isinstance(rotation, torch.Tensor) else rotation)
    if rot_np.shape[-2:] != (2, 2):
        rot_np = angle_to_matrix_2d(rot_np)
    rot = _per_batch(rot_np, img.shape[0], (2, 2), img, "rotation")
    return _to_caller(_rotate_batch(img, rot, shift, interpolation=interpolation, padding=padding), squeeze, was_np)


def shift_image(image, shift):
    """Shift image(s) by ``shift`` pixels ``(x, y)``, sub-pixel, by Fourier phase ramp: ``out(r + shift) = in(r)``."""
    img, squeeze, was_np = _float_batch(image, 2)
    s = _per_batch(shift, img.shape[0], (2,), img, "shift")
    return _to_caller(_fourier_shift(img, s, 2), squeeze, was_np)
