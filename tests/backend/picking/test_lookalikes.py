"""Look-alike rejection from the labels: candidates of another shape become known negatives."""

from __future__ import annotations

import numpy as np
import pytest

from napari_cryoalign.backend.geometry import random_rotations, transform_reference_to_particle
from napari_cryoalign.backend.jobs import run_job
from napari_cryoalign.backend.picking import Picker
from napari_cryoalign.backend.picking.infer import Picks
from napari_cryoalign.backend.picking.lookalikes import lookalike_negatives_job
from napari_cryoalign.backend.simulate.lookalikes import lookalike_species
from napari_cryoalign.errors import InputError

VOXEL = 20.0


@pytest.fixture(scope="module")
def planted():
    """12 ribosomes (6 labelled) and 6 free large subunits (the sub-complex) in noise, no missing wedge."""
    lset = lookalike_species(VOXEL, n_partial=0)
    full = lset.maps["ribosome"][0]
    sub = lset.maps["ribosome_subcomplex"][0]
    b = full.shape[0]
    kinds = np.array([0] * 12 + [1] * 6)
    rng = np.random.default_rng(3)
    kinds = kinds[rng.permutation(len(kinds))]
    step, cols = b + 2, 6
    tomo = np.zeros((b + 4, 3 * step + 4, cols * step + 4), np.float32)
    xyz = np.array([[step // 2 + 2 + step * (i % cols), step // 2 + 2 + step * (i // cols), tomo.shape[0] // 2]
                    for i in range(len(kinds))], dtype=float)
    h = b // 2
    for (x, y, z), k, r in zip(xyz.astype(int), kinds, random_rotations(len(kinds), seed=4)):
        tomo[z - h:z - h + b, y - h:y - h + b, x - h:x - h + b] += transform_reference_to_particle(
            (full, sub)[k], r)
    tomo += rng.normal(0, 0.6 * float(np.abs(full).max()), tomo.shape).astype(np.float32)
    return tomo, xyz, kinds, 390.0  # the ribosome's diameter, Å


@pytest.fixture(scope="module")
def search(planted):
    """The look-alike search on ``planted``: 6 labelled ribosomes; the other 6 and the 6 sub-complexes are the
    candidates, all scored 0.9 by the picker (it cannot tell)."""
    tomo, xyz, kinds, diameter = planted
    ribosomes = np.flatnonzero(kinds == 0)
    labels = xyz[ribosomes[:6]]
    candidates = np.concatenate([xyz[ribosomes[6:]], xyz[kinds == 1]])
    truth = np.array([0] * 6 + [1] * int(np.sum(kinds == 1)))

    def fake_pick_job(picker, tomogram, **kwargs):
        yield from ()
        return Picks(candidates, np.full(len(candidates), 0.9)), None

    import napari_cryoalign.backend.picking.infer as infer

    picker = Picker.new(diameter_angstrom=diameter, voxel_size=VOXEL)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(infer, "pick_job", fake_pick_job)
        # one grid optimum refined per box (the default refines 3): the same rule, a third of the time in CI
        found = run_job(lookalike_negatives_job(picker, tomo, labels, voxel_size=VOXEL, tilt_range_deg=None,
                                                fit_candidates=1), progress=False)
    return found, candidates, truth


def test_candidates_of_another_shape_become_negatives(search):
    found, candidates, truth = search
    assert found.template is not None and found.template.n_used == 6
    assert np.isfinite(found.cut) and len(found.candidates_xyz) == len(candidates)
    got = {tuple(p) for p in found.negatives_xyz}
    is_neg = np.array([tuple(p) in got for p in candidates])
    assert is_neg[truth == 1].sum() >= 4  # most free subunits rejected
    assert not is_neg[truth == 0].any()  # no ribosome
    # the fits separate the kinds: every ribosome fits better than every sub-complex's median
    assert np.min(found.candidate_fit[truth == 0]) > np.median(found.candidate_fit[truth == 1])


def test_shape_check_lowers_lookalikes_and_keeps_targets(planted, search, tmp_path):
    """The shape check at inference: picks the network scores alike (0.6) are weighed by their fit to the labels'
    average; the sub-complexes fall below 0.5, the ribosomes stay above; the reference survives the model file."""
    from napari_cryoalign.backend.picking import load_picker, save_picker
    from napari_cryoalign.backend.picking.shape_check import (apply_shape_check, shape_check_job,
                                                               shape_reference_from_search)

    tomo, xyz, kinds, diameter = planted
    found, candidates, truth = search
    ref, why_not = shape_reference_from_search(found)
    assert ref is not None and why_not == "" and ref.map.shape == found.template.map.shape and ref.scale > 0
    assert ref.half_map_correlation > 0.3  # 0.40 here (3 noisy labels per half)
    # half averages that do not agree (here: independent noise) give no reference, and say why
    from dataclasses import replace

    rng = np.random.default_rng(0)
    noisy = replace(found.template, half_maps=tuple(rng.normal(size=found.template.map.shape) for _ in range(2)))
    none, why_not = shape_reference_from_search(replace(found, template=noisy))
    assert none is None and "too noisy" in why_not
    assert np.isclose(ref.centre, np.median(found.label_fit)) and 0.1 < ref.floor < 0.13
    low = np.array([[3.0, 3.0, 3.0]])  # a pick below the floor: not checked, score kept
    picks = Picks(np.concatenate([candidates, low]), np.array([0.6] * len(candidates) + [0.05]))
    events = []
    checked, check = run_job(shape_check_job(picks, tomo, ref, voxel_size=VOXEL), progress=False,
                             on_progress=events.append)
    assert len(check.coordinates_xyz) == len(candidates) and np.all(np.isfinite(check.fit))
    score = {tuple(p): s for p, s in zip(checked.coordinates_xyz, checked.scores)}
    ribo = np.array([score[tuple(p)] for p in candidates[truth == 0]])
    sub = np.array([score[tuple(p)] for p in candidates[truth == 1]])
    assert np.all(ribo >= 0.5) and np.sum(sub < 0.5) >= 4 and ribo.min() > np.median(sub)
    assert score[tuple(low[0])] == 0.05 and np.all(np.diff(checked.scores) <= 0)  # sorted again
    assert np.isnan(check.threshold) and check.centre == ref.centre  # all above 0.5: the labels' median is the centre
    # the usual case: the picker's threshold says how many (here 6 of 12 reach 0.5), the fit says which
    mixed = np.where(np.arange(len(candidates)) % 2 == 0, 0.6, 0.45)
    kept, kcheck = run_job(shape_check_job(Picks(candidates, mixed), tomo, ref, threshold=0.5, voxel_size=VOXEL,
                                           known=check), progress=False)
    assert kcheck.threshold == 0.5 and np.sum(kept.scores >= 0.5) == np.sum(mixed >= 0.5) == 6
    top = {tuple(p) for p in kept.coordinates_xyz[kept.scores >= 0.5]}
    assert sum(tuple(p) in top for p in candidates[truth == 0]) >= 5  # the ribosomes, whatever the network said
    # picks that reach the threshold whatever their fit are not fitted and keep their score; sure=True fits them
    # too: the same picks reach the threshold either way
    assert 0.98 < ref.ceiling(0.5) < 0.985
    sure_scores = np.where(np.arange(len(candidates)) % 3 == 0, 0.995, mixed)
    fast, fcheck = run_job(shape_check_job(Picks(candidates, sure_scores), tomo, ref, threshold=0.5, voxel_size=VOXEL,
                                           known=check), progress=False)
    slow, scheck = run_job(shape_check_job(Picks(candidates, sure_scores), tomo, ref, threshold=0.5, voxel_size=VOXEL,
                                           known=check, sure=True), progress=False)
    assert len(fcheck.coordinates_xyz) == np.sum(sure_scores < 0.995) and len(scheck.coordinates_xyz) == len(candidates)
    fast_score = {tuple(p): s for p, s in zip(fast.coordinates_xyz, fast.scores)}
    assert all(fast_score[tuple(p)] == 0.995 for p in candidates[sure_scores == 0.995])
    assert np.isclose(fcheck.centre, scheck.centre)
    assert {tuple(p) for p in fast.coordinates_xyz[fast.scores >= 0.5]} == \
        {tuple(p) for p in slow.coordinates_xyz[slow.scores >= 0.5]}
    # fits already made are reused, not fitted again
    again, check2 = run_job(shape_check_job(picks, tomo, ref, voxel_size=VOXEL, known=check), progress=False,
                            on_progress=events.append)
    assert np.allclose(again.scores, checked.scores) and "fitting 0 picks" in events[-2].message
    # the widget's peaks found again at the same places get the checked scores
    assert np.allclose(apply_shape_check(picks, check).scores, checked.scores)
    assert apply_shape_check(picks, None) is picks
    # a picker model file keeps the reference; another voxel size is refused
    picker = Picker.new(diameter_angstrom=diameter, voxel_size=VOXEL)
    picker.shape_reference = ref
    back = load_picker(save_picker(tmp_path / "m.pt", picker)).shape_reference
    assert np.array_equal(back.map, ref.map) and back.centre == ref.centre and back.tilt_range_deg is None
    with pytest.raises(InputError, match="voxel_size"):
        run_job(shape_check_job(picks, tomo, ref, voxel_size=2 * VOXEL), progress=False)


def test_two_groups_split_and_separation():
    from napari_cryoalign.backend.picking.lookalikes import _two_groups

    rng = np.random.default_rng(0)
    two = np.concatenate([rng.normal(0.13, 0.005, 20), rng.normal(0.17, 0.008, 60)])
    cut, d, low, high = _two_groups(two)
    assert 0.14 < cut < 0.16 and d > 3 and abs(low - 0.13) < 0.005 and abs(high - 0.17) < 0.005
    one = [_two_groups(np.random.default_rng(s).normal(0.16, 0.01, 80)) for s in range(8)]
    assert max(d for _, d, _, _ in one) < 3  # one spread-out group: no clear split
    assert all(low > 0.16 - 1.28 * 0.01 for _, _, low, _ in one)  # and its lower part is no lower than its 10 %
    assert np.isnan(_two_groups([0.1, 0.2])[1])


def test_far_too_good_a_fit_is_a_negative_even_at_the_faces(monkeypatch):
    """Gold beads (small, far denser than the target) correlate with any blob of the right size better than
    a noisy copy of the target does: a group fitting far better than the labels becomes negatives. Beads
    touching the tomogram's faces (as at the ice surfaces) are scored on padded boxes, not skipped."""
    lset = lookalike_species(VOXEL, n_partial=0)
    full = lset.maps["ribosome"][0]
    b, h = full.shape[0], full.shape[0] // 2
    rng = np.random.default_rng(5)
    step, cols, n_rib, n_gold = b + 2, 6, 12, 6
    tomo = np.zeros((b + 4, 3 * step + 4, cols * step + 4), np.float32)
    centres = np.array([[step // 2 + 2 + step * (i % cols), step // 2 + 2 + step * (i // cols), tomo.shape[0] // 2]
                        for i in range(n_rib + n_gold)], dtype=float)
    for (x, y, z), r in zip(centres[:n_rib].astype(int), random_rotations(n_rib, seed=6)):
        tomo[z - h:z - h + b, y - h:y - h + b, x - h:x - h + b] += transform_reference_to_particle(full, r)
    gold = centres[n_rib:].copy()
    gold[:3, 2] = 3.0  # three beads on a face: their boxes are 60-70 % inside
    zz, yy, xx = np.mgrid[: tomo.shape[0], : tomo.shape[1], : tomo.shape[2]]
    for x, y, z in gold:  # 2.5-voxel beads (10 nm at 20 Å), ten times the ribosome's peak density
        tomo[(xx - x) ** 2 + (yy - y) ** 2 + (zz - z) ** 2 <= 2.5 ** 2] += 10 * float(np.abs(full).max())
    tomo += rng.normal(0, 0.6 * float(np.abs(full).max()), tomo.shape).astype(np.float32)
    labels, candidates = centres[:6], np.concatenate([centres[6:n_rib], gold])

    def fake_pick_job(picker, tomogram, **kwargs):
        yield from ()
        return Picks(candidates, np.full(len(candidates), 0.9)), None

    import napari_cryoalign.backend.picking.infer as infer

    monkeypatch.setattr(infer, "pick_job", fake_pick_job)
    picker = Picker.new(diameter_angstrom=390.0, voxel_size=VOXEL)
    found = run_job(lookalike_negatives_job(picker, tomo, labels, voxel_size=VOXEL, tilt_range_deg=None,
                                            fit_candidates=1), progress=False)
    assert np.isfinite(found.candidate_fit).all()  # the beads on the face were scored (padded boxes)
    assert np.min(found.candidate_fit[6:]) > np.max(found.label_fit)  # every bead fits better than any label
    assert np.isfinite(found.cut_above) and "far better" in found.reason
    got = {tuple(p) for p in found.negatives_xyz}
    assert all(tuple(p) in got for p in gold)  # every bead, on a face or not
    assert not any(tuple(p) in got for p in centres[6:n_rib])  # no ribosome


def test_too_few_labels_skip_the_search(planted):
    tomo, xyz, kinds, diameter = planted
    picker = Picker.new(diameter_angstrom=diameter, voxel_size=VOXEL)
    found = run_job(lookalike_negatives_job(picker, tomo, xyz[:3], voxel_size=VOXEL), progress=False)
    assert len(found.negatives_xyz) == 0 and "at least" in found.reason and found.template is None
    with pytest.raises(InputError, match="fit_candidates"):
        run_job(lookalike_negatives_job(picker, tomo, xyz, voxel_size=VOXEL, fit_candidates=0), progress=False)


def test_fit_picker_learns_the_lookalikes_found_as_negatives(monkeypatch):
    """The default recipe: PU training, the look-alike search, more steps with what it found as negatives."""
    import napari_cryoalign.backend.picking.fit as fit
    from napari_cryoalign.backend.picking.lookalikes import LookalikeNegatives
    from napari_cryoalign.backend.simulate.tomogram import sample_tomogram

    sim = sample_tomogram(seed=0)
    labels = np.asarray(sim.truth.coordinates_xyz)[:5]
    fake_negatives = np.array([[20.0, 20.0, 10.0], [100.0, 40.0, 30.0]])
    seen = {}

    def fake_search(picker, tomogram, labels_xyz, **kwargs):
        seen["labels"] = len(labels_xyz)
        yield from ()
        return LookalikeNegatives(fake_negatives, candidates_xyz=np.zeros((7, 3)), cut=0.2, template=object())

    monkeypatch.setattr(fit, "lookalike_negatives_job", fake_search)
    partials = []
    res = run_job(fit.fit_picker_job(sim.tomogram, labels, diameter_angstrom=250.0, voxel_size=float(sim.voxel_size),
                                     iterations=3, lookalike_steps=2), progress=False, on_partial=partials.append)
    tr = res.picker.training
    assert seen["labels"] == 5 and "lookalikes" in [p.name for p in partials]
    assert res.iterations == 5 and tr["iterations_done"] == 5 and len(res.losses) == 5
    assert tr["n_negatives"] == 2 and tr["lookalike_negatives"] == 2 and tr["lookalike_candidates"] == 7
    assert res.picker.default_threshold == 0.5 and tr["threshold_rule"].startswith("Bayes cut")
    assert np.allclose(tr["lookalike_negatives_xyz"], fake_negatives)  # kept with the model (and its file)
    # Train again (continue) with one removed pick: the look-alikes found are reused, no second search;
    # a look-alike the user has since labelled is dropped
    seen.clear()
    removed = np.array([[60.0, 60.0, 20.0]])
    more_labels = np.concatenate([labels, fake_negatives[1:] + 0.5])
    import copy

    old = copy.deepcopy(res.picker)  # Train again changes the model in place
    again = run_job(fit.fit_picker_job(sim.tomogram, more_labels, picker=res.picker, iterations=2,
                                       voxel_size=float(sim.voxel_size), negatives_xyz=removed),
                    progress=False, on_partial=partials.append)
    assert not seen and again.iterations == 2 and again.picker.training["lookalike_reused"]
    assert again.picker.training["n_negatives"] == 2  # the removed pick + the look-alike not labelled since
    assert np.allclose(again.picker.training["lookalike_negatives_xyz"], fake_negatives[:1])
    assert partials[-1].name == "lookalikes" and "reused" in partials[-1].value.reason
    # Train again keeps the count the corrections imply: the picks at the old default threshold, less the removed
    # ones among them, plus the labels none of them found; the new default threshold gives that many picks
    from napari_cryoalign.backend.picking.infer import pick_job

    count = again.picker.training["corrected_count"]
    before, _ = run_job(pick_job(old, sim.tomogram, threshold=count["threshold_before"], shape_check=False),
                        progress=False)
    assert count["before"] == len(before) and count["target"] == max(1, len(before) - count["removed"]
                                                                      + count["added"])
    assert count["added"] >= 1  # the two look-alike places just labelled are no picks of the old model
    after, _ = run_job(pick_job(again.picker, sim.tomogram, threshold=again.picker.default_threshold,
                                shape_check=False), progress=False)
    assert len(after) == count["target"] or again.picker.default_threshold == fit.COUNT_FLOOR
    assert again.picker.training["threshold_rule"].startswith("the count the corrections imply")
    # a later training without the recipe's continuing path leaves no stale rule behind
    later = run_job(fit.fit_picker_job(sim.tomogram, more_labels, picker=again.picker, iterations=1,
                                       voxel_size=float(sim.voxel_size), reject_lookalikes=False), progress=False)
    assert later.picker.training["threshold_rule"] == "calibrated on the labels"
    assert "corrected_count" not in later.picker.training
    assert later.picker.default_threshold == later.picker.training["suggested_threshold"]
    # without the search: one training run, nothing recorded about look-alikes
    plain = run_job(fit.fit_picker_job(sim.tomogram, labels, diameter_angstrom=250.0,
                                       voxel_size=float(sim.voxel_size), iterations=3, reject_lookalikes=False),
                    progress=False)
    assert plain.iterations == 3 and "lookalike_negatives" not in plain.picker.training
    assert plain.picker.default_threshold == plain.picker.training["suggested_threshold"]  # the labels' rule
    # removed picks with the recipe, its search finding nothing: trained with known negatives, the Bayes cut
    monkeypatch.setattr(fit, "lookalike_negatives_job", lambda *a, **k: _nothing_found())
    removed = run_job(fit.fit_picker_job(sim.tomogram, labels, diameter_angstrom=250.0,
                                         voxel_size=float(sim.voxel_size), iterations=2,
                                         negatives_xyz=fake_negatives), progress=False)
    assert removed.picker.default_threshold == 0.5 and removed.picker.training["n_negatives"] == 2


def _nothing_found():
    from napari_cryoalign.backend.picking.lookalikes import LookalikeNegatives

    yield from ()
    return LookalikeNegatives(np.zeros((0, 3)), reason="nothing")


def test_train_again_count_rule(monkeypatch):
    """The count Train again keeps: the picks the user reviewed, less those removed, plus the particles labelled
    that no pick found; the new threshold lies between the scores that give exactly that many picks."""
    import napari_cryoalign.backend.picking.fit as fit

    xyz = np.array([[10.0 * i, 10.0, 10.0] for i in range(1, 11)])
    shown = {"picks": Picks(xyz, np.linspace(0.9, 0.6, 10))}

    def fake_picks(picker, tomogram, threshold, **kwargs):
        yield from ()
        p = shown["picks"]
        keep = p.scores >= threshold
        return Picks(p.coordinates_xyz[keep], p.scores[keep])

    monkeypatch.setattr(fit, "_picks", fake_picks)
    picker = Picker.new(diameter_angstrom=8 * VOXEL, voxel_size=VOXEL)  # 8 voxels: "near" is within 4
    removed = np.array([[20.0, 11.0, 10.0], [50.0, 10.0, 12.0], [300.0, 300.0, 5.0]])  # 2 picks, 1 elsewhere
    labels = np.array([[30.0, 10.0, 10.0], [40.0, 9.0, 10.0], [60.0, 10.0, 10.0], [200.0, 200.0, 10.0]])
    count = run_job(fit._corrected_count(picker, None, labels, removed, voxel_size=VOXEL, device="cpu"),
                    progress=False)
    assert (count["before"], count["removed"], count["added"], count["target"]) == (10, 2, 1, 9)
    shown["picks"] = Picks(np.concatenate([xyz, xyz + 100]), np.linspace(0.95, 0.05, 20))  # the retrained model
    run_job(fit._keep_corrected_count(picker, None, count, voxel_size=VOXEL, device="cpu"), progress=False)
    s = np.linspace(0.95, 0.05, 20)
    assert np.isclose(picker.default_threshold, 0.5 * (s[8] + s[9])) and np.sum(s >= picker.default_threshold) == 9
    assert picker.training["corrected_count"]["target"] == 9
    # picks at the removed places are not counted: the user removed them for good (the 3rd and 4th here)
    run_job(fit._keep_corrected_count(picker, None, count, negatives_xyz=xyz[2:4] + 1.0, voxel_size=VOXEL,
                                      device="cpu"), progress=False)
    assert np.isclose(picker.default_threshold, 0.5 * (s[10] + s[11]))  # 9 picks besides the 2 removed


def test_train_again_does_not_learn_removed_picks_where_the_labels_average_is_too_noisy(monkeypatch):
    """Below the shape check's gate (the labels' half averages correlate < 0.25) Train again continues without the
    removed picks as negatives (they stay out of the count); above it they are learnt. docs/picking.md."""
    import napari_cryoalign.backend.picking.fit as fit
    from napari_cryoalign.backend.picking.train import TrainResult

    xyz = np.array([[10.0 * i, 10.0, 10.0] for i in range(1, 11)])

    def fake_picks(picker, tomogram, threshold, **kwargs):
        yield from ()
        sc = np.linspace(0.9, 0.45, 10)
        return Picks(xyz[sc >= threshold], sc[sc >= threshold])

    seen = {}

    def fake_train(tomogram, labels_xyz, *, negatives_xyz=None, picker=None, **kwargs):
        yield from ()
        seen["negatives"] = None if negatives_xyz is None else np.asarray(negatives_xyz)
        return TrainResult(picker=picker, losses=np.zeros(1), iterations=1, seconds=0.0)

    monkeypatch.setattr(fit, "_picks", fake_picks)
    monkeypatch.setattr(fit, "train_picker_job", fake_train)
    look = [[200.0, 200.0, 10.0]]  # a look-alike the first training found: learnt again either way
    removed = xyz[:2] + 0.5
    labels = xyz[4:9]
    tomo = np.zeros((20, 300, 300), np.float32)
    for rho, learnt in ((0.15, False), (0.40, True)):
        picker = Picker.new(diameter_angstrom=8 * VOXEL, voxel_size=VOXEL)
        picker.training.update(lookalike_negatives_xyz=look, tomogram_shape=list(tomo.shape), half_map_correlation=rho,
                               suggested_threshold=0.5)
        res = run_job(fit.fit_picker_job(tomo, labels, picker=picker, negatives_xyz=removed, voxel_size=VOXEL),
                      progress=False)
        negs = seen["negatives"]
        assert len(negs) == (3 if learnt else 1) and np.allclose(negs[-1], look[0])
        why = res.picker.training.get("removed_picks_not_learnt")
        assert (why is None) == learnt
        if not learnt:
            assert "0.15" in why and "not learnt" in why
        # the count: 10 picks shown at 0.5 (9 here: 0.45 < 0.5), 2 removed -> 7; the removed ones are not counted
        assert res.picker.training["corrected_count"]["target"] == 7
    # a model from before the correlation was recorded: its shape check's reason says it
    old = Picker.new(diameter_angstrom=8 * VOXEL, voxel_size=VOXEL)
    old.training["shape_check_reason"] = "the labels' half averages correlate 0.19 (at least 0.25): too noisy to judge"
    assert fit.learns_removed_picks(old)[0] is False
    old.training["shape_check_reason"] = "no aligned average of the labels"
    assert fit.learns_removed_picks(old) == (True, "")
