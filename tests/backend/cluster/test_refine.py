"""refine_classes: clear errors on bad input (the refinement itself: tests/backend/align/test_ab_initio.py and
tests/backend/test_workflow_scoring.py)."""

import numpy as np
import pytest

from napari_cryoalign.backend.align.types import AlignmentResult
from napari_cryoalign.backend.cluster.common import ClusterResult
from napari_cryoalign.backend.cluster.refine import refine_classes
from napari_cryoalign.errors import InputError


def _clusters(n, box, k=2):
    ali = AlignmentResult(np.broadcast_to(np.eye(3), (n, 3, 3)).copy(), np.zeros((n, 3)), np.zeros(n), "none")
    return ClusterResult(np.arange(n) % k, np.ones(n), np.zeros((n, 2)), ali, np.zeros((k, box, box, box), np.float32),
                         "joint", np.zeros((n, 1)))


def test_bad_input_is_named():
    vols = np.random.default_rng(0).normal(size=(8, 8, 8, 8)).astype(np.float32)
    clu = _clusters(8, 8)
    with pytest.raises(InputError, match="rounds"):
        refine_classes(vols, clu, voxel_size_angstrom=10.0, rounds=-1)
    with pytest.raises(InputError, match="ab_initio_below"):
        refine_classes(vols, clu, voxel_size_angstrom=10.0, ab_initio_below=-5.0)
    with pytest.raises(InputError, match="references"):
        refine_classes(vols, clu, voxel_size_angstrom=10.0, references=[np.zeros((6, 6, 6), np.float32)])
    with pytest.raises(InputError, match="clusters.classes"):
        refine_classes(vols[:6], clu, voxel_size_angstrom=10.0)
    with pytest.raises(InputError, match="voxel_size_angstrom"):
        refine_classes(vols, clu, voxel_size_angstrom=0.0)
    with pytest.raises(InputError, match="inside_masks"):
        refine_classes(vols, clu, voxel_size_angstrom=10.0, inside_masks=np.ones((8, 4, 4, 4), bool))


def test_small_classes_are_left_as_they_were():
    """A class of < 4 particles keeps its average and poses; its resolution is NaN."""
    vols = np.random.default_rng(1).normal(size=(6, 8, 8, 8)).astype(np.float32)
    clu = _clusters(6, 8, k=3)  # 2 particles per class
    got = refine_classes(vols, clu, voxel_size_angstrom=10.0)
    assert np.all(np.isnan(got.resolutions)) and got.initial_models == {}
    assert np.array_equal(got.clusters.averages, clu.averages)
