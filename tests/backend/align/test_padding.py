"""Boxes that cross a tomogram's faces (issue 20): padded, not dropped; they align as well as interior
ones, and the averages compensate their lower coverage."""

import numpy as np
import pytest

from napari_cryoalign.backend.align.average import average_particles, wedge_compensated_average
from napari_cryoalign.backend.align.exhaustive import align_exhaustive
from napari_cryoalign.backend.align.extract import extract_subtomograms
from napari_cryoalign.backend.align.types import AlignmentResult
from napari_cryoalign.backend.geometry import geodesic_angle_deg, random_rotations, transform_reference_to_particle
from napari_cryoalign.backend.simulate.structures import load_structure_map


@pytest.fixture(scope="module")
def ribosome32():
    ref, vox = load_structure_map("ribosome", voxel_size_angstrom=12.0, box=32)
    return ref.astype(np.float32)


def test_a_box_crossing_a_face_aligns_as_well_as_an_interior_one(ribosome32):
    ref = ribosome32
    # a 40-voxel-thick slab; the particle (radius ~10 voxels) lies inside the volume, its 32-voxel box does not
    tomo_shape = (40, 96, 96)
    pos = np.array([[24, 24, 20], [64, 24, 20],  # interior
                    [24, 64, 29], [64, 64, 11], [85, 44, 20]])  # box crosses the top, bottom, +x face by 5
    rots = random_rotations(len(pos), seed=11)
    tomo = np.zeros(tomo_shape, np.float32)
    h = 16
    for (x, y, z), r in zip(pos, rots):
        vol = transform_reference_to_particle(ref, r)
        z0, y0, x0 = z - h, y - h, x - h
        sl = tuple(slice(max(0, a), min(s, a + 32)) for a, s in zip((z0, y0, x0), tomo_shape))
        src = tuple(slice(s.start - a, s.stop - a) for s, a in zip(sl, (z0, y0, x0)))
        tomo[sl] += vol[src]
    rng = np.random.default_rng(3)
    tomo += rng.normal(scale=0.7 * ref.std() / 0.3, size=tomo.shape).astype(np.float32) * 0.3

    ext = extract_subtomograms(tomo, pos, 32)
    assert list(ext.rows) == [0, 1, 2, 3, 4] and not ext.skipped  # nothing lost at the faces
    assert np.allclose(ext.fraction_inside, [1, 1, 27 / 32, 27 / 32, 27 / 32])
    res = align_exhaustive(ext.volumes, ref, angular_step_deg=30.0, refine_levels=2, device="cpu")
    err = geodesic_angle_deg(res.rotations, rots)
    assert err[:2].max() < 6.0, err
    assert err[2:].max() < 6.0, err  # the padded ones as well as the interior ones
    assert np.abs(res.origins_voxels).max() < 1.0
    assert np.min(res.scores[2:]) > 0.5 * np.min(res.scores[:2])


def test_averages_compensate_the_coverage_of_padded_boxes(ribosome32):
    ref = ribosome32
    n = 4
    vols = np.repeat(ref[None], n, axis=0).copy()
    inside = np.ones_like(vols)
    for i in (0, 1):  # two of four boxes lose their top 10 planes to the tomogram's face, filled with the mean
        inside[i, 22:] = 0.0
        vols[i, 22:] = vols[i, :22].mean()
    plain = wedge_compensated_average(vols, None)
    comp = wedge_compensated_average(vols, None, inside_masks=inside)
    top = (slice(22, 32),)

    def contrast(a):
        return float(np.std(a[top]))

    assert contrast(plain) < 0.6 * contrast(ref)  # half the boxes saw it: half the contrast
    assert contrast(comp) == pytest.approx(contrast(ref), rel=0.05)
    assert np.corrcoef(comp.ravel(), ref.ravel())[0, 1] > np.corrcoef(plain.ravel(), ref.ravel())[0, 1]
    # the half maps and the full map of average_particles take them too
    res = average_particles(vols, AlignmentResult(np.broadcast_to(np.eye(3), (n, 3, 3)).copy(), np.zeros((n, 3)),
                                                  np.zeros(n), "given"), inside_masks=inside, half=[1, 2, 1, 2])
    assert contrast(res.average) == pytest.approx(contrast(ref), rel=0.05)
    with pytest.raises(Exception, match="inside masks"):
        wedge_compensated_average(vols, None, inside_masks=inside[:2])


def test_cluster_class_averages_compensate_the_coverage(ribosome32):
    """``cluster_subtomograms_job(inside_masks=...)``: each class average restores the contrast of the
    planes that half its boxes miss (the ``cryoalign cluster`` command and widget pass them)."""
    from napari_cryoalign.backend.cluster.classify import cluster_subtomograms_job
    from napari_cryoalign.backend.jobs import run_job

    cct = load_structure_map("cct", voxel_size_angstrom=12.0, box=32)[0].astype(np.float32)
    refs = {0: ribosome32, 1: cct}
    truth = np.repeat([0, 1], 6)
    vols = np.stack([refs[c] for c in truth]).copy()
    inside = np.ones_like(vols)
    for i in (0, 2, 4, 6, 8, 10):  # half of each species lose their top 8 planes
        inside[i, 24:] = 0.0
        vols[i, 24:] = vols[i, :24].mean()
    kw = {"n_classes": 2, "iterations": 1, "voxel_size_angstrom": 12.0, "seed": 0}
    plain = run_job(cluster_subtomograms_job(vols, **kw), progress=False)
    comp = run_job(cluster_subtomograms_job(vols, inside_masks=inside, **kw), progress=False)
    assert np.array_equal(plain.classes, comp.classes)
    for c in range(2):
        species = int(np.bincount(truth[comp.classes == c]).argmax())
        ref, top = refs[species], (slice(24, 32),)
        assert float(np.std(comp.averages[c][top])) > 0.8 * float(np.std(ref[top]))
        assert float(np.std(comp.averages[c][top])) > 1.3 * float(np.std(plain.averages[c][top]))
