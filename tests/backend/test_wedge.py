"""Tests of backend/wedge.py: the geometry of the missing wedge (tilt axis y, beam along z)."""

import math

import numpy as np
import torch

from napari_cryoalign.backend.wedge import missing_wedge_mask


def test_missing_wedge_geometry():
    m = missing_wedge_mask((32, 32, 32), tilt_min_deg=-60, tilt_max_deg=60)
    assert m.shape == (32, 32, 32)
    # on the kx axis (tilt 0 plane) measured; on the kz axis (beam direction) missing
    assert m[0, 5, 4] == 1 and m[4, 5, 0] == 0 and m[0, 0, 0] == 1
    # (kx, kz) = (1, 1): 45 deg -> measured; (1, 2): 63.4 deg -> missing; independent of ky
    assert m[3, 7, 3] == 1 and m[6, 0, 3] == 0 and m[-6, 11, -3] == 0 and m[-3, 2, 3] == 1
    # ky axis is always measured
    assert m[0, 9, 0] == 1
    # fraction missing of a continuous +-60 wedge: 60/180 of the (kx,kz) directions
    assert 0.28 < 1 - float(m.mean()) < 0.36
    # rfft layout agrees with the full mask
    mr = missing_wedge_mask((32, 32, 32), rfft=True)
    assert torch.equal(mr, m[..., :17])
    # asymmetric range: +30..+60 keeps (1,1) at 45 deg but not (1,-1) at -45 deg
    ma = missing_wedge_mask((32, 32, 32), tilt_min_deg=30, tilt_max_deg=60)
    assert ma[3, 0, 3] == 1 and ma[-3, 0, 3] == 0 and ma[3, 0, -3] == 0
    full = missing_wedge_mask((16, 16, 16), tilt_min_deg=-90, tilt_max_deg=90)
    assert bool((full == 1).all())


def test_missing_wedge_matches_tilt_projection_planes():
    # the plane measured at tilt +40 deg: rotate the (kx, ky) plane about y by +40 deg
    th = math.radians(40)
    kdir = np.array([math.cos(th), 0, math.sin(th)])  # (kx, ky, kz)
    m = missing_wedge_mask((64, 64, 64), tilt_min_deg=35, tilt_max_deg=45)
    for s in (5, 10, 20):
        kx, kz = np.round(kdir[0] * s).astype(int), np.round(kdir[2] * s).astype(int)
        assert m[kz % 64, 3, kx % 64] == 1
        assert m[kx % 64, 3, kz % 64] == 0  # 50 deg: outside


def test_missing_wedge_mask_accepts_numpy_scalars():
    a = missing_wedge_mask((8, 8, 8), tilt_min_deg=np.float64(-60), tilt_max_deg=np.float32(60))
    b = missing_wedge_mask((8, 8, 8), tilt_min_deg=-60.0, tilt_max_deg=60.0)
    assert bool((a == b).all())
