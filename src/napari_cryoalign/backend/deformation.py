"""Beam-induced sample deformation: the polynomial, time-dependent model of SparseAlign.

The model (SparseAlign, Ganguly et al., eq. 14) moves a point ``r = (x, y, z)`` of the
sample at acquisition time ``t`` in [0, 1] to ``r + D(r, t)`` with, for each component
``k`` in ``{x, y, z}``::

    D_k(r, t) = sum_{zeta = 1..d_t}  sum_{a + b + c <= d_p}  P[k, (a, b, c), zeta] * X^a * Y^b * Z^c * t^zeta

Definitions used here (all documented in ``docs/simulate_tomograms_tiltseries.md``):

* ``x, y, z`` are in **nm relative to the volume centre** (voxel ``N // 2`` on each axis;
  x, y in the detector plane at tilt 0, z along the beam at tilt 0, tilt axis = y).
* ``X = x / L``, ``Y = y / L``, ``Z = z / L`` are dimensionless, with ``L`` =
  ``length_scale_nm`` (the presets use the field-of-view width, so the paper's normalised
  coordinates ``[-1/2, 1/2]`` are reproduced). Every coefficient ``P`` is therefore a
  displacement **in nm** (the displacement contributed by that term at ``X^a Y^b Z^c = 1``
  and ``t = 1``).
* ``variables`` selects which coordinates enter the basis: ``"xyz"`` (default, the full
  eq. 13/14 basis), ``"xy"`` (deformation constant along the depth, the 6-terms-per-component
  quadratic model of Fernandez et al. used in the paper's 3D experiments) or ``"xz"`` (the
  paper's 2D case).
* Basis order (the ``terms`` property): by total degree, then by decreasing power of the
  first variable, e.g. for ``"xyz"`` and degree 2:
  ``1, x, y, z, x^2, xy, xz, y^2, yz, z^2``; for ``"xz"``: ``1, x, z, x^2, xz, z^2``.
* Time: no zeroth order (the first image defines the undeformed sample); powers
  ``t^1 .. t^d_t``. Times come from the acquisition order (:func:`times_from_order`):
  the ``k``-th acquired image (0-based) has ``t = k / (n - 1)``.
* ``coefficients`` has shape ``(3, n_terms, time_degree)``: component ``(x, y, z)``, basis
  term, time power ``1..d_t``.

:meth:`PolynomialDeformation.evaluate` works on torch tensors in batch and is
differentiable with respect to the positions and to a coefficient tensor passed in, so an
estimator can optimise the coefficients through it.
"""

from __future__ import annotations

import functools
import itertools
import json
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
import torch

from ..errors import InputError

__all__ = [
    "PolynomialDeformation",
    "monomial_exponents",
    "term_name",
    "times_from_order",
    "acquisition_order",
    "deformation_error",
]

_COMPONENTS = ("x", "y", "z")


def monomial_exponents(degree: int, variables: str = "xyz") -> list[tuple[int, int, int]]:
    """Exponents ``(a, b, c)`` of ``x^a y^b z^c`` for all monomials of total degree ``<= degree``.

    Only the coordinates in ``variables`` get non-zero exponents. Order: by total degree,
    then by decreasing exponent of the first variable, then of the second.

    >>> monomial_exponents(1)
    [(0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1)]
    """
    return list(_monomial_exponents(int(degree), variables if isinstance(variables, str) else "".join(variables)))


@functools.lru_cache(maxsize=64)
def _monomial_exponents(degree: int, variables: str) -> tuple[tuple[int, int, int], ...]:
    """:func:`monomial_exponents` as a tuple, cached (the basis asks for it at every evaluation)."""
    if degree < 0:
        raise InputError("a polynomial degree >= 0", field="degree", got=degree)
    idx = [_COMPONENTS.index(v) for v in variables]
    if sorted(set(idx)) != sorted(idx) or not idx:
        raise InputError("distinct coordinates among x, y, z (e.g. 'xyz', 'xy', 'xz')", field="variables",
                         got=variables)
    out = []
    nv = len(idx)
    for total in range(degree + 1):
        # compositions of `total` into nv parts, first part descending
        for parts in sorted(
            (p for p in itertools.product(range(total + 1), repeat=nv) if sum(p) == total), reverse=True
        ):
            e = [0, 0, 0]
            for i, power in zip(idx, parts):
                e[i] = power
            out.append(tuple(e))
    return tuple(out)


def term_name(exponents: Sequence[int]) -> str:
    """Human-readable monomial name: ``(2, 0, 0) -> "x^2"``, ``(1, 1, 0) -> "xy"``, ``(0, 0, 0) -> "1"``."""
    parts = []
    for v, e in zip(_COMPONENTS, exponents):
        if e == 1:
            parts.append(v)
        elif e > 1:
            parts.append(f"{v}^{e}")
    return "".join(parts) or "1"


def _parse_term(name: str) -> tuple[int, int, int]:
    name = name.replace(" ", "").replace("*", "")
    if name == "1":
        return (0, 0, 0)
    e = [0, 0, 0]
    i = 0
    while i < len(name):
        c = name[i]
        if c not in _COMPONENTS:
            raise InputError("a monomial like '1', 'x', 'x^2', 'xy', 'y^2z'", field="term", got=name)
        i += 1
        power = 1
        if i < len(name) and name[i] == "^":
            j = i + 1
            while j < len(name) and name[j].isdigit():
                j += 1
            if j == i + 1:
                raise InputError("a power after '^'", field="term", got=name)
            power = int(name[i + 1 : j])
            i = j
        e[_COMPONENTS.index(c)] += power
    return tuple(e)


@dataclass(frozen=True, eq=False)
class PolynomialDeformation:
    """Polynomial, time-dependent deformation field (SparseAlign eq. 14). See the module docstring.

    Attributes
    ----------
    degree : ``d_p``, total degree in space
    time_degree : ``d_t``, highest power of ``t`` (powers 1..d_t)
    variables : coordinates in the basis (``"xyz"``, ``"xy"``, ``"xz"``, ...)
    length_scale_nm : ``L``; coordinates are divided by it before the monomials
    coefficients : ``(3, n_terms, time_degree)`` float64 array, nm (component, term, time power)
    """

    degree: int = 2
    time_degree: int = 1
    variables: str = "xyz"
    length_scale_nm: float = 1000.0
    coefficients: np.ndarray = field(default=None, repr=False)  # type: ignore[assignment]

    def __post_init__(self):
        if self.time_degree < 1:
            raise InputError("time_degree >= 1 (no zeroth order in time)", field="time_degree",
                             got=self.time_degree)
        if not self.length_scale_nm > 0:
            raise InputError("length_scale_nm > 0", field="length_scale_nm", got=self.length_scale_nm)
        n = len(monomial_exponents(self.degree, self.variables))
        if self.coefficients is None:
            c = np.zeros((3, n, self.time_degree))
        else:
            c = np.array(self.coefficients, dtype=np.float64)
            if c.shape != (3, n, self.time_degree):
                raise InputError(f"coefficients of shape (3, {n}, {self.time_degree})", field="coefficients",
                                 got=f"shape {c.shape}")
        c.setflags(write=False)
        object.__setattr__(self, "coefficients", c)

    def __eq__(self, other) -> bool:
        if not isinstance(other, PolynomialDeformation):
            return NotImplemented
        return (self.degree, self.time_degree, self.variables, self.length_scale_nm) == (
            other.degree, other.time_degree, other.variables, other.length_scale_nm
        ) and np.array_equal(self.coefficients, other.coefficients)

    __hash__ = None  # mutable-looking (holds an array): not hashable

    # -- basis ----------------------------------------------------------------------------
    @property
    def terms(self) -> list[tuple[int, int, int]]:
        """Exponents ``(a, b, c)`` of each basis monomial ``x^a y^b z^c``, in coefficient order."""
        return monomial_exponents(self.degree, self.variables)

    @property
    def term_names(self) -> list[str]:
        return [term_name(e) for e in self.terms]

    @property
    def n_parameters(self) -> int:
        return int(self.coefficients.size)

    # -- construction ---------------------------------------------------------------------
    @classmethod
    def from_terms(
        cls,
        terms: Mapping[str, Mapping[str, float | Sequence[float]]],
        *,
        degree: int = 2,
        time_degree: int = 1,
        variables: str = "xyz",
        length_scale_nm: float = 1000.0,
    ) -> "PolynomialDeformation":
        """Build from ``{"z": {"1": 200.0, "x^2": -100.0, "y^2": -100.0}}`` (nm).

        A value is the coefficient of ``t^1``, or a list for ``t^1 .. t^d_t``.
        """
        model = cls(degree=degree, time_degree=time_degree, variables=variables, length_scale_nm=length_scale_nm)
        c = np.zeros_like(model.coefficients)
        index = {e: i for i, e in enumerate(model.terms)}
        for comp, entries in terms.items():
            if comp not in _COMPONENTS:
                raise InputError("a component among x, y, z", field="terms", got=comp)
            for name, value in entries.items():
                e = _parse_term(name)
                if e not in index:
                    raise InputError(f"a monomial of the basis {model.term_names}", field="terms", got=name)
                v = np.atleast_1d(np.asarray(value, dtype=np.float64))
                if v.size > time_degree:
                    raise InputError(f"at most {time_degree} time coefficients", field=f"terms.{comp}.{name}",
                                     got=v.size)
                c[_COMPONENTS.index(comp), index[e], : v.size] = v
        return model.with_coefficients(c)

    def with_coefficients(self, coefficients) -> "PolynomialDeformation":
        """The same model with other coefficients ``(3, n_terms, time_degree)`` (nm)."""
        if isinstance(coefficients, torch.Tensor):
            coefficients = coefficients.detach().cpu().numpy()
        return PolynomialDeformation(self.degree, self.time_degree, self.variables, self.length_scale_nm,
                                     np.asarray(coefficients, dtype=np.float64))

    # -- evaluation -----------------------------------------------------------------------
    def basis(self, points_nm: torch.Tensor) -> torch.Tensor:
        """Monomials at the points: ``(..., 3)`` nm -> ``(..., n_terms)`` (dimensionless)."""
        q = points_nm / self.length_scale_nm
        terms = self.terms
        max_e = max((max(t) for t in terms), default=0)
        # powers[..., k, p] = q_k^p for p = 0..max_e (exact integer powers, differentiable)
        pw = [torch.ones_like(q)]
        for _ in range(max_e):
            pw.append(pw[-1] * q)
        powers = torch.stack(pw, dim=-1)  # (..., 3, max_e + 1)
        cols = []
        for a, b, c in terms:
            cols.append(powers[..., 0, a] * powers[..., 1, b] * powers[..., 2, c])
        return torch.stack(cols, dim=-1)

    def evaluate(self, points_nm, t, *, coefficients=None):
        """Displacement ``D(r, t)`` in nm.

        Parameters
        ----------
        points_nm : ``(..., 3)`` positions ``(x, y, z)`` in nm relative to the volume centre
            (tensor or array)
        t : times in [0, 1], broadcastable to ``points_nm.shape[:-1]`` (scalar, ``(...)``)
        coefficients : optional tensor ``(3, n_terms, time_degree)`` used instead of the
            stored ones (e.g. a ``requires_grad`` tensor in an estimator)

        Returns
        -------
        ``(..., 3)`` displacements ``(D_x, D_y, D_z)`` in nm; a tensor when ``points_nm`` or
        ``coefficients`` is a tensor, else a numpy array.
        """
        as_numpy = not isinstance(points_nm, torch.Tensor) and not isinstance(coefficients, torch.Tensor)
        if isinstance(points_nm, torch.Tensor):
            p = points_nm if points_nm.is_floating_point() else points_nm.to(torch.float64)
        else:
            p = torch.as_tensor(np.asarray(points_nm, dtype=np.float64))
        if isinstance(coefficients, torch.Tensor):
            coef = coefficients.to(device=p.device)
            if p.dtype != coef.dtype:
                p = p.to(coef.dtype)
        else:
            src = self.coefficients if coefficients is None else np.asarray(coefficients, dtype=np.float64)
            coef = torch.tensor(np.array(src), dtype=p.dtype, device=p.device)
        if tuple(coef.shape) != tuple(self.coefficients.shape):
            raise InputError(f"coefficients of shape {self.coefficients.shape}", field="coefficients",
                             got=f"shape {tuple(coef.shape)}")
        if p.shape[-1] != 3:
            raise InputError("points as (..., 3) arrays of (x, y, z) in nm", field="points_nm",
                             got=f"shape {tuple(p.shape)}")
        if isinstance(t, torch.Tensor):
            tt = t.to(dtype=p.dtype, device=p.device)
        else:
            tt = torch.as_tensor(np.asarray(t, dtype=np.float64), dtype=p.dtype, device=p.device)
        tt = torch.broadcast_to(tt, p.shape[:-1])
        basis = self.basis(p)  # (..., n_terms)
        tpow = torch.stack([tt ** (z + 1) for z in range(self.time_degree)], dim=-1)  # (..., d_t)
        d = torch.einsum("...n,...z,knz->...k", basis, tpow, coef)
        return d.detach().cpu().numpy() if as_numpy else d

    def displacement_at(self, points_nm, t: float = 1.0) -> np.ndarray:
        """Numpy convenience: ``D(r, t)`` for ``(n, 3)`` points in nm -> ``(n, 3)`` nm."""
        return np.asarray(self.evaluate(np.asarray(points_nm, dtype=np.float64), float(t)))

    # -- serialisation --------------------------------------------------------------------
    def to_dict(self) -> dict:
        """JSON-ready description (the format of ``truth.json["deformation"]``)."""
        terms = self.term_names
        nonzero = []
        for k, comp in enumerate(_COMPONENTS):
            for i, name in enumerate(terms):
                for z in range(self.time_degree):
                    v = float(self.coefficients[k, i, z])
                    if v != 0.0:
                        nonzero.append({"component": comp, "term": name, "exponents_xyz": list(self.terms[i]),
                                        "time_power": z + 1, "value_nm": v})
        return {
            "model": "polynomial",
            "formula": "D_k(r,t) = sum_zeta sum_terms P[k,term,zeta] * (x/L)^a (y/L)^b (z/L)^c * t^zeta",
            "degree": int(self.degree),
            "time_degree": int(self.time_degree),
            "variables": self.variables,
            "length_scale_nm": float(self.length_scale_nm),
            "coordinate_origin": "volume centre (index N//2 on each axis); x, y in the tilt-0 image plane, "
                                 "z along the beam at tilt 0; nm",
            "components": list(_COMPONENTS),
            "terms": terms,
            "term_exponents_xyz": [list(e) for e in self.terms],
            "coefficients_nm": self.coefficients.tolist(),
            "nonzero_terms": nonzero,
        }

    @classmethod
    def from_dict(cls, d: Mapping) -> "PolynomialDeformation":
        """Inverse of :meth:`to_dict` (reads ``coefficients_nm``; checks the basis)."""
        try:
            model = cls(degree=int(d["degree"]), time_degree=int(d["time_degree"]), variables=str(d["variables"]),
                        length_scale_nm=float(d["length_scale_nm"]),
                        coefficients=np.asarray(d["coefficients_nm"], dtype=np.float64))
        except KeyError as e:
            raise InputError("a deformation description with degree, time_degree, variables, length_scale_nm "
                             "and coefficients_nm", field=str(e.args[0]), got="missing") from None
        if "terms" in d and list(d["terms"]) != model.term_names:
            raise InputError(f"terms in the order {model.term_names}", field="terms", got=list(d["terms"]))
        return model

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


# ----------------------------------------------------------------------------------------
# Acquisition order and time
# ----------------------------------------------------------------------------------------
def acquisition_order(tilt_angles_deg, *, scheme: str = "sequential", start_deg: float = 0.0,
                      group_size: int = 2) -> np.ndarray:
    """Stack indices in the order they were acquired (first acquired first).

    Schemes: ``"sequential"`` (stack order, e.g. -60 -> +60 as in the SparseAlign
    experiments), ``"bidirectional"`` (from the angle nearest ``start_deg`` up to the
    maximum, then from the next angle below it down to the minimum), ``"dose-symmetric"``
    (Hagen: start nearest ``start_deg``, then alternate groups of ``group_size`` angles on
    the positive and the negative side).
    """
    a = np.asarray(tilt_angles_deg, dtype=np.float64).reshape(-1)
    n = a.size
    if scheme == "sequential":
        return np.arange(n)
    order_sorted = np.argsort(a, kind="stable")
    s = a[order_sorted]
    i0 = int(np.argmin(np.abs(s - start_deg)))
    if scheme == "bidirectional":
        seq = list(range(i0, n)) + list(range(i0 - 1, -1, -1))
    elif scheme == "dose-symmetric":
        if group_size < 1:
            raise InputError("group_size >= 1", field="group_size", got=group_size)
        seq = [i0]
        up, down = i0 + 1, i0 - 1
        while up < n or down >= 0:
            for _ in range(group_size):
                if up < n:
                    seq.append(up)
                    up += 1
            for _ in range(group_size):
                if down >= 0:
                    seq.append(down)
                    down -= 1
    else:
        raise InputError("one of sequential, bidirectional, dose-symmetric", field="acquisition scheme", got=scheme)
    return order_sorted[np.asarray(seq, dtype=np.int64)]


def times_from_order(order, n_tilts: int | None = None) -> np.ndarray:
    """Acquisition time of every stack image: ``t[order[k]] = k / (n - 1)`` (t in [0, 1]).

    ``order`` lists stack indices, first acquired first (the optional acquisition-order file
    of ``CONVENTIONS.md``). Returns ``(n_tilts,)`` in stack order.
    """
    o = np.asarray(order, dtype=np.int64).reshape(-1)
    n = o.size if n_tilts is None else int(n_tilts)
    if o.size != n or sorted(o.tolist()) != list(range(n)):
        raise InputError(f"a permutation of 0..{n - 1}", field="acquisition order", got=o.tolist()[:10])
    t = np.empty(n)
    t[o] = np.arange(n) / max(1, n - 1)
    return t


def deformation_error(true: PolynomialDeformation, estimate: PolynomialDeformation, points_nm, *,
                      t: float = 1.0, component: str | None = None) -> float:
    """Mean squared deformation error at ``t`` over ``points_nm`` (SparseAlign eq. 27-29), nm².

    With ``component="z"`` only that component is compared (the paper's ``D_z`` error);
    default: the squared norm of the full vector difference.
    """
    p = np.asarray(points_nm, dtype=np.float64)
    d = true.displacement_at(p, t) - estimate.displacement_at(p, t)
    if component is not None:
        d = d[:, _COMPONENTS.index(component)][:, None]
    return float(np.mean(np.sum(d * d, axis=-1)))

