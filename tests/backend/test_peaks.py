"""The one sub-pixel peak finder (backend/peaks.py): known peaks in 2D and 3D, wrap-around, windows, non-concave cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_cryoalign.backend.peaks import find_peak, peak_window, subpixel_offsets


def _wrapped(n: int) -> torch.Tensor:
    return torch.fft.fftfreq(n, d=1.0 / n, dtype=torch.float64)


def _periodic_map(shape, centre_xyz, *, kind: str) -> torch.Tensor:
    """A map in unshifted layout peaking at displacement ``centre_xyz`` (periodic distance)."""
    axes = torch.meshgrid(*[_wrapped(n) for n in shape], indexing="ij")  # array order
    d2 = 0.0
    for axis, grid in enumerate(axes):
        n = shape[axis]
        c = centre_xyz[len(shape) - 1 - axis]
        diff = torch.remainder(grid - c + n / 2, n) - n / 2
        d2 = d2 + diff * diff
    return -d2 if kind == "paraboloid" else torch.exp(-d2 / (2 * 1.5 ** 2))


def _periodic_error(d, centre, n):
    return (np.asarray(d) - np.asarray(centre) + n / 2) % n - n / 2


# the last two wrap around the edges: neighbours across index 0 and across the Nyquist index n/2 (d = -8)
@pytest.mark.parametrize("centre", [(1.3, -2.4), (-0.3, 0.45), (7.6, -7.7)])
def test_known_subpixel_peaks_in_2d(centre):
    exact, _ = find_peak(_periodic_map((16, 16), centre, kind="paraboloid")[None])
    np.testing.assert_allclose(_periodic_error(exact[0].numpy(), centre, 16), 0.0, atol=1e-9)  # fitted exactly
    assert np.all(exact[0].numpy() >= -8.5) and np.all(exact[0].numpy() < 8.0)
    d, value = find_peak(_periodic_map((16, 16), centre, kind="gaussian")[None])
    np.testing.assert_allclose(_periodic_error(d[0].numpy(), centre, 16), 0.0, atol=0.1)
    assert d.shape == (1, 2) and value.shape == (1,)


def test_known_subvoxel_peaks_in_3d_batched():
    centres = [(1.25, -2.4, 0.35), (-0.45, 0.2, -3.1), (-5.8, 3.3, -0.4)]
    maps = torch.stack([_periodic_map((12, 12, 12), c, kind="paraboloid") for c in centres]).float()
    d, value = find_peak(maps)
    np.testing.assert_allclose(d.numpy(), centres, atol=1e-4)
    np.testing.assert_allclose(value.numpy(), maps.reshape(3, -1).max(1).values.numpy())
    gauss = torch.stack([_periodic_map((12, 12, 12), c, kind="gaussian") for c in centres]).float()
    np.testing.assert_allclose(find_peak(gauss)[0].numpy(), centres, atol=0.1)


def test_window_limits_the_integer_peak_and_the_shape_matters():
    m = _periodic_map((16, 16), (2.0, 2.0), kind="gaussian")[None]
    cube, _ = find_peak(m, max_shift=2.0, window="cube", subpixel=False)
    ball, _ = find_peak(m, max_shift=2.0, window="ball", subpixel=False)
    np.testing.assert_array_equal(cube[0].numpy(), [2.0, 2.0])
    assert np.linalg.norm(ball[0].numpy()) <= 2.0 + 1e-6
    w = peak_window((8, 8), 1.0)
    assert w.sum() == 5 and w[0, 0] and w[0, 1] and w[7, 0] and not w[1, 1]
    assert peak_window((8, 8, 8), 1.0, window="cube").sum() == 27
    with pytest.raises(ValueError):
        peak_window((8, 8), 1.0, window="disc")


def test_non_concave_neighbourhood_gets_no_subpixel_offset():
    # a ramp rising beyond the window along x: the window's edge is the integer peak, its neighbourhood is
    # linear (not strictly concave) along x and flat along y: no offset on either axis
    x = _wrapped(16)
    ramp = (x[None, :] + 0 * x[:, None]).clone()[None]
    d, _ = find_peak(ramp, max_shift=3.0, window="cube")
    np.testing.assert_array_equal(d[0].numpy(), [3.0, 0.0])
    # convex along x (a parabola opening upwards)
    d, _ = find_peak((x[None, :] ** 2 + 0 * x[:, None])[None], max_shift=3.0, window="cube")
    assert d[0, 0].item() in (3.0, -3.0) and d[0, 1].item() == 0.0
    # a non-finite neighbour (a map already masked outside the window): no offset on that axis
    m = _periodic_map((16, 16), (0.3, 0.2), kind="gaussian")
    m[0, 1] = -torch.inf
    d, _ = find_peak(m[None])
    assert d[0, 0].item() == 0.0 and abs(d[0, 1].item() - 0.2) < 0.1


def test_offsets_are_clipped_to_half_a_voxel():
    # concave, but the neighbour outside the window is higher than the peak inside it: the vertex would be
    # 0.75 voxel away, the offset stops at 0.5
    m = torch.zeros(1, 8, 8)
    m[0, 0, 0] = 1.0
    m[0, 0, 7] = 1.2  # displacement x = -1, outside a window of radius 0.5
    m[0, 0, 1] = 0.0
    assert subpixel_offsets(m, torch.tensor([0]))[0, 0].item() == pytest.approx(-0.5)
    d, value = find_peak(m, max_shift=0.5)
    assert d[0].tolist() == [-0.5, 0.0] and value.item() == 1.0


def test_value_is_differentiable_and_displacement_is_not():
    m = _periodic_map((8, 8, 8), (0.2, -0.3, 0.1), kind="gaussian").float()[None].requires_grad_(True)
    d, value = find_peak(m)
    assert not d.requires_grad
    value.sum().backward()
    assert m.grad.sum().item() == pytest.approx(1.0)
    with pytest.raises(ValueError):
        find_peak(torch.zeros(8, 8))
