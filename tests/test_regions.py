"""Flagged regions of a risk map: sizes, scanner centres, order, detectors, and the report ``run`` writes."""

import json

import numpy as np

from localdiffusion.detectors.regions import MIN_REGION_ML, find_regions, grow_flagged


def _risk() -> tuple[np.ndarray, np.ndarray]:
    risk = np.zeros((40, 40, 20), np.float32)
    risk[5:9, 5:9, 5:9] = 0.995  # 64 voxels of 8 mm3: 0.512 ml
    risk[20:30, 20:30, 10:14] = 0.9999  # 400 voxels: 3.2 ml, the larger risk
    risk[35, 35, 2] = 1.0  # one voxel: 0.008 ml, below the reporting size
    risk[0:3, 30:33, 0:3] = 0.98  # under the threshold
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = (-40.0, -50.0, -10.0)
    return risk, affine


def test_regions_are_numbered_by_largest_risk_with_their_scanner_centres_and_volumes():
    risk, affine = _risk()
    ood = np.zeros_like(risk)
    ood[6, 6, 6] = 0.999  # only the small region is flagged by the OOD map on its own
    labels, regions = find_regions(risk, affine, {"ood": ood, "cycle": risk})
    assert [r.label for r in regions] == [1, 2]
    big, small = regions
    assert big.voxels == 400 and abs(big.volume_ml - 3.2) < 1e-6 and big.max_risk == np.float32(0.9999)
    assert np.allclose(big.centre_mm, (-40 + 2 * 24.5, -50 + 2 * 24.5, -10 + 2 * 11.5))
    assert small.voxels == 64 and np.allclose(small.centre_mm, (-40 + 2 * 6.5, -50 + 2 * 6.5, -10 + 2 * 6.5))
    assert big.detectors == ["cycle"] and small.detectors == ["ood", "cycle"]
    assert labels.dtype == np.uint8 and (labels == 1).sum() == 400 and (labels == 2).sum() == 64
    assert labels[35, 35, 2] == 0 and labels[1, 31, 1] == 0 and 0.008 < MIN_REGION_ML
    # the centre as the patient's sides, as 3D Slicer's data probe writes a position
    assert big.position == "R 9.0, P 1.0, S 13.0" and small.position == "L 27.0, P 37.0, S 3.0"
    assert "flagged region 1: 3.20 ml centred at R 9.0, P 1.0, S 13.0 mm" in big.line()


def test_a_position_names_the_patients_side_of_every_coordinate():
    from localdiffusion.detectors.regions import patient_position

    assert patient_position((-61.04, -24.69, 6.47)) == "L 61.0, P 24.7, S 6.5"
    assert patient_position((12.0, 0.0, -3.25)) == "R 12.0, A 0.0, I 3.2"  # zero counts as R, A, S (as Slicer's)


def test_no_region_when_nothing_reaches_the_threshold():
    risk, affine = _risk()
    labels, regions = find_regions(np.minimum(risk, 0.98), affine)
    assert regions == [] and not labels.any()


def test_hysteresis_grows_a_flagged_core_through_its_component_only():
    """A seed at the threshold raises its whole component of the lower map to the seed's risk; a component without a
    seed, and a seed outside the lower map, keep their risk; values only ever go up."""
    risk = np.zeros((12, 12, 12), np.float32)
    risk[1:5, 1:5, 1:5] = 0.9
    risk[2, 2, 2] = 0.995  # seed inside a component
    risk[7:11, 7:11, 7:11] = 0.95  # a component without a seed
    risk[0, 11, 0] = 0.999  # a lone seed
    grown = grow_flagged(risk, risk >= 0.5)
    assert np.allclose(grown[1:5, 1:5, 1:5], 0.995)
    assert np.array_equal(grown[7:11, 7:11, 7:11], risk[7:11, 7:11, 7:11]) and grown[0, 11, 0] == risk[0, 11, 0]
    assert (grown >= risk).all() and ((grown >= 0.99) & (risk < 0.99)).sum() == 4 ** 3 - 1
    assert np.array_equal(grow_flagged(risk, np.zeros(risk.shape, bool)), risk)


def test_run_writes_the_region_label_map_and_its_report(risk_models, cohort, tmp_path, capsys, caplog):
    """With a risk calibration, ``run`` writes the regions as a label map and a JSON report whose regions match
    it, and says each region on stderr."""
    import nibabel as nib

    from localdiffusion.cli import main

    models = risk_models
    case = next(p for p in sorted(cohort.iterdir()) if "test_t" in p.name)
    out = tmp_path / "out"
    assert main(["run", "--input", str(case / f"{case.name}_t1.nii.gz"), "--out-dir", str(out), "--models",
                 str(models), "--steps", "2", "--no-baseline", "--json"]) == 0
    captured = capsys.readouterr()
    events = [json.loads(line) for line in captured.out.splitlines() if line.startswith("{")]
    written = {e["name"]: e["path"] for e in events if e["event"] == "output"}
    assert {"risk", "risk_regions", "region_report"} <= set(written)
    report = json.loads(open(written["region_report"], encoding="utf-8").read())
    labels = np.asarray(nib.load(written["risk_regions"]).dataobj)
    risk_image = nib.load(written["risk"])
    risk = np.asarray(risk_image.dataobj)
    assert report["direction"] == "t1_to_flair" and report["steps"] == 2 and report["regions"]
    assert labels.max() == len(report["regions"])
    for region in report["regions"]:
        inside = labels == region["label"]
        assert inside.sum() == region["voxels"] and np.isclose(risk[inside].max(), region["max_risk"], atol=1e-5)
        centre = risk_image.affine @ np.array([*np.argwhere(inside).mean(axis=0), 1.0])
        assert np.allclose(centre[:3], region["centre_mm"], atol=0.01)
        assert set(region["detectors"]) <= {"ood"}
        assert any(r.getMessage().startswith(f"flagged region {region['label']}: ") for r in caplog.records)
    assert [e["label"] for e in events if e["event"] == "region"] == [r["label"] for r in report["regions"]]
    assert (risk[labels > 0] >= report["threshold"]).all()
    provenance = json.loads(open(written["provenance"], encoding="utf-8").read())  # what made these files
    import localdiffusion

    assert written["provenance"].endswith(f"{case.name}_t1_localdiffusion.json")
    assert provenance["version"] == localdiffusion.__version__ and provenance["steps"] == 2
    assert provenance["seed"] == 0 and provenance["options"]["direction"] == "t1_to_flair"
    assert set(provenance["outputs"]) >= {"local", "risk", "risk_regions"}
    assert "risk_calibration" in provenance and isinstance(provenance["warnings"], list)
    description = bytes(nib.load(written["local"]).header["descrip"]).rstrip(b"\0").decode()
    assert description == f"localdiffusion {localdiffusion.__version__} t1_to_flair DDIM-2 seed 0"
    assert any(region["detectors"] == ["ood"] for region in report["regions"])
