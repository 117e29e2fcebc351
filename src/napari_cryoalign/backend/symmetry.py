"""Point-group symmetry in RELION's axis conventions: groups, equivalent poses, errors, symmetrisation.

Groups by their usual names (``../shared/CONVENTIONS.md``): ``C1``, ``Cn``, ``Dn``, ``T``, ``O``,
``I`` (= RELION's default ``I2``), ``I1`` ... ``I4``. The axes are RELION's (``symmetries.cpp``):

* ``Cn``: n-fold axis along z;
* ``Dn``: n-fold along z, 2-fold along x;
* ``T``: 3-fold along z, 2-fold along (0, 0.816496, 0.577350);
* ``O``: 3-fold along (1, 1, 1)/√3, 4-fold along z;
* ``I1``: 2-fold along x, 5-fold along (0.850651, 0, −0.525731), 3-fold along (0.934172, 0.356822, 0);
* ``I2`` (= ``I``): 2-fold along z, 5-fold along (0.525731, 0, 0.850651), 3-fold along (0, 0.356822, 0.934172);
* ``I3``: 2-fold along (−0.525731, 0, 0.850651), 5-fold along z;
* ``I4``: 2-fold along (0.525731, 0, 0.850651), 5-fold along (0.894427, 0, 0.447214).

A group is returned as rotation matrices ``g`` acting on ``(x, y, z)`` column vectors about
the box centre, identity first. A map ``V`` has the symmetry when ``V(g r) = V(r)`` for all
``g``. With the project's pose convention (``particle(A r) = reference(r)``, RELION's
``Euler_angles2matrix``), a particle of a symmetric reference is explained equally well by
every ``A g`` (right multiplication): ``particle(A g r) = reference(g r) = reference(r)``.
So the angular error between a predicted and a true pose is
``min_g angle(A_pred g, A_true)``, which is CESPED's error (its scipy rotations are ``A^T``,
and it multiplies the symmetry on the left of those).
"""

from __future__ import annotations

import re

import numpy as np

from ..errors import InputError

__all__ = [
    "point_group",
    "group_order",
    "normalize_symmetry",
    "equivalent_rotations",
    "symmetric_angle_deg",
    "closest_equivalent",
    "symmetrize_volume",
    "reduce_rotation_grid",
]

_GOLD = (1 + 5 ** 0.5) / 2

# RELION's generator axes (unit vectors are normalised below), (fold, axis) pairs.
_GENERATORS = {
    "T": [(3, (0.0, 0.0, 1.0)), (2, (0.0, 0.816496, 0.577350))],
    "O": [(3, (1.0, 1.0, 1.0)), (4, (0.0, 0.0, 1.0))],
    "I1": [(2, (1.0, 0.0, 0.0)), (5, (0.85065080702670, 0.0, -0.5257311142635)), (3, (0.9341723640, 0.3568220765, 0.0))],
    "I2": [(2, (0.0, 0.0, 1.0)), (5, (0.525731114, 0.0, 0.850650807)), (3, (0.0, 0.356822076, 0.934172364))],
    "I3": [(2, (-0.5257311143, 0.0, 0.8506508070)), (5, (0.0, 0.0, 1.0))],
    "I4": [(2, (0.5257311143, 0.0, 0.8506508070)), (5, (0.8944271932547096, 0.0, 0.4472135909903704))],
}

_NAME = re.compile(r"^\s*([CDcd])\s*(\d+)\s*$|^\s*([TOto])\s*$|^\s*([Ii])\s*([1-4]?)\s*$")


def _axis_angle(axis, angle: float) -> np.ndarray:
    k = np.asarray(axis, dtype=np.float64)
    k = k / np.linalg.norm(k)
    kx = np.array([[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]])
    return np.eye(3) + np.sin(angle) * kx + (1.0 - np.cos(angle)) * (kx @ kx)


def _closure(generators: list[np.ndarray], *, limit: int = 60) -> np.ndarray:
    """All products of the generators (a finite group), identity first."""
    elems = [np.eye(3)]
    queue = [np.eye(3)]
    while queue:
        cur = queue.pop()
        for g in generators:
            new = g @ cur
            if not any(np.abs(new - e).max() < 1e-4 for e in elems):
                elems.append(new)
                queue.append(new)
                if len(elems) > limit:
                    raise RuntimeError("symmetry generators do not close into a point group")
    return np.stack(elems)


def normalize_symmetry(name: str) -> str:
    """The canonical name of a point group (``"c1"`` -> ``"C1"``, ``"I"`` -> ``"I2"``, ``"d2"`` -> ``"D2"``).

    Raises :class:`InputError` for anything that is not C<n>, D<n>, T, O, I or I1-I4.
    """
    m = _NAME.match(str(name))
    if m is None or (m.group(2) is not None and int(m.group(2)) < 1):
        raise InputError("a point group C<n>, D<n> (n >= 1), T, O, I or I1-I4", field="symmetry", got=repr(name))
    if m.group(1):
        return f"{m.group(1).upper()}{int(m.group(2))}"
    if m.group(3):
        return m.group(3).upper()
    return f"I{m.group(5) or 2}"


def point_group(name: str) -> np.ndarray:
    """Rotation matrices of a point group, shape ``(|G|, 3, 3)``, float64, identity first.

    Acting on ``(x, y, z)`` column vectors about the box centre, RELION's axes (module docstring).
    """
    sym = normalize_symmetry(name)
    kind = sym[0]
    if kind == "C" or kind == "D":
        n = int(sym[1:])
        cn = [_axis_angle((0, 0, 1), 2 * np.pi * k / n) for k in range(n)]
        if kind == "C":
            return np.stack(cn)
        flip = _axis_angle((1, 0, 0), np.pi)
        return np.stack(cn + [c @ flip for c in cn])
    gens = [_axis_angle(axis, 2 * np.pi / fold) for fold, axis in _GENERATORS[sym]]
    group = _closure(gens)
    expected = {"T": 12, "O": 24}.get(sym, 60)
    if len(group) != expected:  # pragma: no cover - guards the tables above
        raise RuntimeError(f"{sym}: generated {len(group)} elements, expected {expected}")
    return group


def group_order(name: str) -> int:
    """``|G|``: 1 for C1, n for Cn, 2n for Dn, 12 for T, 24 for O, 60 for I."""
    sym = normalize_symmetry(name)
    if sym[0] == "C":
        return int(sym[1:])
    if sym[0] == "D":
        return 2 * int(sym[1:])
    return {"T": 12, "O": 24}.get(sym, 60)


def equivalent_rotations(rotations: np.ndarray, symmetry: str) -> np.ndarray:
    """Every pose equivalent under the group: ``A g`` for each ``g``, shape ``(n, |G|, 3, 3)``.

    ``rotations``: ``(n, 3, 3)`` (or ``(3, 3)``) RELION matrices ``A`` (reference -> particle).
    """
    a = np.asarray(rotations, dtype=np.float64)
    single = a.ndim == 2
    a = a.reshape(-1, 3, 3)
    out = np.einsum("nij,gjk->ngik", a, point_group(symmetry))
    return out[0] if single else out


def _angle(cos_arg: np.ndarray) -> np.ndarray:
    return np.degrees(np.arccos(np.clip(cos_arg, -1.0, 1.0)))


def symmetric_angle_deg(predicted: np.ndarray, true: np.ndarray, symmetry: str = "C1") -> np.ndarray:
    """Geodesic angle in degrees between poses, minimised over the group: ``min_g angle(A_pred g, A_true)``.

    ``predicted``, ``true``: ``(n, 3, 3)`` (or ``(3, 3)``) RELION matrices. Returns ``(n,)`` (or a float).
    This is CESPED's per-particle angular error; its mean is MAnE.
    """
    p = np.asarray(predicted, dtype=np.float64)
    t = np.asarray(true, dtype=np.float64)
    single = p.ndim == 2 and t.ndim == 2
    p, t = p.reshape(-1, 3, 3), t.reshape(-1, 3, 3)
    if p.shape != t.shape:
        raise InputError(f"two sets of rotation matrices of the same shape ({p.shape})", field="true", got=t.shape)
    eq = equivalent_rotations(p, symmetry)  # (n, G, 3, 3)
    tr = np.einsum("ngij,nij->ng", eq, t)  # trace(A_pred g  A_true^T)
    err = _angle((tr.max(axis=1) - 1.0) / 2.0)
    return float(err[0]) if single else err


def closest_equivalent(rotations: np.ndarray, target: np.ndarray, symmetry: str) -> np.ndarray:
    """The symmetry mate ``A g`` of each rotation that is closest to ``target`` (same shapes as the input)."""
    a = np.asarray(rotations, dtype=np.float64)
    single = a.ndim == 2
    a = a.reshape(-1, 3, 3)
    t = np.broadcast_to(np.asarray(target, dtype=np.float64).reshape(-1, 3, 3), a.shape)
    eq = equivalent_rotations(a, symmetry)
    best = np.einsum("ngij,nij->ng", eq, t).argmax(axis=1)
    out = eq[np.arange(len(a)), best]
    return out[0] if single else out


def symmetrize_volume(volume, symmetry: str, *, interpolation: str = "linear"):
    """Average of a ``(z, y, x)`` volume over the group, ``mean_g V(g^T r)``, about the box centre ``N//2``.

    The result has the symmetry exactly up to interpolation. Numpy in, numpy out (torch in, torch out).
    """
    import torch

    from ._tensor import as_tensor, to_caller
    from .geometry import rotate_volume

    group = point_group(symmetry)
    vol, was_np = as_tensor(volume, dtype=torch.float32)  # copies read-only arrays (cached maps)
    if len(group) == 1:
        out = vol.clone()
    else:
        rots = torch.as_tensor(group, dtype=vol.dtype, device=vol.device)
        out = torch.zeros_like(vol)
        for start in range(0, len(group), 12):
            r = rots[start:start + 12]
            out += rotate_volume(vol[None].expand(len(r), *vol.shape), r, interpolation=interpolation).sum(0)
        out /= len(group)
    return to_caller(out, was_np)


def reduce_rotation_grid(rotations: np.ndarray, symmetry: str) -> np.ndarray:
    """The rotations of a grid that are distinct up to the group: one of each set of mates ``{A g}``.

    ``rotations``: ``(M, 3, 3)`` RELION matrices, e.g. ``geometry.rotation_grid(step)``. Greedy, in
    grid order: a rotation is kept unless one of its mates ``A g`` lies within 0.7 of the grid's
    spacing (median nearest-neighbour angle) of a kept one; a search over the result covers
    SO(3)/G with about ``M / |G|`` rotations (30° grid: 636 -> C2 342, D8 69, O 46, I 22).
    Returns indices into ``rotations`` (sorted); all of them for C1.
    """
    a = np.asarray(rotations, dtype=np.float64).reshape(-1, 3, 3)
    group = point_group(symmetry)
    if len(group) == 1 or len(a) < 2:
        return np.arange(len(a))
    # the grid's spacing: median nearest-neighbour angle
    tr = np.einsum("mij,nij->mn", a, a)
    np.fill_diagonal(tr, -1.0)
    spacing = float(np.median(_angle((tr.max(1) - 1.0) / 2.0)))
    cos_lim = np.cos(np.radians(0.7 * spacing)) * 2.0 + 1.0  # trace threshold
    mates = np.einsum("mij,gjk->mgik", a, group)  # (M, G, 3, 3)
    # trace(A_m g B_n^T) for all m, g, n: the closeness of n to any mate of m
    close = np.einsum("mgij,nij->mgn", mates, a).max(1) > cos_lim  # (M, M)
    keep = []
    covered = np.zeros(len(a), dtype=bool)
    for m in range(len(a)):
        if covered[m]:
            continue
        keep.append(m)
        covered |= close[m]
    return np.asarray(keep, dtype=np.int64)
