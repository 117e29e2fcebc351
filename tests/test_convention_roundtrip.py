"""The whole convention chain of CONVENTIONS.md, end to end through the project's own files.

A reference is rotated and shifted into a particle with the matrix of some Euler angles and
an origin; the angles and origin are written to STAR with the project's writer (along with
the particle as a subtomogram file), read back with its reader, and the particle is
un-rotated with them: the result must equal the reference. A wrong sign anywhere (Euler
order, inverse, origin sign, box centre) breaks it.
"""

import numpy as np
import pytest

from napari_cryoalign import io as star
from napari_cryoalign.backend import geometry as g


def _asymmetric_reference(n):
    zz, yy, xx = np.indices((n, n, n), dtype=np.float64) - n // 2
    blobs = [((5, 0, 0), 1.0), ((0, 3, 0), 0.6), ((-2, -2, 4), 0.8), ((1, -4, -3), 0.4)]
    ref = np.zeros((n, n, n))
    for (x, y, z), amp in blobs:
        ref += amp * np.exp(-((xx - x) ** 2 + (yy - y) ** 2 + (zz - z) ** 2) / (2 * 1.3**2))
    return ref.astype(np.float32)


@pytest.mark.parametrize("angles", [(30.0, 0.0, 0.0), (35.0, 70.0, -110.0), (-150.0, 140.0, 20.0)])
def test_rotate_write_read_unrotate_gives_reference(tmp_path, angles):
    n, voxel = 32, 7.5
    ref = _asymmetric_reference(n)
    a = g.euler_to_matrix(angles)
    origin_vox = np.array([1.25, -2.0, 0.75])
    particle = g.transform_reference_to_particle(ref, a, origin_vox)

    out = tmp_path / "particles.star"
    star.write_subtomograms(
        out,
        particle[None],
        voxel_size=voxel,
        euler_deg=np.array([angles]),
        origins_angstrom=(origin_vox * voxel)[None],
    )
    volumes, table = star.read_subtomograms(out)
    eul = star.euler_deg(table)
    origins = star.origins_angstrom(table)
    np.testing.assert_allclose(eul[0], angles, atol=1e-4)
    np.testing.assert_allclose(origins[0], origin_vox * voxel, atol=1e-4)

    back = g.align_particle_to_reference(volumes[0], g.euler_to_matrix(eul[0]), origins[0] / voxel)
    inner = (slice(5, -5),) * 3
    cc = np.corrcoef(back[inner].ravel(), ref[inner].ravel())[0, 1]
    assert cc > 0.97
    # the wrong convention (A instead of A.T, or the origin with the other sign) does not align
    wrong = g.align_particle_to_reference(volumes[0], g.euler_to_matrix(eul[0]).T, origins[0] / voxel)
    assert np.corrcoef(wrong[inner].ravel(), ref[inner].ravel())[0, 1] < 0.8
    flipped = g.align_particle_to_reference(volumes[0], g.euler_to_matrix(eul[0]), -origins[0] / voxel)
    assert np.corrcoef(flipped[inner].ravel(), ref[inner].ravel())[0, 1] < cc - 0.1
