"""The template averaged from labels recovers a planted particle's shape (no map given).

Eight randomly rotated ribosomes (20 Å voxels, box 24, the packaged map) in a tomogram with the
-60..60° missing wedge and Gaussian noise of twice the volume's standard deviation (per box, noise
variance 2.2 times the particle's); the labels are the true centres jittered by up to 2 voxels, as clicks
are. What is measured is the correlation of the template with the true map, both low-passed to 40 Å,
after the best rotation and shift (exhaustive alignment: the template's frame is its own), inside a
sphere of the particle's radius.

The bars: the best any spherically symmetric template can do is the rotational average of the true
map itself, which correlates 0.76 with the map; the rotational average of 3 labels reaches that
(0.76); the aligned average of 8 labels 0.94 here (0.94-0.96 over other noise and pose draws; 0.90-0.91
with twice the noise), 5 labels 0.94, against 0.96-0.97 for the oracle average with the true poses.
The bar, 0.88, asks for clearly more than any blob (by 0.12) while leaving room for noise; the
rotational average must stay within 0.1 of the best blob.
"""

import numpy as np
import pytest
import torch

from napari_cryoalign.backend.align.exhaustive import align_exhaustive
from napari_cryoalign.backend.fourier import lowpass, sphere_mask
from napari_cryoalign.backend.geometry import (
    align_particle_to_reference,
    random_rotations,
    transform_reference_to_particle,
)
from napari_cryoalign.backend.jobs import Progress
from napari_cryoalign.backend.picking.label_template import (
    MIN_ALIGNED,
    _rotational_average,
    default_template_box,
    label_template,
    label_template_job,
)
from napari_cryoalign.backend.simulate.structures import load_structure_map
from napari_cryoalign.backend.wedge import missing_wedge_mask
from napari_cryoalign.errors import InputError

VOXEL = 20.0
BOX = 24
DIAMETER = 320.0  # Å: the ribosome's largest extent (16 voxels)
BAR = 0.88


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def planted():
    """``(tomogram, true map, labels (n, 3) x, y, z jittered, true centres)``: 8 ribosomes in a 2 x 4 grid."""
    ref, _ = load_structure_map("ribosome", voxel_size_angstrom=VOXEL, box=BOX)
    ref = ref / ref.std()
    rng = np.random.default_rng(3)
    step, h = BOX + 2, BOX // 2
    shape = (BOX + 8, 2 * step + 8, 4 * step + 8)
    vol = np.zeros(shape, np.float32)
    pos = []
    for i, r in enumerate(random_rotations(8, seed=4)):
        z, y, x = shape[0] // 2, 4 + h + step * (i // 4), 4 + h + step * (i % 4)
        vol[z - h:z + h, y - h:y + h, x - h:x + h] += transform_reference_to_particle(ref, r)
        pos.append([x, y, z])
    wedge = missing_wedge_mask(shape, rfft=True)
    vol = torch.fft.irfftn(torch.fft.rfftn(torch.from_numpy(vol)) * wedge, s=shape).numpy()
    vol = vol + rng.normal(0, 2.0 * vol.std(), shape).astype(np.float32)
    pos = np.asarray(pos, dtype=np.float64)
    labels = pos + rng.uniform(-2.0, 2.0, pos.shape)
    return vol.astype(np.float32), ref, labels, pos


def _correlation_with_truth(template, truth, *, res=40.0):
    """Correlation at ``res`` Å after the best rotation and shift, inside the particle's sphere; and the shift."""
    t = np.asarray(lowpass(truth, res, voxel_size_angstrom=VOXEL), np.float32)
    m = np.asarray(lowpass(template, res, voxel_size_angstrom=VOXEL), np.float32)
    ali = align_exhaustive(m[None], t, angular_step_deg=20.0, refine_levels=2)
    a = align_particle_to_reference(m, ali.rotations[0], ali.origins_voxels[0])
    inside = sphere_mask(t.shape, 0.5 * DIAMETER / VOXEL + 0.5).numpy() > 0
    x, y = a[inside] - a[inside].mean(), t[inside] - t[inside].mean()
    return float((x * y).sum() / np.sqrt((x * x).sum() * (y * y).sum())), float(np.linalg.norm(ali.origins_voxels[0]))


def test_label_template_recovers_the_planted_shape(planted):
    vol, ref, labels, _ = planted
    blob, _ = _correlation_with_truth(_rotational_average(ref), ref)
    assert 0.7 < blob < 0.8  # the best any spherical template can do

    events = []
    job = label_template_job(vol, labels, voxel_size=VOXEL, diameter_angstrom=DIAMETER)
    while True:
        try:
            events.append(next(job))
        except StopIteration as stop:
            lt = stop.value
            break
    steps = [e for e in events if isinstance(e, Progress) and e.total]
    assert steps and steps[-1].step == steps[-1].total and all(e.step <= e.total for e in steps)
    assert lt.method == "aligned average" and lt.n_used == 8 and lt.iterations == 3 and lt.skipped == ()
    assert lt.box == BOX == default_template_box(DIAMETER / VOXEL) and lt.map.shape == (BOX,) * 3
    assert lt.map.dtype == np.float32 and lt.voxel_size == VOXEL and lt.lowpass_angstrom == 40.0
    assert lt.contrast == 1.0  # protein bright, as in the tomogram
    assert lt.resolution_angstrom is not None and 2 * VOXEL <= lt.resolution_angstrom < 120.0
    # normalised under the mask (sums to 0, unit scale inside), zero outside it
    inside = sphere_mask((BOX,) * 3, 0.5 * DIAMETER / VOXEL).numpy() > 0.999
    assert abs(float(lt.map.sum())) < 1e-3 * float(np.abs(lt.map).sum()) and 0.7 < float(lt.map[inside].std()) < 1.3
    g = np.arange(BOX) - BOX // 2
    r = np.sqrt(g[:, None, None] ** 2 + g[None, :, None] ** 2 + g[None, None, :] ** 2)
    assert np.abs(lt.map[r > 0.5 * DIAMETER / VOXEL + 3.01]).max() == 0.0

    corr, shift = _correlation_with_truth(lt.map, ref)
    assert corr > BAR and corr > blob + 0.1, (corr, blob)
    assert shift < 1.5  # centred like the map (its centre of mass), so picks land on the particles


def test_fewer_labels_degrade_gracefully(planted):
    vol, ref, labels, _ = planted
    blob, _ = _correlation_with_truth(_rotational_average(ref), ref)
    five = label_template(vol, labels[:MIN_ALIGNED], voxel_size=VOXEL, diameter_angstrom=DIAMETER, iterations=2)
    assert five.method == "aligned average" and five.n_used == MIN_ALIGNED
    c5, _ = _correlation_with_truth(five.map, ref)
    assert c5 > BAR - 0.03 and c5 > blob + 0.08, (c5, blob)
    # below MIN_ALIGNED: the rotational average (no orientations, no half sets), about as good as any blob
    three = label_template(vol, labels[:3], voxel_size=VOXEL, diameter_angstrom=DIAMETER)
    assert three.method == "rotational average" and three.n_used == 3 and three.iterations == 0
    assert three.fsc is None and three.resolution_angstrom is None
    c3, shift = _correlation_with_truth(three.map, ref)
    assert c3 > blob - 0.1 and shift < 1.5, (c3, blob)
    np.testing.assert_allclose(three.map, _rotational_average(three.map), atol=0.15)  # spherical
    one = label_template(vol, labels[:1], voxel_size=VOXEL, diameter_angstrom=DIAMETER)
    assert one.method == "rotational average" and np.isfinite(one.map).all()
    assert "rotational average of 1 label" in one.describe()


def test_boxes_outside_are_skipped_and_listed(planted):
    vol, _, labels, _ = planted
    edge = np.array([[3.0, 20.0, 16.0], [60.0, 50.0, 30.0]])  # boxes reaching out of x = 0 and z = 31
    lt = label_template(vol, np.vstack([edge, labels[:3]]), voxel_size=VOXEL, diameter_angstrom=DIAMETER)
    assert lt.n_used == 3 and lt.rows.tolist() == [2, 3, 4]
    assert [s.row for s in lt.skipped] == [0, 1] and all("outside" in s.reason for s in lt.skipped)
    assert "2 skipped" in lt.describe()
    with pytest.raises(InputError, match="at least one label whose box lies inside"):
        label_template(vol, edge, voxel_size=VOXEL, diameter_angstrom=DIAMETER)


def test_bad_input(planted):
    vol, _, labels, _ = planted
    with pytest.raises(InputError, match="labels: expected at least one labelled particle"):
        label_template(vol, np.zeros((0, 3)), voxel_size=VOXEL, diameter_angstrom=DIAMETER)
    with pytest.raises(InputError, match=r"\(n, 3\)"):
        label_template(vol, [1.0, 2.0, 3.0], voxel_size=VOXEL, diameter_angstrom=DIAMETER)
    with pytest.raises(InputError, match="diameter"):  # larger than the tomogram
        label_template(vol, labels, voxel_size=VOXEL, diameter_angstrom=2000.0)
    with pytest.raises(InputError, match="diameter.*fits in the tomogram"):  # its 1.5-diameter box does not fit
        label_template(vol, labels, voxel_size=VOXEL, diameter_angstrom=500.0)
    with pytest.raises(InputError, match="diameter"):
        label_template(vol, labels, voxel_size=VOXEL, diameter_angstrom=-10.0)
    with pytest.raises(InputError, match="box"):
        label_template(vol, labels, voxel_size=VOXEL, diameter_angstrom=DIAMETER, box=13)
    with pytest.raises(InputError, match="at least as large as the particle"):
        label_template(vol, labels, voxel_size=VOXEL, diameter_angstrom=DIAMETER, box=12)
    with pytest.raises(InputError, match="finite"):
        label_template(vol, np.array([[np.nan, 1.0, 1.0]]), voxel_size=VOXEL, diameter_angstrom=DIAMETER)


def test_cancel_closes_the_job(planted):
    vol, _, labels, _ = planted
    job = label_template_job(vol, labels, voxel_size=VOXEL, diameter_angstrom=DIAMETER)
    for _ in range(4):
        next(job)
    job.close()  # what the widget's Cancel does: no error, nothing left running
    with pytest.raises(StopIteration):
        next(job)


def test_session_job_averages_then_matches(planted):
    """What the widget runs: the template from the labels (a Partial), then template matching with it."""
    from napari_cryoalign.backend.jobs import Partial
    from napari_cryoalign.backend.picking.session import label_template_candidates_job

    vol, _, labels, pos = planted
    job = label_template_candidates_job(vol, labels[:6], voxel_size=VOXEL, diameter_angstrom=DIAMETER,
                                        template_options={"iterations": 1}, angular_step_deg=90.0)
    names = []
    while True:
        try:
            ev = next(job)
        except StopIteration as stop:
            outcome = stop.value
            break
        if isinstance(ev, Partial):
            names.append(ev.name)
            if ev.name == "label_template":
                lt = ev.value
        elif ev.message:
            assert ev.message.startswith(("label template: ", "template matching: ")), ev.message
    assert names[0] == "label_template" and lt.n_used == 6 and lt.iterations == 1
    assert outcome.method == "template" and outcome.score_map.shape == vol.shape
    best = outcome.picks.coordinates_xyz[:8]
    d = np.linalg.norm(best[:, None] - pos[None], axis=2)
    assert (d.min(1) <= 2.0).all() and len(set(d.argmin(1))) == 8, d.min(1)
