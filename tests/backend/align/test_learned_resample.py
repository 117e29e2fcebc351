"""The learned aligner resamples particles to the model's working voxel size (issue 18).

A model with ``config.voxel_size`` takes particles of any box and voxel size: they are Fourier-resampled
to that voxel size and centred in the model's box, their Fourier masks mapped to the new grid, and the
origins come back in the data's voxels.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from napari_cryoalign.backend.align.gumnet import GumNet, GumNetConfig
from napari_cryoalign.backend.align.learned import (
    _mask_to_model_box,
    _to_model_box,
    align_learned,
    load_model,
    model_box,
    save_model,
)
from napari_cryoalign.backend.wedge import particle_fourier_mask
from napari_cryoalign.errors import InputError

GRID = dict(head="grid", input_box=16, grid_step_deg=60.0, channels=(4, 4, 8, 8, 8), hidden=32,
            centre_moving=True, input_crop="centre")


def _blob(box: int, centre_xyz, sigma: float) -> np.ndarray:
    z, y, x = np.mgrid[:box, :box, :box].astype(np.float64)
    cx, cy, cz = (box // 2 + np.asarray(centre_xyz, float))
    return np.exp(-((x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2) / (2 * sigma**2)).astype(np.float32)


def _centroid_xyz(vol: np.ndarray) -> np.ndarray:
    w = np.clip(vol, 0, None)
    z, y, x = np.mgrid[:vol.shape[0], :vol.shape[1], :vol.shape[2]]
    return np.array([(w * a).sum() / w.sum() for a in (x, y, z)]) - vol.shape[0] // 2


def test_model_box_is_the_extent_at_the_models_voxel_size():
    cfg = GumNetConfig(**GRID, voxel_size=12.0)
    assert model_box(32, 6.0, cfg) == 16 and model_box(48, 6.0, cfg) == 24 and model_box(32, 12.0, cfg) == 32
    assert model_box(64, 4.0, cfg) == 22 and model_box(24, 24.0, cfg) == 48  # even, coarser data padded up
    assert model_box(48, None, cfg) == 48 and model_box(48, 6.0, GumNetConfig(**GRID)) == 48
    with pytest.raises(ValueError, match="voxel_size"):
        GumNetConfig(**GRID, voxel_size=0.0)
    assert GumNetConfig.from_dict(cfg.to_dict()) == cfg
    old = cfg.to_dict()
    old.pop("voxel_size")  # model files written before the field: no resampling
    assert GumNetConfig.from_dict(old).voxel_size is None


def test_volumes_keep_their_place_and_masks_their_wedge():
    # a blob 6 voxels right, 4 down, 2 forward at 6 A sits 3, 2, 1 voxels off at 12 A, centred in the model's box
    vol = _blob(32, (6.0, -4.0, 2.0), 2.5)
    out = _to_model_box(torch.from_numpy(vol)[None], 16, 32)[0].numpy()
    assert out.shape == (32, 32, 32)
    np.testing.assert_allclose(_centroid_xyz(out), [3.0, -2.0, 1.0], atol=0.15)
    assert np.abs(out[:7]).max() < 1e-6 and abs(out[8:24, 8:24, 8:24].mean()) < 1e-3  # zero-padded around, mean 0
    # a larger box is cropped around the centre
    big = _to_model_box(torch.from_numpy(_blob(96, (0.0, 0.0, 0.0), 3.0))[None], 48, 32)[0].numpy()
    assert big.shape == (32, 32, 32) and np.unravel_index(big.argmax(), big.shape) == (16, 16, 16)
    # the missing wedge is an angle: the mapped mask of the 32-box at twice the voxel is the 32-box's wedge again
    wedge = torch.from_numpy(particle_fourier_mask(32, tilt_range_deg=(-60.0, 60.0)))
    mapped = _mask_to_model_box(wedge[None], 16, 32)[0]
    assert mapped.shape == (32, 32, 32) and set(np.unique(mapped.numpy())) <= {0.0, 1.0}
    k = torch.arange(32) - 16
    inside = (k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2) < 15**2  # the 32-box mask's sphere
    assert (mapped == wedge)[inside].float().mean() > 0.95
    assert 0.5 < mapped[inside].mean() < 0.9  # a wedge, not all ones
    # beyond the data's band nothing was measured: coarse data (16-box) Fourier-padded to half its voxel (32-box)
    ones = _mask_to_model_box(torch.ones(1, 16, 16, 16), 32, 32)[0]
    assert ones[16, 16, 8:24].min() == 1 and ones[0].max() == 0 and ones[16, 16, :7].max() == 0
    # real-space padding at the same voxel keeps the band: all of it is measured
    assert _mask_to_model_box(torch.ones(1, 16, 16, 16), 16, 32).min() == 1


def test_align_learned_takes_any_box_and_returns_the_datas_voxels(tmp_path):
    torch.manual_seed(0)
    net = GumNet(GumNetConfig(**GRID, voxel_size=12.0)).eval()
    path = save_model(net, tmp_path / "m.pt")
    net = load_model(path)
    assert net.config.voxel_size == 12.0  # stored in the model file
    ref = _blob(48, (0.0, 0.0, 0.0), 3.0)
    shift = np.array([4.0, -2.0, 6.0])  # x, y, z voxels at 6 A (2, -1, 3 at the model's 12 A)
    part = _blob(48, shift, 3.0)[None]
    res = align_learned(part, ref, model=net, voxel_size=6.0)
    # a round blob: any rotation fits, and the origin (particle centre at N//2 - o) is minus the shift, in 6 A voxels
    np.testing.assert_allclose(res.origins_voxels[0], -shift, atol=0.6)
    # the same particles without a voxel size are refused (48 is not the model's box); a model without one too
    with pytest.raises(InputError, match="voxel_size") as err:
        align_learned(part, ref, model=net)
    assert err.value.field == "particles"
    plain = GumNet(replace(net.config, voxel_size=None)).eval()
    with pytest.raises(InputError, match="resample the volumes first"):
        align_learned(part, ref, model=plain, voxel_size=6.0)
    with pytest.raises(InputError, match="particles' box") as err:
        align_learned(part, ref[:32, :32, :32], model=net, voxel_size=6.0)
    assert err.value.field == "reference"
    with pytest.raises(InputError) as err:
        align_learned(part, ref, model=net, voxel_size=-1.0)
    assert err.value.field == "voxel_size"
    # data already at the model's voxel size and box: nothing is resampled (same result as without voxel_size)
    p32, r32 = _blob(32, (1.0, 2.0, -1.0), 2.0)[None], _blob(32, (0.0, 0.0, 0.0), 2.0)
    a = align_learned(p32, r32, model=net, voxel_size=12.0)
    b = align_learned(p32, r32, model=net)
    np.testing.assert_allclose(a.origins_voxels, b.origins_voxels, atol=1e-6)
    np.testing.assert_allclose(a.rotations, b.rotations, atol=1e-6)
    # per-particle masks are mapped batch by batch, shared ones once: the same poses either way
    wedge = particle_fourier_mask(48, tilt_range_deg=(-50.0, 50.0))
    two = np.concatenate([part, part])
    shared = align_learned(two, ref, model=net, voxel_size=6.0, particle_masks=wedge, batch_size=1)
    each = align_learned(two, ref, model=net, voxel_size=6.0, particle_masks=np.stack([wedge, wedge]), batch_size=1)
    np.testing.assert_allclose(shared.rotations, each.rotations, atol=1e-6)
    np.testing.assert_allclose(shared.scores, each.scores, atol=1e-5)


def test_fine_tuning_resamples_as_alignment_does(tmp_path):
    """`train_job(voxel_size=)` tunes the model on particles resampled as `align_learned` will see them."""
    from napari_cryoalign.backend.align.learned_train import train_job
    from napari_cryoalign.backend.jobs import run_job

    torch.manual_seed(0)
    net = GumNet(GumNetConfig(**GRID, voxel_size=12.0))
    rng = np.random.default_rng(0)
    parts = np.stack([_blob(48, rng.uniform(-3, 3, 3), 3.0) for _ in range(4)])
    parts += rng.normal(scale=0.1, size=parts.shape).astype(np.float32)
    ref = _blob(48, (0.0, 0.0, 0.0), 3.0)
    seen = []
    hook = net.register_forward_pre_hook(lambda mod, inp: seen.append(tuple(inp[0].shape[1:])))
    try:
        res = run_job(train_job(parts, references=ref, model=net, epochs=1, batch_size=2, voxel_size=6.0,
                                particle_masks=particle_fourier_mask(48)), progress=False)
    finally:
        hook.remove()
    assert res.steps == 2 and np.all(np.isfinite(res.epoch_losses))
    assert seen and set(seen) == {(32, 32, 32)}  # 48 voxels at 6 A -> 24 at 12 A, in the model's 32-box
    with pytest.raises(InputError, match="voxel_size"):
        run_job(train_job(parts, references=ref, model=net, epochs=1, batch_size=2), progress=False)
