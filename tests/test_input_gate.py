"""The input gate: a valid file of the wrong kind (the other contrast, not a brain scan) is
refused before any sampling, a borderline one is translated with a warning, --force overrides."""

import time
from pathlib import Path

import numpy as np
import pytest

from localdiffusion.cli import main
from localdiffusion.data.io import save_volume
from localdiffusion.detectors.input_gate import GATE_FILE, InputGate, MapSummary, depth_correlation
from localdiffusion.errors import InputError
from localdiffusion.shipped import MODELS_ROOT, shipped_model_dir
from localdiffusion.volume.grid import prepare_case

#: ranges like the shipped calibration's (healthy validation)
GATE = InputGate({"t1": (0.26, 0.36), "flair": (-0.15, -0.02)}, {"t1": 0.035, "flair": 0.02}, 10,
                 typical={"t1": 0.55, "flair": 0.55})


def m(flagged: float, typical: float = 0.5) -> MapSummary:
    return MapSummary(flagged, typical)


def test_the_judgement_refuses_the_other_contrast_and_warns_on_the_borderline():
    assert GATE.judge("t1", 0.30, m(0.02)).refusal is None and not GATE.judge("t1", 0.30, m(0.02)).warnings
    refused = GATE.judge("t1", -0.08, m(0.03)).refusal
    assert refused.startswith("this looks like a FLAIR, not a T1") and "the model needs a T1" in refused
    assert GATE.judge("flair", 0.31, m(0.01)).refusal.startswith("this looks like a T1, not a FLAIR")
    borderline = GATE.judge("t1", 0.17, m(0.02))  # between the midpoint (0.12) and the own range
    assert borderline.refusal is None and "unlike the T1 validation scans" in borderline.warnings[0]
    assert GATE.judge("t1", float("nan"), m(0.02)).refusal.startswith("intensity does not vary with depth")
    assert "60% of the brain is out of distribution" in GATE.judge("t1", 0.30, m(0.6)).refusal
    assert "30% of the brain" in GATE.judge("t1", 0.30, m(0.3)).warnings[0]


def test_a_scan_whose_typical_voxel_is_unusual_is_flagged_as_unreadable_for_the_maps():
    """A lesion leaves most of the brain typical; another scanner moves every voxel (section 9):
    the outputs must say the OOD/risk maps mark the acquisition, even when few voxels pass the
    flagging threshold."""
    lesion = GATE.judge("t1", 0.30, m(0.20, typical=0.6))
    assert lesion.map_reliable and not lesion.warnings
    shifted = GATE.judge("t1", 0.30, m(0.20, typical=0.95))
    assert shifted.map_reliable is False and shifted.refusal is None
    assert "the OOD map cannot be read for this scan" in shifted.warnings[0] and "at most 55%" in shifted.warnings[0]
    assert GATE.judge("t1", 0.30, None).map_reliable is None
    old = InputGate(GATE.correlation, GATE.flagged, 10)  # a calibration written before `typical` existed
    assert "less usual than 95%" in old.judge("t1", 0.30, m(0.0, typical=0.95)).warnings[0]
    # when the user gets the robust map (the main job's T1 map), the warning must not call that map unreadable: it is
    # calibrated on the scan itself; the translation and the risk map are what may follow the acquisition
    robust = GATE.judge("t1", 0.30, m(0.20, typical=0.95), robust_map=True)
    assert robust.map_reliable is False and "cannot be read" not in robust.warnings[0]
    assert "far from the T1 training scans" in robust.warnings[0] and "calibrated on the scan itself" in robust.warnings[0]
    assert "written OOD map is calibrated on the scan itself" in GATE.judge("t1", 0.30, m(0.3), robust_map=True).warnings[0]


def test_map_summary_reads_the_median_probability_of_the_brain():
    probability = np.zeros((4, 4, 4), np.float32)
    brain = np.zeros_like(probability, bool)
    brain[:2] = True
    probability[:2] = np.linspace(0, 1, 32).reshape(2, 4, 4)
    probability[2:] = 1.0  # outside the brain: ignored
    summary = MapSummary.of(probability, brain, threshold=0.99)
    assert summary.typical == pytest.approx(0.5) and summary.flagged == pytest.approx(1 / 32)


def test_depth_correlation_tells_t1_from_flair_with_a_tumour(tumour_case):
    from localdiffusion.data.readers import Case

    values = {}
    for contrast in ("t1", "flair"):
        case = Case("x", {contrast: tumour_case.images[contrast].astype(np.float32)}, tumour_case.affine, None)
        prepared = prepare_case(case)
        values[contrast] = depth_correlation(prepared.images[contrast], prepared.brain, prepared.grid.spacing)
    assert values["t1"] > 0.2 and values["flair"] < 0.0, values
    checkerboard = np.where(prepared.brain, 1.0 + (np.indices(prepared.brain.shape).sum(0) // 2) % 2, 0.0)
    assert np.isnan(depth_correlation(checkerboard, prepared.brain, 2.0))


@pytest.mark.slow
@pytest.mark.slow
def test_the_shipped_gate_refuses_a_flair_and_a_checkerboard_before_sampling(tumour_case, tmp_path, capsys, caplog):
    assert (MODELS_ROOT / GATE_FILE).is_file()
    flair = save_volume(tmp_path / "case_flair.nii.gz", tumour_case.images["flair"], tumour_case.affine)
    brain = tumour_case.images["t1"] > 0
    board = np.where(brain, 100.25 + 100.5 * (np.indices(brain.shape).sum(0) // 3 % 2), 0.0)  # not a label map
    checkerboard = save_volume(tmp_path / "board_t1.nii.gz", board, tumour_case.affine)
    model = str(shipped_model_dir("t1", "flair"))
    for source, words in ((flair, "this looks like a FLAIR, not a T1"), (checkerboard, "does not look like")):
        out = tmp_path / f"{source.name}_out.nii.gz"
        start = time.monotonic()
        assert main(["translate", "--input", str(source), "--out", str(out), "--model", model]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"error: {source}: ") and words in err[0], err
        assert time.monotonic() - start < 60 and not out.exists()
    out = tmp_path / "forced.nii.gz"
    assert main(["translate", "--input", str(flair), "--out", str(out), "--model", model, "--steps", "1",
                 "--force"]) == 0
    assert out.exists() and "translated although this looks like a FLAIR" in caplog.text


@pytest.mark.slow
def test_a_low_snr_flair_is_translated_with_the_warning_that_its_maps_cannot_be_read(tmp_path, caplog):
    """Another scanner (here SNR 7 instead of the training 15-40: section 9's low_snr variant moves
    every voxel) must not give an OOD map that silently flags the brain: the translation is written
    and the user is told the maps mark the acquisition. The same subject at training SNR is not."""
    from localdiffusion.phantom.generate import generate_case
    from localdiffusion.phantom.physics import Acquisition

    model = str(shipped_model_dir("flair", "t1"))
    for name, acquisition in (("training", None), ("low_snr", Acquisition(snr=(7.0, 7.0)))):
        case = generate_case(200_000_123, tumour=True, spacing=2.0, acquisition=acquisition)
        flair = save_volume(tmp_path / f"{name}_flair.nii.gz", case.images["flair"], case.affine)
        out = tmp_path / f"{name}_t1.nii.gz"
        caplog.clear()
        assert main(["translate", "--input", str(flair), "--out", str(out), "--model", model, "--steps", "1"]) == 0
        assert out.is_file()
        unreadable = [r.getMessage() for r in caplog.records if "the OOD map cannot be read for this scan" in r.getMessage()]
        if name == "training":
            assert not unreadable, caplog.text
        else:
            assert len(unreadable) == 1 and unreadable[0].startswith(f"warning: {flair}: ") and "mark the acquisition" \
                in unreadable[0], caplog.text


def test_a_coil_field_stronger_than_any_healthy_validation_scan_warns():
    gate = InputGate(GATE.correlation, GATE.flagged, 10, typical=GATE.typical, coil_field={"t1": 0.1})
    strong = gate.judge("t1", 0.30, m(0.02), field_strength=0.13)  # above 1.25 x the validation maximum
    assert strong.refusal is None and len(strong.warnings) == 1
    assert "receive-coil field is stronger than in any healthy T1 validation scan" in strong.warnings[0]
    assert "0.130" in strong.warnings[0] and "at most 0.100" in strong.warnings[0]
    assert "the OOD map and the risk map may follow the field" in strong.warnings[0]
    robust = gate.judge("t1", 0.30, m(0.02), field_strength=0.13, robust_map=True).warnings[0]
    assert "the translation and the risk map may follow the field" in robust and "OOD map" not in robust
    assert not gate.judge("t1", 0.30, m(0.02), field_strength=0.12).warnings  # within the margin
    assert not gate.judge("flair", -0.08, m(0.02), field_strength=0.5).warnings  # no FLAIR calibration: not checked
    assert not GATE.judge("t1", 0.30, m(0.02), field_strength=0.5).warnings  # a calibration from before the check
    refused = gate.judge("t1", -0.08, m(0.02), field_strength=0.3).refusal  # the other contrast, field or not
    assert refused.startswith("this looks like a FLAIR") and "receive-coil field is stronger" in refused


def test_the_shipped_gate_warns_about_a_strong_coil_field_and_not_about_the_training_one(tmp_path, caplog):
    """The same subject scanned with the training coil and with a coil three times stronger (section 9's
    strong_bias variant): only the second is flagged, and the check costs no sampling (gate_input alone).
    This subject's strong field drags its raw depth-intensity correlation toward FLAIR's (+0.06); the shipped gate
    judges the contrast on the field-corrected image, so it is translated with the field warning, and its FLAIR
    is refused by the T1 gate or translated with the warning that it may be a FLAIR."""
    from localdiffusion.jobs.inputs import gate_input, prepare_input
    from localdiffusion.phantom.generate import generate_case
    from localdiffusion.phantom.physics import ACQUISITION_SHIFTS

    shipped = InputGate.load(MODELS_ROOT / GATE_FILE).coil_field
    assert all(shipped.get(c, 0) > 0 for c in ("t1", "flair"))
    for name, acquisition in (("training", None), ("strong", ACQUISITION_SHIFTS["strong_bias"])):
        case = generate_case(200_000_321, tumour=False, spacing=2.0, acquisition=acquisition)
        path = save_volume(tmp_path / f"{name}_t1.nii.gz", case.images["t1"], case.affine)
        prepared = prepare_input(path, "t1", 2.0, (96, 112))
        if name == "training":
            assert not [w for w in gate_input(path, prepared, "t1", MODELS_ROOT) if "receive-coil field" in w]
            continue
        warnings = gate_input(path, prepared, "t1", MODELS_ROOT)
        assert len(warnings) == 1 and warnings[0].startswith("the scan's receive-coil field is stronger")
        assert f"{shipped['t1']:.3f}" in warnings[0] and "checked on the field-corrected image" in warnings[0]
        flair = save_volume(tmp_path / "strong_flair.nii.gz", case.images["flair"], case.affine)
        try:  # refused, or translated with the warning that it may be a FLAIR: never silently
            warnings = gate_input(flair, prepare_input(flair, "t1", 2.0, (96, 112)), "t1", MODELS_ROOT)
        except InputError as exc:
            assert "looks like a FLAIR" in str(exc)
        else:
            assert any("cannot tell this scan from a FLAIR" in w for w in warnings), warnings


#: ranges like the shipped calibration's: every T1 kind, coil field and lesion family, where T1 and FLAIR overlap
OVERLAPPING = InputGate({"t1": (-0.02, 0.37), "flair": (-0.09, 0.086)}, {"t1": 0.035, "flair": 0.02}, 72,
                        feature="depth_correlation_n4", refuse_flagged=0.8)


def test_overlapping_ranges_are_cut_at_the_midpoint_between_the_t1_minimum_and_the_flair_maximum():
    cut = (-0.02 + 0.086) / 2
    assert OVERLAPPING.judge("t1", cut - 0.01, m(0.02)).refusal.startswith("this looks like a FLAIR, not a T1")
    assert OVERLAPPING.judge("t1", cut + 0.01, m(0.02)).refusal is None
    assert OVERLAPPING.judge("flair", cut + 0.01, m(0.02)).refusal.startswith("this looks like a T1, not a FLAIR")
    assert OVERLAPPING.judge("flair", cut - 0.01, m(0.02)).refusal is None
    assert OVERLAPPING.judge("t1", 0.30, m(0.02)).warnings == []
    ambiguous = OVERLAPPING.judge("t1", cut + 0.01, m(0.02)).warnings  # inside the FLAIR validation range
    assert len(ambiguous) == 1 and "cannot tell this scan from a FLAIR" in ambiguous[0]


def test_the_distribution_check_refuses_above_the_calibrated_level():
    assert OVERLAPPING.judge("t1", 0.30, m(0.7)).refusal is None  # a 1.5 T brain far from the 3 T training scans
    assert "70% of the brain" in OVERLAPPING.judge("t1", 0.30, m(0.7)).warnings[0]
    assert "90% of the brain is out of distribution" in OVERLAPPING.judge("t1", 0.30, m(0.9)).refusal
    assert "60% of the brain" in GATE.judge("t1", 0.30, m(0.6)).refusal  # a calibration without a level: 0.5


def test_the_n4_feature_reads_the_corrected_image_and_no_depth_structure_stays_refused():
    from localdiffusion.volume.bias import log_bias_field, remove_field

    shape = (40, 40, 30)
    centre = np.array(shape) / 2
    distance = np.sqrt(sum((g - c) ** 2 for g, c in zip(np.indices(shape), centre)))
    brain = distance < 14
    rng = np.random.default_rng(0)
    depth_like = np.clip(14 - distance, 0, None)
    t1 = np.where(brain, 100 + 4 * depth_like + rng.normal(0, 3, shape), 0).astype(np.float32)
    value, _ = OVERLAPPING.measure("t1", t1, brain, 2.0)
    expected = depth_correlation(remove_field(t1, brain, log_bias_field(t1, brain, 2.0)), brain, 2.0)
    assert value == pytest.approx(expected)
    constant = np.where(brain, 100.0, 0.0).astype(np.float32)
    assert np.isnan(OVERLAPPING.measure("t1", constant, brain, 2.0)[0])
    assert OVERLAPPING.judge("t1", float("nan"), m(0.0)).refusal.startswith("intensity does not vary with depth")


@pytest.mark.parametrize("edit, words", [({"correlation": {"t1": [float("nan"), 0.3], "flair": [-0.1, 0.0]}},
                                          "not finite"),
                                         ({"correlation": []}, "AttributeError"),
                                         ({"correlation": {"t1": [0.3, 0.1], "flair": [-0.1, 0.0]}}, "reversed"),
                                         ({"refuse_flagged": float("nan")}, "not finite"),
                                         ({"feature": "magic"}, "unknown contrast feature")])
def test_a_corrupt_gate_calibration_is_one_error_naming_the_file(tmp_path, edit, words):
    import json

    payload = json.loads((MODELS_ROOT / GATE_FILE).read_text(encoding="utf-8"))
    path = tmp_path / GATE_FILE
    path.write_text(json.dumps({**payload, **edit}), encoding="utf-8")
    with pytest.raises(InputError, match="not a valid input-gate calibration") as caught:
        InputGate.load(path)
    assert str(path) in str(caught.value) and words in str(caught.value)


def test_a_thin_slab_and_a_tiny_crop_get_messages_that_say_so(tumour_case, tmp_path):
    """A 4-slice T1 is not "a FLAIR": too few slices to judge; a 5 x 5 x 5 crop is not "no foreground": too small."""
    from localdiffusion.jobs.inputs import gate_input, prepare_input

    t1 = tumour_case.images["t1"]
    k = int(np.argmax((t1 > 0).sum(axis=(0, 1))))
    slab = save_volume(tmp_path / "slab_t1.nii.gz", t1[:, :, k - 2:k + 2], tumour_case.affine)
    prepared = prepare_input(slab, "t1", 2.0, (96, 112))
    with pytest.raises(InputError, match="too few slices to judge the contrast") as info:
        gate_input(slab, prepared, "t1", MODELS_ROOT)
    assert str(slab) in str(info.value) and "FLAIR" not in str(info.value)
    i, j = (np.array(t1.shape[:2]) // 2).tolist()
    crop = save_volume(tmp_path / "crop_t1.nii.gz", t1[i:i + 5, j:j + 5, k:k + 5], tumour_case.affine)
    with pytest.raises(InputError, match="the brain is too small") as info:
        prepare_input(crop, "t1", 2.0, (96, 112))
    assert str(crop) in str(info.value)


@pytest.mark.slow
def test_every_monai_label_task_refuses_the_other_contrast_unless_forced(tumour_case, tmp_path):
    """The stock plugin's defaults (tumour_segmentation on FLAIR, ood_segmentation on T1) must not run a model
    of one contrast on the other silently: every task checks the contrast with the shipped input gate, before
    the volume is mapped or segmented."""
    pytest.importorskip("monailabel", reason="MONAI Label is the optional 'label' extra (make test installs it)")
    from localdiffusion.serving.tasks import OodMapTask, OodSegmentationTask, TumourSegmentationTask

    t1 = save_volume(tmp_path / "case_t1.nii.gz", tumour_case.images["t1"], tumour_case.affine)
    flair = save_volume(tmp_path / "case_flair.nii.gz", tumour_case.images["flair"], tumour_case.affine)
    calls = [(TumourSegmentationTask, {"image": str(t1), "modality": "flair"}, "looks like a T1, not a FLAIR"),
             (TumourSegmentationTask, {"image": str(flair), "modality": "t1"}, "looks like a FLAIR, not a T1"),
             (OodSegmentationTask, {"image": str(flair), "modality": "t1"}, "looks like a FLAIR, not a T1"),
             (OodMapTask, {"image": str(t1), "modality": "flair"}, "looks like a T1, not a FLAIR")]
    for task, request, words in calls:
        start = time.monotonic()
        with pytest.raises(InputError, match=words):
            task(MODELS_ROOT)(dict(request))
        assert time.monotonic() - start < 30
    labels, params = TumourSegmentationTask(MODELS_ROOT)({"image": str(t1), "modality": "flair", "force": True})
    assert any("looks like a T1" in w for w in params["warnings"]) and Path(labels).is_file()
    Path(labels).unlink()
    labels, params = TumourSegmentationTask(MODELS_ROOT)({"image": str(flair), "modality": "flair"})
    assert params["warnings"] == [] and Path(labels).is_file()
    Path(labels).unlink()
