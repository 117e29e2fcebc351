"""Variants of a structure map that make particle picking hard: look-alikes and heterogeneity.

On real data a template matcher does not only have to find the target among noise: the cell
holds particles that look like the target but are not it, the target itself is heterogeneous,
and the template is never the exact particle. This module derives such variants from one map
(numpy/scipy/torch only), so that the tomogram simulator
(:func:`~napari_cryoalign.backend.simulate.tomogram.simulate_tomogram_job`, ``maps=``) can put
them into a sample whose truth says which particle is what:

* :func:`split_domains` - the map cut into ``n`` spatially coherent domains at its
  lowest-density interfaces (for the 80S ribosome with ``n=2``: roughly the large and the
  small subunit). The other functions build on it.
* :func:`subcomplex` - only some domains kept, softly masked: **a partially assembled
  complex** or a dissociated part (a free 60S subunit among 80S ribosomes, a half-assembled
  chaperonin). It is part of the target, so it correlates with the target's template - a
  look-alike that must *not* be picked.
* :func:`second_conformation` - one domain turned by a few degrees about a hinge through the
  domain interface: **a second conformation** (a ratcheted ribosome, an open and a closed
  clamp). It is still the target and should be picked, but matches its template less well.
* :func:`partial_occupancy` - a compact peripheral region holding a given fraction of the
  density removed: **substoichiometric subunits** or flexible parts averaged away (a missing
  stalk, an unbound factor). Several copies with different seeds give per-particle
  heterogeneity; each is still the target.
* :func:`.lookalikes.lookalike_species` (its own module) - everything a picking benchmark
  needs for one target at one voxel size: the maps, which are targets and which look-alikes,
  and the mismatched templates a user might really have.

The picking benchmark of issue 17 uses the target's variants as true targets and the
sub-complex plus other packaged species of similar size and density (``cct``, ``mtor``, passed
as ``structures=``) as look-alikes; it scores picks against the truth classes of the
simulation (``truth.class_names[k - 1]`` for class ``k``; ``maps`` are listed before
``structures``).

Conventions: volumes are ``(z, y, x)`` arrays with the box centre at index ``N // 2``;
positions, rotation axes and matrices are in ``(x, y, z)`` voxel coordinates (the project's
``CONVENTIONS.md``). Soft edges are Gaussian standard deviations in voxels. "Mass" is the
plain sum of the map (its integral, proportional to the number of atoms for the packaged maps).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from scipy import ndimage as ndi
from scipy import sparse
from scipy.sparse.linalg import eigsh
from scipy.spatial.transform import Rotation
from scipy.special import erfc

from ...errors import InputError
from ..geometry import rotate_volume

__all__ = [
    "DEFAULT_THRESHOLD_FRACTION",
    "split_domains",
    "subcomplex",
    "second_conformation",
    "partial_occupancy",
]

#: default density threshold of the domain split, as a fraction of the map's maximum: for the
#: packaged 25 Å maps this level encloses 95-97 % of the mass (ribosome at 20 and 10 Å voxels)
DEFAULT_THRESHOLD_FRACTION = 0.1


#: the graph of :func:`split_domains` is built on a grid where the radius of gyration is at most this many voxels
_COARSE_RG_VOXELS = 10.0


# ----------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------
def _as_volume(volume, name: str = "volume") -> np.ndarray:
    """A ``(z, y, x)`` float64 copy of ``volume`` with a positive maximum (numpy or torch in)."""
    if hasattr(volume, "detach"):
        volume = volume.detach().cpu().numpy()
    v = np.array(volume, dtype=np.float64, copy=True)
    if v.ndim != 3 or min(v.shape) < 3:
        raise InputError("a (z, y, x) volume at least 3 voxels on each axis", field=name, got=f"shape {v.shape}")
    if not np.all(np.isfinite(v)) or v.max() <= 0:
        raise InputError("a finite map with positive density", field=name, got=f"max {v.max()}")
    return v


def _threshold(v: np.ndarray, threshold: float | None) -> float:
    thr = DEFAULT_THRESHOLD_FRACTION * float(v.max()) if threshold is None else float(threshold)
    if not np.isfinite(thr) or thr >= v.max():
        raise InputError(f"a threshold below the map's maximum {v.max():.4g}", field="threshold", got=threshold)
    return thr


def _positions_xyz(shape) -> np.ndarray:
    """``(z, y, x, 3)`` voxel positions in ``(x, y, z)`` order (array indices, not centred)."""
    zz, yy, xx = np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij")
    return np.stack([xx, yy, zz], axis=-1)


def _centroid_xyz(v: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Density-weighted centroid ``(x, y, z)`` (voxel indices) of the positive density in ``mask``."""
    w = np.where(mask, np.clip(v, 0.0, None), 0.0)
    idx = np.nonzero(w)
    if len(idx[0]) == 0:
        idx = np.nonzero(mask)
        wt = np.ones(len(idx[0]))
    else:
        wt = w[idx]
    zyx = np.stack(idx, axis=1).astype(np.float64)
    return (zyx * wt[:, None]).sum(0)[::-1] / wt.sum()


def _radius_of_gyration(v: np.ndarray, mask: np.ndarray) -> float:
    c = _centroid_xyz(v, mask)[::-1]
    idx = np.nonzero(mask)
    w = np.clip(v[idx], 0.0, None) + 1e-12
    d2 = ((np.stack(idx, axis=1) - c) ** 2).sum(1)
    return float(np.sqrt((w * d2).sum() / w.sum()))


def _territories(labels: np.ndarray) -> np.ndarray:
    """Every voxel of the box given the label of the nearest labelled voxel (Euclidean)."""
    if not np.any(labels > 0):
        raise InputError("labels with at least one domain", field="labels", got="all zero")
    if np.all(labels > 0):
        return labels.copy()
    idx = ndi.distance_transform_edt(labels == 0, return_distances=False, return_indices=True)
    return labels[tuple(idx)]


def _check_labels(labels, shape) -> np.ndarray:
    lab = np.asarray(labels)
    if lab.shape != tuple(shape) or not np.issubdtype(lab.dtype, np.integer):
        raise InputError(f"integer domain labels of shape {tuple(shape)}", field="labels",
                         got=f"{lab.dtype} {lab.shape}")
    return lab


def _soft(mask: np.ndarray, soft_edge: float) -> np.ndarray:
    """A 0/1 mask blurred by a Gaussian of ``soft_edge`` voxels (values in [0, 1])."""
    if soft_edge < 0:
        raise InputError("a soft edge >= 0 voxels", field="soft_edge", got=soft_edge)
    m = mask.astype(np.float64)
    return np.clip(ndi.gaussian_filter(m, soft_edge, mode="nearest"), 0.0, 1.0) if soft_edge > 0 else m


# ----------------------------------------------------------------------------------------
# Domains
# ----------------------------------------------------------------------------------------
def _edges(mask: np.ndarray, dens: np.ndarray):
    """6-neighbour edges inside ``mask`` (nodes numbered in C order of the mask's voxels): endpoints
    ``i, j`` and weights ``min(d_i, d_j)²`` (the density a cut has to go through)."""
    node = -np.ones(mask.shape, np.int64)
    node[mask] = np.arange(int(mask.sum()))
    d = np.clip(dens, 0.0, None)
    ii, jj, ww = [], [], []
    for ax in range(3):
        a = [slice(None)] * 3
        b = [slice(None)] * 3
        a[ax], b[ax] = slice(0, -1), slice(1, None)
        na, nb = node[tuple(a)], node[tuple(b)]
        ok = (na >= 0) & (nb >= 0)
        ii.append(na[ok])
        jj.append(nb[ok])
        ww.append(np.minimum(d[tuple(a)][ok], d[tuple(b)][ok]) ** 2)
    w = np.concatenate(ww)
    return np.concatenate(ii), np.concatenate(jj), w + 1e-12 * max(float(w.max(initial=0.0)), 1e-30)


def _fiedler_cut(dens: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Split the voxels of ``mask`` in two: a normalised cut along the Fiedler vector of the
    density-weighted voxel graph (the sweep cut with the lowest normalised cut). Returns a bool
    array, True on one side."""
    i, j, w = _edges(mask, dens)
    n = int(mask.sum())
    deg = np.bincount(i, weights=w, minlength=n) + np.bincount(j, weights=w, minlength=n)
    deg = np.maximum(deg, 1e-30)
    dinv = 1.0 / np.sqrt(deg)
    ws = w * dinv[i] * dinv[j]
    lap = sparse.identity(n, format="csc") - sparse.csc_matrix(
        (np.concatenate([ws, ws]), (np.concatenate([i, j]), np.concatenate([j, i]))), shape=(n, n))
    if n <= 400:
        _, vecs = np.linalg.eigh(lap.toarray())
    else:
        vals, vecs = eigsh(lap, k=2, sigma=-1e-3, which="LM", v0=rng.standard_normal(n))
        vecs = vecs[:, np.argsort(vals)]
    f = vecs[:, 1] * dinv
    order = np.argsort(f, kind="stable")
    rank = np.empty(n, np.int64)
    rank[order] = np.arange(n)
    lo, hi = np.minimum(rank[i], rank[j]), np.maximum(rank[i], rank[j])
    diff = np.bincount(lo + 1, weights=w, minlength=n + 1) - np.bincount(hi + 1, weights=w, minlength=n + 1)
    cut = np.cumsum(diff)[1:n]  # cut[k - 1]: the first k voxels of the order against the rest
    vol_s = np.cumsum(deg[order])[: n - 1]
    vol = deg.sum()
    ncut = cut / vol_s + cut / np.maximum(vol - vol_s, 1e-300)
    k = int(np.argmin(ncut)) + 1
    side = np.zeros(n, bool)
    side[order[:k]] = True
    out = np.zeros(mask.shape, bool)
    out[mask] = side
    return out


def _coherent_halves(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Give stray pieces of one side to the other until each side is one connected piece (6-connectivity)."""
    for _ in range(10):
        changed = False
        for x, y in ((a, b), (b, a)):
            lab, k = ndi.label(x)
            if k > 1:
                sizes = np.bincount(lab.ravel())[1:]
                stray = (lab > 0) & (lab != 1 + int(np.argmax(sizes)))
                x[stray] = False
                y[stray] = True
                changed = True
        if not changed:
            break
    return a, b


def _coherent_labels(labels: np.ndarray, n: int) -> np.ndarray:
    """Give each stray piece of a domain (not its largest piece) to the domain it touches most, so that
    every domain is one connected piece wherever the molecule is (6-connectivity)."""
    for _ in range(10):
        changed = False
        for k in range(1, n + 1):
            comp, m = ndi.label(labels == k)
            if m <= 1:
                continue
            main = 1 + int(np.argmax(np.bincount(comp.ravel())[1:]))
            for c, sl in enumerate(ndi.find_objects(comp), start=1):
                if c == main:
                    continue
                sl = tuple(slice(max(0, s.start - 1), s.stop + 1) for s in sl)
                piece = comp[sl] == c
                nb = labels[sl][ndi.binary_dilation(piece) & ~piece]
                nb = nb[(nb > 0) & (nb != k)]
                if nb.size:
                    labels[sl][piece] = int(np.argmax(np.bincount(nb)))
                    changed = True
        if not changed:
            break
    return labels


def split_domains(volume, *, n: int = 2, threshold: float | None = None, seed: int = 0,
                  smooth: float = 0.2) -> np.ndarray:
    """Split the density of a map into ``n`` spatially coherent domains.

    The voxels above ``threshold`` are the molecule. Domains are found by recursive spectral
    bisection (normalised cut) of the voxel graph whose 6-neighbour edges weigh ``min(d_i, d_j)²``
    of the map smoothed by a Gaussian of ``smooth`` times the radius of gyration: each cut goes
    through the lowest-density interface that still leaves two sizeable parts (the domain holding
    the most mass is split next). For the 80S ribosome with ``n=2`` the two domains are roughly
    the two subunits (about 60 % and 40 % of the mass). The graph is built on a grid coarse
    enough that the radius of gyration spans at most 10 voxels, so the split hardly depends on
    the voxel size. Each domain is one connected piece of the molecule (6-connectivity; islands
    of the thresholded map that touch no other domain join the nearest one).

    Parameters
    ----------
    volume : array ``(z, y, x)`` (numpy or torch), the density (protein positive)
    n : number of domains (>= 1)
    threshold : density level of the molecule; None: ``DEFAULT_THRESHOLD_FRACTION`` (0.1) times
        the map's maximum
    seed : seed of the eigen-solver's start vector (the result does not depend on it in
        practice; a given seed always gives the same labels)
    smooth : Gaussian smoothing of the graph's density, as a fraction of the radius of gyration
        (0 = none; fine detail then makes the cut follow small gaps)

    Returns
    -------
    labels : int32 ndarray ``(z, y, x)``; 0 outside (at or below ``threshold``), domains
        ``1..n`` ordered by mass, 1 the most massive
    """
    v = _as_volume(volume)
    if int(n) != n or n < 1:
        raise InputError("a number of domains >= 1", field="n", got=n)
    n = int(n)
    thr = _threshold(v, threshold)
    inside = v > thr
    if n == 1:
        return inside.astype(np.int32)
    rng = np.random.default_rng(seed)
    rg = _radius_of_gyration(v, inside)
    step = max(1, math.ceil(rg / _COARSE_RG_VOXELS))
    s = ndi.gaussian_filter(v, smooth * rg, mode="constant") if smooth > 0 else v
    sc = s[::step, ::step, ::step]
    graph = sc > (thr / v.max()) * sc.max()
    lab, k = ndi.label(graph)
    if k > 1:
        graph = lab == 1 + int(np.argmax(np.bincount(lab.ravel())[1:]))
    domains = [graph]
    while len(domains) < n:
        masses = [sc[d].sum() if d.sum() >= 8 else -np.inf for d in domains]
        big = int(np.argmax(masses))
        if not np.isfinite(masses[big]):
            raise InputError(f"a map large enough to split into {n} domains", field="n", got=n)
        side = _fiedler_cut(sc, domains[big], rng)
        a, b = _coherent_halves(side, domains[big] & ~side)
        domains[big:big + 1] = [a, b]
    coarse = np.zeros(sc.shape, np.int32)
    for k, d in enumerate(domains, start=1):
        coarse[d] = k
    # back to the input grid: nearest coarse voxel, then the molecule's voxels from the nearest domain
    near = [np.minimum(np.round(np.arange(m) / step).astype(np.int64), c - 1) for m, c in zip(v.shape, sc.shape)]
    fine = coarse[np.ix_(*near)]
    seeds = np.where(inside, fine, 0)
    labels = _coherent_labels(np.where(inside, _territories(seeds if np.any(seeds > 0) else fine), 0), n)
    # order by mass, 1 the most massive
    masses = np.array([v[labels == k].sum() for k in range(1, n + 1)])
    remap = np.zeros(n + 1, np.int32)
    remap[1 + np.argsort(-masses, kind="stable")] = np.arange(1, n + 1)
    return remap[labels].astype(np.int32)


def _labels_for(v: np.ndarray, labels, *, n: int, threshold, seed: int) -> np.ndarray:
    if labels is None:
        return split_domains(v, n=n, threshold=threshold, seed=seed)
    return _check_labels(labels, v.shape)


def subcomplex(volume, *, keep: int | Sequence[int] = 1, labels=None, n: int = 2, threshold: float | None = None,
               seed: int = 0, soft_edge: float = 1.0) -> np.ndarray:
    """The map with only some of its domains: a sub-complex (a look-alike that is part of the target).

    Each voxel of the box belongs to the domain of the nearest labelled voxel (so the map's
    faint tails go with their domain); the mask of the kept domains is blurred by a Gaussian of
    ``soft_edge`` voxels (no hard cut) and multiplies the map. For the ribosome the default is
    the large subunit alone.

    Parameters
    ----------
    volume : array ``(z, y, x)``, the density
    keep : domain label(s) to keep (1-based, 1 = the most massive domain)
    labels : int ``(z, y, x)`` domains (:func:`split_domains`); None: ``split_domains(volume, n=n,
        threshold=threshold, seed=seed)``
    n, threshold, seed : passed to :func:`split_domains` when ``labels`` is None
    soft_edge : Gaussian standard deviation of the mask's edge, voxels

    Returns
    -------
    float32 ndarray ``(z, y, x)``, same box as ``volume``
    """
    v = _as_volume(volume)
    lab = _labels_for(v, labels, n=n, threshold=threshold, seed=seed)
    keep = tuple(int(k) for k in np.atleast_1d(keep))
    present = set(np.unique(lab[lab > 0]).tolist())
    if not keep or not set(keep) <= present:
        raise InputError(f"domain labels among {sorted(present)}", field="keep", got=keep)
    mask = _soft(np.isin(_territories(lab), keep), soft_edge)
    return (v * mask).astype(np.float32)


def _hinge(v: np.ndarray, labels: np.ndarray, moving: int, axis) -> tuple[np.ndarray, np.ndarray]:
    """Pivot point and unit rotation axis, both ``(x, y, z)`` (voxel indices), of a domain motion.

    The pivot is the mean of the interface voxels (molecule voxels of one domain touching the
    other) nearest the line through the two centroids; ``axis="hinge"`` is perpendicular to that
    line, along the interface's longest extent; ``axis="ratchet"`` is the line itself."""
    ter = _territories(labels)
    mov = ter == moving
    c_keep, c_mov = _centroid_xyz(v, (labels > 0) & ~mov), _centroid_xyz(v, (labels > 0) & mov)
    u = c_mov - c_keep
    if np.linalg.norm(u) < 1e-9:
        raise InputError("two domains with distinct centroids", field="labels")
    u = u / np.linalg.norm(u)
    touch = (ndi.binary_dilation(mov) & ~mov) | (ndi.binary_dilation(~mov) & mov)
    iface = touch & (labels > 0)
    if not np.any(iface):
        iface = touch
    p = np.stack(np.nonzero(iface), axis=1)[:, ::-1].astype(np.float64)  # (m, 3) x, y, z
    rel = p - c_keep
    dist = np.linalg.norm(rel - (rel @ u)[:, None] * u, axis=1)
    pivot = p[dist <= dist.min() + 1.0].mean(0)
    if isinstance(axis, str):
        if axis == "ratchet":
            ax = u
        elif axis == "hinge":
            q = rel - (rel @ u)[:, None] * u
            q = q - q.mean(0)
            _, evec = np.linalg.eigh(q.T @ q)
            ax = evec[:, -1] - (evec[:, -1] @ u) * u
        else:
            raise InputError("'hinge', 'ratchet' or an (x, y, z) vector", field="axis", got=repr(axis))
    else:
        ax = np.asarray(axis, dtype=np.float64).reshape(-1)
        if ax.shape != (3,) or not np.all(np.isfinite(ax)) or np.linalg.norm(ax) == 0:
            raise InputError("an (x, y, z) vector", field="axis", got=axis)
    ax = ax / np.linalg.norm(ax)
    if ax[int(np.argmax(np.abs(ax)))] < 0:
        ax = -ax
    return pivot, ax


def second_conformation(volume, *, angle_deg: float = 10.0, axis="hinge", moving: int | None = None, labels=None,
                        threshold: float | None = None, seed: int = 0, soft_edge: float = 1.0) -> np.ndarray:
    """The map with one domain turned about a hinge at the domain interface: a second conformation.

    The map is split into its two domains (:func:`split_domains`, or ``labels``), each voxel of the
    box going with the nearest labelled voxel; the soft mask of the ``moving`` domain (Gaussian
    edge of ``soft_edge`` voxels) and its complement divide the map into two parts that add up
    to it. The moving part is rotated by ``angle_deg`` (right-handed) about an axis through the
    pivot - the point of the interface nearest the line through the two domain centroids - and
    added back to the fixed part. Mass is kept (up to interpolation and density that leaves the
    box); 0° gives the map back.

    Parameters
    ----------
    volume : array ``(z, y, x)``, the density
    angle_deg : rotation of the moving domain, degrees
    axis : ``"hinge"`` (perpendicular to the centroid line, along the interface's longest extent:
        the domain opens or closes like a clamshell), ``"ratchet"`` (along the centroid line: the
        domain turns on the interface, like the ribosome's small subunit) or an ``(x, y, z)``
        vector. The sign of the axis is chosen so that its largest component is positive.
    moving : label of the domain that moves; None: the highest label (with :func:`split_domains`'
        labels, the least massive domain)
    labels : int ``(z, y, x)`` domains; None: ``split_domains(volume, n=2, threshold=threshold,
        seed=seed)``. With more than two domains, all but ``moving`` stay fixed.
    threshold, seed : passed to :func:`split_domains` when ``labels`` is None
    soft_edge : Gaussian standard deviation of the moving part's mask edge, voxels

    Returns
    -------
    float32 ndarray ``(z, y, x)``, same box as ``volume`` (density rotated out of the box is lost)
    """
    v = _as_volume(volume)
    lab = _labels_for(v, labels, n=2, threshold=threshold, seed=seed)
    present = np.unique(lab[lab > 0])
    if len(present) < 2:
        raise InputError("labels with at least two domains", field="labels", got=f"{len(present)} domain(s)")
    moving = int(present.max()) if moving is None else int(moving)
    if moving not in present:
        raise InputError(f"a domain label among {present.tolist()}", field="moving", got=moving)
    pivot, ax = _hinge(v, lab, moving, axis)
    m_mov = _soft(_territories(lab) == moving, soft_edge)
    rot = Rotation.from_rotvec(ax * math.radians(float(angle_deg))).as_matrix()
    c = np.array([s // 2 for s in v.shape][::-1], dtype=np.float64)  # box centre (x, y, z)
    shift = rot @ (c - pivot) + pivot - c  # out(R (r - pivot) + pivot) = in(r)
    turned = rotate_volume(v * m_mov, rot, shift=shift)
    return (v * (1.0 - m_mov) + turned).astype(np.float32)


def partial_occupancy(volume, *, fraction: float = 0.15, seed: int | np.random.Generator | None = 0,
                      threshold: float | None = None, soft_edge: float = 1.0,
                      peripheral: float = 0.75) -> np.ndarray:
    """The map with a compact peripheral region holding ``fraction`` of the density removed.

    A centre is drawn uniformly among the molecule's voxels (above ``threshold``) farther from
    the centre of mass than the ``peripheral`` quantile of their distances; a sphere about it
    with a Gaussian-blurred edge (``0.5 erfc((r - R) / (sqrt(2) soft_edge))``) is grown until it
    holds ``fraction`` of the positive density, and the map is multiplied by one minus it. Copies
    with different seeds model per-particle heterogeneity (substoichiometric parts).

    Parameters
    ----------
    volume : array ``(z, y, x)``, the density
    fraction : share of the positive density to remove, in [0, 1)
    seed : int or ``numpy.random.Generator`` (the region's centre)
    threshold : density level of the molecule; None: 0.1 times the map's maximum
    soft_edge : Gaussian standard deviation of the sphere's edge, voxels
    peripheral : quantile (0..1) of the distance from the centre of mass above which the centre
        is drawn (0 = anywhere in the molecule)

    Returns
    -------
    float32 ndarray ``(z, y, x)``, same box as ``volume``
    """
    v = _as_volume(volume)
    if not 0.0 <= fraction < 1.0:
        raise InputError("a fraction in [0, 1)", field="fraction", got=fraction)
    if not 0.0 <= peripheral < 1.0:
        raise InputError("a quantile in [0, 1)", field="peripheral", got=peripheral)
    if soft_edge < 0:
        raise InputError("a soft edge >= 0 voxels", field="soft_edge", got=soft_edge)
    if fraction == 0:
        return v.astype(np.float32)
    rng = np.random.default_rng(seed)
    inside = v > _threshold(v, threshold)
    com = _centroid_xyz(v, inside)
    pos = _positions_xyz(v.shape)
    cand = pos[inside]
    dist = np.linalg.norm(cand - com, axis=1)
    cand = cand[dist >= np.quantile(dist, peripheral)]
    centre = cand[int(rng.integers(len(cand)))]
    r = np.linalg.norm(pos - centre, axis=-1)
    w = np.clip(v, 0.0, None)
    total = w.sum()

    def cap(radius):
        if soft_edge == 0:
            return (r <= radius).astype(np.float64)
        return 0.5 * erfc((r - radius) / (math.sqrt(2.0) * soft_edge))

    lo, hi = 0.0, float(r.max()) + 4 * soft_edge
    for _ in range(60):  # bisection: the removed share grows with the radius
        mid = 0.5 * (lo + hi)
        if (w * cap(mid)).sum() < fraction * total:
            lo = mid
        else:
            hi = mid
    return (v * (1.0 - cap(hi))).astype(np.float32)
