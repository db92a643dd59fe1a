"""The risk map's definition: smoothed, self-standardised detector maps, calibrated on
healthy voxels; earlier calibration files keep their risk; the benchmark scores the product's maps."""

import dataclasses

import numpy as np
import pytest

from localdiffusion.detectors.cycle import cycle_residual
from localdiffusion.detectors.risk import (RiskCalibration, confident_components, detector_volumes, fit_on_volumes,
                                          risk_definition, risk_volume, risk_volumes)
from localdiffusion.ood.anomaly_map import Calibration
from research.bench.gross_error import neighbourhood_error

SHAPE = (24, 24, 16)


def _brain():
    x, y, z = np.meshgrid(*(np.linspace(-1, 1, n) for n in SHAPE), indexing="ij")
    return x ** 2 + y ** 2 + z ** 2 < 0.8


def _healthy_case(rng, level):
    """A subject whose translation is right up to acquisition-like noise of ``level`` (its own scale)."""
    brain = _brain()
    source = np.where(brain, 0.5 + level * rng.standard_normal(SHAPE), 0).astype(np.float32)
    back = np.where(brain, 0.5 + level * rng.standard_normal(SHAPE), 0).astype(np.float32)
    ood = np.where(brain, rng.uniform(0, 1, SHAPE), 0).astype(np.float32)
    return brain, {"ood": ood, "cycle": cycle_residual(source, back, brain)}


def _fit(cases, smoothing, detectors=("ood", "cycle"), standardised=("cycle",)):
    definition = risk_definition(detectors, smoothing, "fisher", standardised, 0.01, "test")
    return fit_on_volumes(cases, detectors, smoothing, "fisher", standardised, 0.01, steps=25, definition=definition)


def test_cycle_risk_flags_an_error_region_and_not_a_noisier_subject(tmp_path):
    rng = np.random.default_rng(0)
    calibration = _fit([_healthy_case(rng, 0.02) for _ in range(3)], smoothing=1.0)
    # a subject scanned noisier (twice the healthy level everywhere) with a 6-voxel region the
    # translation got wrong (the back-translation is 0.4 off there)
    brain, maps = _healthy_case(rng, 0.04)
    wrong = np.zeros(SHAPE, bool)
    wrong[9:15, 9:15, 5:11] = True
    source = np.where(brain, 0.5 + 0.04 * rng.standard_normal(SHAPE), 0).astype(np.float32)
    back = np.where(brain, source + 0.04 * rng.standard_normal(SHAPE) + 0.4 * wrong, 0).astype(np.float32)
    maps["cycle"] = cycle_residual(source, back, brain)
    risk = risk_volume(calibration, maps, brain)
    assert risk.shape == SHAPE and (risk[~brain] == 0).all()
    core = np.zeros(SHAPE, bool)
    core[10:14, 10:14, 6:10] = True
    assert (risk[core] >= 0.99).mean() > 0.9
    # the noisier subject's healthy brain is not flagged wholesale: its own median and MAD absorb the level
    far = brain & ~np.pad(np.ones((10, 10, 10), bool), [(7, 7), (7, 7), (3, 3)])
    assert (risk[far] >= 0.99).mean() < 0.05
    # the same fit without the per-volume standardisation flags the noisier subject's healthy brain
    plain = _fit([_healthy_case(np.random.default_rng(0), 0.02) for _ in range(3)], 1.0, standardised=())
    assert (risk_volume(plain, maps, brain)[far] >= 0.99).mean() > 0.2
    # unsmoothed, the same calibration speckles: isolated healthy voxels cross the threshold
    raw = _fit([_healthy_case(np.random.default_rng(1), 0.02) for _ in range(3)], smoothing=0.0)
    calibration.save(tmp_path / "risk.json")
    again = RiskCalibration.load(tmp_path / "risk.json")
    assert (again.smoothing, again.detectors, again.standardised) == (1.0, ("ood", "cycle"), ("cycle",))
    assert again.definition["validated_against"]["neighbourhood"] == 3
    np.testing.assert_allclose(risk_volume(again, maps, brain), risk)
    assert risk_volume(raw, maps, brain)[far].std() > risk[far].std()


def test_an_unsmoothed_ood_variance_calibration_keeps_its_risk():
    """A file without smoothing or combination: the OOD probability as it is, the variance through its CDF, the maximum."""
    rng = np.random.default_rng(2)
    brain = _brain()
    healthy = {"ood": rng.uniform(0, 1, 20000).astype(np.float32), "variance": rng.gamma(2.0, 1e-4, 20000)}
    calibration = RiskCalibration.fit(healthy, 0.01)
    assert set(calibration.components) == {"variance"} and calibration.smoothing == 0
    maps = {"ood": rng.uniform(0, 1, SHAPE).astype(np.float32), "variance": rng.gamma(2.0, 1e-4, SHAPE)}
    expected = calibration.combined.probability(np.maximum(maps["ood"],
                                                           calibration.components["variance"].probability(maps["variance"])))
    np.testing.assert_allclose(risk_volume(calibration, maps, brain), np.where(brain, expected, 0), atol=1e-6)


def test_a_smoothed_ood_probability_gets_its_own_cdf():
    rng = np.random.default_rng(3)
    calibration = RiskCalibration.fit({"ood": rng.uniform(0.2, 0.4, 5000)}, 0.01, smoothing=1.0)
    assert isinstance(calibration.components["ood"], Calibration)
    assert calibration.risk({"ood": np.array([0.5])})[0] == 1.0  # above every healthy value once calibrated


def test_neighbourhood_error_ignores_single_voxel_noise():
    truth = np.zeros((9, 9, 9), np.float32)
    speck, blob = truth.copy(), truth.copy()
    speck[4, 4, 4] = 1.0
    blob[3:6, 3:6, 3:6] = 1.0
    assert neighbourhood_error(speck, truth).max() == pytest.approx(1 / 27)
    assert neighbourhood_error(blob, truth)[4, 4, 4] == pytest.approx(1.0)


def test_the_benchmark_scores_the_product_cycle_map():
    """research/risk_map/risk_map.py's cycle_self candidate is the product's cycle detector map."""
    bench = _benchmark()
    rng = np.random.default_rng(4)
    brain = _brain()
    case = {"brain": brain, "source": rng.uniform(0, 1, SHAPE).astype(np.float32),
            "back": rng.uniform(0, 1, SHAPE).astype(np.float32), "ood": rng.uniform(0, 1, SHAPE).astype(np.float32),
            "variance": rng.gamma(2.0, 1e-4, SHAPE).astype(np.float32),
            "pred": rng.uniform(0, 1, SHAPE).astype(np.float32), "second": rng.uniform(0, 1, SHAPE).astype(np.float32)}
    product = detector_volumes(bench.product_maps(case), brain, 1.0, ("ood", "cycle", "variance"),
                               ("cycle", "variance"))
    candidates = bench.raw_maps(case, 1.0)
    np.testing.assert_allclose(candidates["cycle_self"], product["cycle"], atol=1e-5)
    np.testing.assert_allclose(candidates["variance_self"], product["variance"], atol=1e-5)
    np.testing.assert_allclose(candidates["ood"], product["ood"], atol=1e-6)


def test_fisher_counts_two_moderately_unusual_maps_above_one(tmp_path):
    import json

    from localdiffusion.detectors.risk import combine

    both, one = [np.array([0.95]), np.array([0.95])], [np.array([0.96]), np.array([0.0])]
    assert combine(both, "max") < combine(one, "max")
    assert combine(both, "fisher") > combine(one, "fisher")
    with pytest.raises(ValueError, match="unknown combination"):
        combine(both, "mean")
    # a file written before smoothing, combinations and definitions existed loads as max, unsmoothed
    rng = np.random.default_rng(5)
    calibration = RiskCalibration.fit({"ood": rng.uniform(0, 1, 5000), "variance": rng.gamma(2.0, 1e-4, 5000)})
    calibration.save(tmp_path / "new.json")
    payload = json.loads((tmp_path / "new.json").read_text())
    old = {k: v for k, v in payload.items() if k not in ("smoothing", "combination", "definition", "standardised")}
    (tmp_path / "old.json").write_text(json.dumps(old))
    again = RiskCalibration.load(tmp_path / "old.json")
    assert (again.combination, again.smoothing) == ("max", 0.0)
    maps = {"ood": rng.uniform(0, 1, 100), "variance": rng.gamma(2.0, 1e-4, 100)}
    np.testing.assert_allclose(again.risk(maps), calibration.risk(maps))


def test_weights_share_the_false_alarm_budget_between_detectors(tmp_path):
    """The weighted maximum: at the healthy level, detector i flags about w_i of the budget on its own; equal
    weights give the plain maximum's risk; the weights survive a save and a file with bad ones is refused."""
    import json

    from localdiffusion.detectors.risk import combine, parse_weights
    from localdiffusion.errors import InputError

    rng = np.random.default_rng(11)
    healthy = {"ood": rng.uniform(0, 1, 400_000).astype(np.float32),
               "variance": rng.gamma(2.0, 1e-4, 400_000).astype(np.float32)}
    shares = {}
    for weights in ({"ood": 0.9, "variance": 0.1}, {"ood": 0.5, "variance": 0.5}):
        fitted = RiskCalibration.fit(healthy, weights=weights)
        flagged = fitted.risk(healthy) >= 0.99
        assert abs(flagged.mean() - 0.01) < 0.001  # calibrated again: 1% of healthy voxels in all
        probabilities = fitted.detector_probabilities(healthy)
        terms = np.stack([1 - (1 - probabilities[name]) / w for name, w in weights.items()])
        deciding = np.argmax(terms, axis=0)  # the detector whose weighted tail flagged the voxel
        shares[weights["ood"]] = {name: float(np.mean(flagged & (deciding == i))) for i, name in enumerate(weights)}
    # 0.9 / 0.1: the first detector's own top 0.9% and the second's top 0.1% make the 1%; equal weights halve it
    assert 0.0085 < shares[0.9]["ood"] < 0.0095 and 0.0007 < shares[0.9]["variance"] < 0.0013
    assert 0.0045 < shares[0.5]["ood"] < 0.0055 and 0.0045 < shares[0.5]["variance"] < 0.0055
    plain = RiskCalibration.fit(healthy)
    equal = RiskCalibration.fit(healthy, weights={"ood": 1.0, "variance": 1.0})
    probe = {"ood": rng.uniform(0, 1, 2000).astype(np.float32),
             "variance": rng.gamma(2.0, 1e-4, 2000).astype(np.float32)}
    np.testing.assert_allclose(equal.risk(probe), plain.risk(probe), atol=2e-3)
    weighted = RiskCalibration.fit(healthy, weights={"ood": 0.9, "variance": 0.1})
    weighted.save(tmp_path / "w.json")
    again = RiskCalibration.load(tmp_path / "w.json")
    assert again.weights == pytest.approx({"ood": 0.9, "variance": 0.1})
    np.testing.assert_allclose(again.risk(probe), weighted.risk(probe))
    payload = json.loads((tmp_path / "w.json").read_text())
    for bad in ({"ood": 0.9}, {"ood": 0.9, "variance": -0.1}, [0.9, 0.1]):
        (tmp_path / "bad.json").write_text(json.dumps({**payload, "weights": bad}))
        with pytest.raises(InputError, match="corrupt risk calibration"):
            RiskCalibration.load(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="weights need the maximum"):
        combine([probe["ood"], probe["ood"]], "fisher", [0.5, 0.5])
    assert parse_weights(["ood=3", "variance=1"], ("ood", "variance")) == {"ood": 0.75, "variance": 0.25}
    for bad in (["ood=1"], ["ood=a", "variance=1"], ["ood=0", "variance=1"]):
        with pytest.raises(ValueError):
            parse_weights(bad, ("ood", "variance"))


def _benchmark():
    from research.risk_map import risk_map

    return risk_map


def test_smoothing_along_the_slice_axis_round_trips_and_smooths_z_only(tmp_path):
    from localdiffusion.detectors.risk import parse_smoothing, smoothing_label

    assert parse_smoothing("1") == 1.0 and parse_smoothing("1,1,3") == (1.0, 1.0, 3.0)
    for bad in ("1,2", "-1", "a", "1,1,-3"):
        with pytest.raises(ValueError, match="smoothing"):
            parse_smoothing(bad)
    assert smoothing_label((1.0, 1.0, 3.0)) == "1,1,3" and smoothing_label(2.0) == "2"
    rng = np.random.default_rng(6)
    calibration = _fit([_healthy_case(rng, 0.02) for _ in range(3)], smoothing=(0.0, 0.0, 3.0))
    calibration.save(tmp_path / "risk.json")
    again = RiskCalibration.load(tmp_path / "risk.json")
    assert again.smoothing == (0.0, 0.0, 3.0) and "0,0,3" in again.definition["risk"]
    # a map striped slice by slice (z) loses its stripes; one striped along x keeps them
    brain = np.ones(SHAPE, bool)
    z_stripes = np.broadcast_to((np.arange(SHAPE[2]) % 2).astype(np.float32), SHAPE)
    x_stripes = np.broadcast_to((np.arange(SHAPE[0]) % 2).astype(np.float32)[:, None, None], SHAPE)
    smoothed = detector_volumes({"ood": z_stripes, "variance": x_stripes}, brain, again.smoothing)
    assert np.ptp(smoothed["ood"][12, 12, 4:12]) < 0.05 and np.ptp(smoothed["variance"][4:20, 12, 8]) == 1.0
    bad = tmp_path / "bad.json"
    bad.write_text((tmp_path / "risk.json").read_text().replace('"smoothing": [0.0, 0.0, 3.0]', '"smoothing": [1, 2]'))
    from localdiffusion.errors import InputError
    with pytest.raises(InputError, match="corrupt risk calibration"):
        RiskCalibration.load(bad)


def test_the_benchmark_selection_rule():
    bench = _benchmark()
    # the rule: among candidates reaching the AUROC goal, the one catching most; else the best AUROC
    rows = {"a": {"auroc": 0.95, "caught": 0.3}, "b": {"auroc": 0.91, "caught": 0.6}, "c": {"auroc": 0.80, "caught": 0.9}}
    assert bench.choose(rows) == "b"
    assert bench.choose({"a": {"auroc": 0.85, "caught": 0.3}, "c": {"auroc": 0.80, "caught": 0.9}}) == "a"
    assert bench.maps_of("fisher(ood,cycle_self) @1,1,3") == {"ood", "cycle_self"}
    assert bench.maps_of("ood+spread+cycle") == {"ood", "spread", "cycle"} and bench.maps_of("ood @2") == {"ood"}


def test_the_benchmark_refit_is_the_product_fit():
    """research/risk_map/risk_map.py refit (the shift stage's like-for-like comparison) fits the product's definition."""
    bench = _benchmark()
    rng = np.random.default_rng(7)
    brain = _brain()

    def case():
        return {"brain": brain, "source": rng.uniform(0, 1, SHAPE).astype(np.float32),
                "back": rng.uniform(0, 1, SHAPE).astype(np.float32),
                "ood": rng.uniform(0, 1, SHAPE).astype(np.float32),
                "ood_robust": rng.uniform(0, 1, SHAPE).astype(np.float32),
                "variance": rng.gamma(2.0, 1e-4, SHAPE).astype(np.float32)}

    healthy, other = [case(), case()], case()
    product = _fit([(c["brain"], bench.product_maps(c)) for c in healthy], smoothing=2.0)
    again = bench.refit(product, healthy)
    np.testing.assert_allclose(risk_volume(again, bench.product_maps(other), brain),
                               risk_volume(product, bench.product_maps(other), brain), atol=1e-6)
    robust = bench.refit(product, healthy, bench.with_ood(product.needs, "ood_robust"))
    assert robust.needs == ("cycle", "ood_robust") and robust.smoothing == product.smoothing
    assert not np.allclose(risk_volume(robust, bench.product_maps(other), brain),
                           risk_volume(product, bench.product_maps(other), brain))


def test_a_risk_refuses_a_run_without_a_map_it_combines():
    """Only an optional map (RODS curvature, absent without RODS) may be missing; leaving out any other
    would silently give a risk the calibration never meant."""
    rng = np.random.default_rng(3)
    cases = [_healthy_case(rng, 0.02) for _ in range(2)]
    calibration = _fit(cases, smoothing=1.0)
    brain, maps = cases[0]
    with pytest.raises(ValueError, match="'cycle'"):
        risk_volume(calibration, {"ood": maps["ood"]}, brain)
    with_curvature = dataclasses.replace(calibration, detectors=(*calibration.detectors, "curvature"))
    np.testing.assert_allclose(risk_volume(with_curvature, maps, brain), risk_volume(calibration, maps, brain))


def test_a_confident_ood_component_speaks_at_its_own_resolution(tmp_path):
    """A small confident core that smoothing dilutes below the threshold is flagged outright when it is big
    enough; a smaller confident speck is not; the rule round-trips through the file."""
    rng = np.random.default_rng(3)
    brain = _brain()

    def healthy_map(corner):  # noise, and a broad region of moderately unusual tissue (a healthy variant)
        volume = rng.uniform(0, 0.98, SHAPE)
        volume[corner:corner + 6, 8:14, 5:11] = 0.95
        return np.where(brain, volume, 0).astype(np.float32)

    healthy = [(brain, {"ood_located": healthy_map(corner)}) for corner in (6, 9, 12)]
    definition = risk_definition(("ood_located",), 2.0, "max", (), 0.01, "test", confident_ml=0.05)
    sure = fit_on_volumes(healthy, ("ood_located",), 2.0, "max", (), 0.01, definition=definition, confident_ml=0.05)
    plain = dataclasses.replace(sure, confident_ml=None)
    assert "at least 0.05 ml" in sure.definition["risk"]
    probability = np.where(brain, rng.uniform(0, 0.98, SHAPE), 0).astype(np.float32)
    core, speck = np.zeros(SHAPE, bool), np.zeros(SHAPE, bool)
    core[10:13, 10:13, 6:9] = True  # 27 voxels: 0.054 ml at 0.002 ml a voxel
    speck[4:6, 11:13, 7:9] = True  # 8 voxels: 0.016 ml
    probability[core | speck] = 0.999
    maps = {"ood_located": probability}
    assert (risk_volume(plain, maps, brain, 0.002)[core] >= 0.99).mean() < 0.5  # diluted by the smoothing
    flagged = risk_volumes(sure, maps, brain, 0.002)
    assert (flagged.risk[core] == 1).all() and (flagged.probabilities["ood_located"][core] == 1).all()
    assert (flagged.risk[speck] < 1).all()
    np.testing.assert_array_equal(confident_components(probability, brain, 0.05, 0.002), core)
    with pytest.raises(ValueError, match="voxel volume"):
        risk_volume(sure, maps, brain)  # a caller that forgets the grid is a programming error
    sure.save(tmp_path / "risk.json")
    again = RiskCalibration.load(tmp_path / "risk.json")
    assert again.confident_ml == 0.05
    np.testing.assert_allclose(risk_volume(again, maps, brain, 0.002), flagged.risk)


@pytest.mark.parametrize("value", ["NaN", "-1", "\"2\""])
def test_a_calibration_with_a_bad_confident_size_is_refused(tmp_path, value):
    import json

    from localdiffusion.errors import InputError

    brain = _brain()
    rng = np.random.default_rng(4)
    healthy = [(brain, {"ood_located": np.where(brain, rng.uniform(0, 1, SHAPE), 0).astype(np.float32)})]
    fit_on_volumes(healthy, ("ood_located",), 1.0, "max", (), 0.01, confident_ml=2.0).save(tmp_path / "risk.json")
    text = (tmp_path / "risk.json").read_text().replace('"confident_ml": 2.0', f'"confident_ml": {value}')
    (tmp_path / "risk.json").write_text(text)
    assert json.loads(text, parse_constant=lambda c: c)["confident_ml"] is not None
    with pytest.raises(InputError, match="confident_ml"):
        RiskCalibration.load(tmp_path / "risk.json")


def test_a_tumour_risk_flags_confident_ood_components_it_does_not_combine(tmp_path):
    """A map of the lesion U-Net's probability alone, unsmoothed, plus the location-aware OOD map's confident
    components (0.19.0's kind). The calibration reads that OOD map without combining it; the components get risk 1 and
    name the OOD map as what flagged them, everywhere else the OOD map flagged nothing."""
    rng = np.random.default_rng(5)
    brain = _brain()
    healthy = [(brain, {"tumour": np.where(brain, rng.uniform(0, 0.05, SHAPE), 0).astype(np.float32)})
               for _ in range(3)]
    calibration = fit_on_volumes(healthy, ("tumour",), 0.0, "max", (), 0.01, confident_ml=0.05)
    assert calibration.detectors == ("tumour",) and calibration.needs == ("tumour", "ood_located")
    tumour = np.where(brain, rng.uniform(0, 0.05, SHAPE), 0).astype(np.float32)
    lesion, core = np.zeros(SHAPE, bool), np.zeros(SHAPE, bool)
    lesion[6:10, 6:10, 6:10] = True
    core[14:17, 10:13, 6:9] = True  # 27 voxels: 0.054 ml at 0.002 ml a voxel, unseen by the U-Net
    tumour[lesion] = 0.9
    ood = np.where(brain, rng.uniform(0, 0.98, SHAPE), 0).astype(np.float32)
    ood[core] = 0.999
    maps = risk_volumes(calibration, {"tumour": tumour, "ood_located": ood}, brain, 0.002)
    assert (maps.risk[lesion] >= 0.99).all() and (maps.risk[core] == 1).all()
    assert ((maps.risk >= 0.99) & brain & ~lesion & ~core).mean() < 0.03
    assert (maps.probabilities["ood_located"][core] == 1).all() and (maps.probabilities["ood_located"][~core] == 0).all()
    calibration.save(tmp_path / "risk.json")
    again = RiskCalibration.load(tmp_path / "risk.json")
    assert again.needs == ("tumour", "ood_located") and again.confident_ml == 0.05
    with pytest.raises(KeyError):
        risk_volumes(again, {"tumour": tumour}, brain, 0.002)  # the job always gives the maps a calibration needs


def test_the_tumour_probability_is_one_minus_background_on_brain_slices_only():
    import torch

    from localdiffusion.network.segmenter import SegConfig, Segmenter, tumour_probability_volume

    torch.manual_seed(0)
    segmenter = Segmenter(SegConfig(modality="t1", channels=(4, 8), strides=(2,), in_plane=(24, 24))).eval()
    brain = _brain()
    brain[:, :, :3] = False
    image = np.where(brain, np.random.default_rng(0).uniform(0, 1, SHAPE), 0).astype(np.float32)
    volume = tumour_probability_volume(segmenter, image, brain, batch_size=5)
    assert volume.shape == SHAPE and volume.dtype == np.float32
    assert (volume[~brain] == 0).all() and 0 < volume[brain].min() and volume.max() < 1
    k = 8
    with torch.no_grad():
        logits = segmenter.network(torch.as_tensor(image[None, None, :, :, k]))
    expected = 1 - torch.softmax(logits, 1)[0, 0].numpy()
    np.testing.assert_allclose(volume[:, :, k][brain[:, :, k]], expected[brain[:, :, k]], rtol=1e-5, atol=1e-6)


def test_a_fit_on_lesion_cases_pools_their_brain_outside_the_lesion_only():
    """(brain, maps, healthy) triples pool the healthy voxels only: a lesion scan whose lesion is a large share of
    its brain fitted with its lesion included puts the level inside the lesion's values (its healthy brain flagged
    at far below 1%); fitted outside the lesion, the level flags about 1% of that healthy brain and the whole lesion."""
    rng = np.random.default_rng(7)
    brain = _brain()
    lesion = np.zeros(SHAPE, bool)
    lesion[4:12, 4:12, 4:12] = True
    lesion &= brain
    tumour = np.where(brain, rng.uniform(0, 0.5, SHAPE), 0).astype(np.float32)
    tumour[lesion] = rng.uniform(0.9, 1.0, int(lesion.sum()))
    assert (lesion.sum() / brain.sum()) > 0.05
    healthy = brain & ~lesion
    outside = fit_on_volumes([(brain, {"tumour": tumour}, healthy)], ("tumour",), 0.0, "max")
    whole = fit_on_volumes([(brain, {"tumour": tumour})], ("tumour",), 0.0, "max")
    flags = lambda c: c.risk({"tumour": tumour}) >= 0.99  # noqa: E731
    assert 0.005 < flags(outside)[healthy].mean() < 0.02 and flags(outside)[lesion].all()
    assert flags(whole)[healthy].mean() < 0.002


def test_a_region_flagged_at_its_core_grows_over_the_lesion_segmentation(tmp_path):
    """Hysteresis through the U-Net's raw probability: a lesion whose confident core alone reaches the threshold is
    flagged over its whole segmentation, at its core's risk; a moderately unusual blob with no confident voxel stays
    unflagged; the rule round-trips through the file and makes the run read the map it grows through."""
    rng = np.random.default_rng(6)
    brain = _brain()

    def healthy_map(corner):  # noise, and a healthy variant the U-Net half believes in
        volume = rng.uniform(0, 0.05, SHAPE)
        volume[corner:corner + 6, 8:14, 5:11] = 0.75
        return np.where(brain, volume, 0).astype(np.float32)

    healthy = [(brain, {"tumour": healthy_map(corner)}) for corner in (6, 9, 12)]
    calibration = fit_on_volumes(healthy, ("tumour",), 1.0, "max", (), 0.01, grow=("tumour", 0.5))
    plain = dataclasses.replace(calibration, grow=None)
    tumour = np.where(brain, rng.uniform(0, 0.05, SHAPE), 0).astype(np.float32)
    lesion, core, blob = np.zeros(SHAPE, bool), np.zeros(SHAPE, bool), np.zeros(SHAPE, bool)
    lesion[5:13, 6:12, 5:11] = True
    core[7:11, 7:11, 6:10] = True
    blob[15:19, 14:18, 6:10] = True
    tumour[lesion], tumour[core], tumour[blob] = 0.6, 0.99, 0.6
    maps = {"tumour": tumour}
    before = risk_volume(plain, maps, brain)
    assert before[core].max() >= 0.99 and (before[lesion] >= 0.99).mean() < 0.5  # flagged at its core only
    after = risk_volume(calibration, maps, brain)
    assert (after[lesion] >= 0.99).all() and np.allclose(after[lesion], before[lesion].max())
    assert (after[blob] < 0.99).all() and np.array_equal(after[~lesion], before[~lesion])
    assert calibration.needs == ("tumour",)
    calibration.save(tmp_path / "risk.json")
    again = RiskCalibration.load(tmp_path / "risk.json")
    assert again.grow == ("tumour", 0.5)
    np.testing.assert_array_equal(risk_volume(again, maps, brain), after)
    on_risk = dataclasses.replace(plain, grow=("risk", 0.5))  # through the risk itself: the lesion's rim is >= 0.5
    assert (risk_volume(on_risk, maps, brain)[lesion] >= 0.99).all()


def test_growth_through_a_map_the_risk_does_not_combine_is_read_by_the_run():
    brain = _brain()
    rng = np.random.default_rng(7)
    healthy = [(brain, {"ood_located": np.where(brain, rng.uniform(0, 1, SHAPE), 0).astype(np.float32)})]
    calibration = fit_on_volumes(healthy, ("ood_located",), 1.0, "max", (), 0.01, grow=("tumour", 0.5))
    assert calibration.needs == ("ood_located", "tumour")
    assert dataclasses.replace(calibration, grow=("risk", 0.9)).needs == ("ood_located",)


@pytest.mark.parametrize("text", ["tumour", "tumour:1.5", "nothing:0.5", "risk:x", "risk:0"])
def test_a_bad_growth_is_refused(tmp_path, text):
    import json

    from localdiffusion.detectors.risk import parse_growth
    from localdiffusion.errors import InputError

    with pytest.raises(ValueError, match="growth"):
        parse_growth(text)
    brain = _brain()
    healthy = [(brain, {"tumour": np.where(brain, np.random.default_rng(8).uniform(0, 1, SHAPE), 0).astype(np.float32)})]
    fit_on_volumes(healthy, ("tumour",), 1.0, "max", (), 0.01, grow=("risk", 0.9)).save(tmp_path / "risk.json")
    payload = json.loads((tmp_path / "risk.json").read_text())
    assert payload["grow"] == "risk:0.9"
    payload["grow"] = text
    (tmp_path / "risk.json").write_text(json.dumps(payload))
    with pytest.raises(InputError, match="corrupt risk calibration.*growth"):
        RiskCalibration.load(tmp_path / "risk.json")
