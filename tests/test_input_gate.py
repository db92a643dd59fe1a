"""The input gate: a valid file of the wrong kind (the other contrast, not a brain scan) is
refused before any sampling, a borderline one is translated with a warning, --force overrides."""

import time

import numpy as np
import pytest

from localdiffusion.cli import main
from localdiffusion.data.io import save_volume
from localdiffusion.detectors.input_gate import GATE_FILE, InputGate, depth_correlation
from localdiffusion.shipped import MODELS_ROOT, shipped_model_dir
from localdiffusion.volume.grid import prepare_case

#: ranges like the shipped calibration's (healthy validation)
GATE = InputGate({"t1": (0.26, 0.36), "flair": (-0.15, -0.02)}, {"t1": 0.035, "flair": 0.02}, 10)


def test_the_judgement_refuses_the_other_contrast_and_warns_on_the_borderline():
    assert GATE.judge("t1", 0.30, 0.02).refusal is None and not GATE.judge("t1", 0.30, 0.02).warnings
    refused = GATE.judge("t1", -0.08, 0.03).refusal
    assert refused.startswith("this looks like a FLAIR, not a T1") and "the model needs a T1" in refused
    assert GATE.judge("flair", 0.31, 0.01).refusal.startswith("this looks like a T1, not a FLAIR")
    borderline = GATE.judge("t1", 0.17, 0.02)  # between the midpoint (0.12) and the own range
    assert borderline.refusal is None and "unlike the T1 validation scans" in borderline.warnings[0]
    assert GATE.judge("t1", float("nan"), 0.02).refusal.startswith("intensity does not vary with depth")
    assert "60% of the brain is out of distribution" in GATE.judge("t1", 0.30, 0.6).refusal
    assert "30% of the brain" in GATE.judge("t1", 0.30, 0.3).warnings[0]


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
