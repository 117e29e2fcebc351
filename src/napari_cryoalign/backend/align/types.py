"""Result types shared by the aligners (exhaustive search and the learned aligner).

Conventions (``docs/conventions.md``): a particle's rotation ``A`` maps reference
coordinates to particle coordinates, ``particle(A @ r) = reference(r)``, acting on
``(x, y, z)`` column vectors about the box centre ``N // 2``; its origin (RELION
``rlnOrigin*Angst / voxel_size``) puts the particle's centre at ``N // 2 - origin``.
``geometry.align_particle_to_reference(particle, A, origin)`` brings a particle onto the
reference.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..geometry import matrix_to_euler

__all__ = ["AlignmentResult"]


@dataclass(frozen=True, eq=False)
class AlignmentResult:
    """Orientation and shift of each particle relative to a reference.

    Attributes
    ----------
    rotations : ndarray, shape ``(n, 3, 3)``
        ``A`` per particle, reference -> particle (RELION convention,
        ``particle(A @ r) = reference(r)``), acting on ``(x, y, z)``.
    origins_voxels : ndarray, shape ``(n, 3)``
        RELION origin divided by the voxel size, ``(x, y, z)`` in voxels: the particle's
        centre is at index ``N // 2 - origin``.
    scores : ndarray, shape ``(n,)``
        Normalised (missing-wedge-aware) correlation after alignment; higher is better.
    method : str
        ``"exhaustive"``, ``"learned"`` or ``"learned+refine"``.
    seconds : float
        Wall-clock time of the alignment (NaN when unknown).
    """

    rotations: np.ndarray
    origins_voxels: np.ndarray
    scores: np.ndarray
    method: str
    seconds: float = float("nan")

    def __len__(self) -> int:
        return int(np.asarray(self.rotations).shape[0])

    @property
    def euler_deg(self) -> np.ndarray:
        """RELION ``(rot, tilt, psi)`` in degrees per particle, shape ``(n, 3)``."""
        return matrix_to_euler(np.asarray(self.rotations, dtype=np.float64).reshape(-1, 3, 3))

    def origins_angstrom(self, voxel_size: float) -> np.ndarray:
        """``rlnOriginX/Y/ZAngst`` per particle, shape ``(n, 3)``, in Å (``origins_voxels * voxel_size``)."""
        return np.asarray(self.origins_voxels, dtype=np.float64).reshape(-1, 3) * float(voxel_size)
