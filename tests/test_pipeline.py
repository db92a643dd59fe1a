import nibabel as nib
import numpy as np
import pytest

from localdiffusion.cli import main
from localdiffusion.io import save_volume


@pytest.mark.parametrize("direction", ["t1_to_flair", "flair_to_t1"])
def test_run_writes_every_output_on_the_input_grid(tiny_models, cohort, tmp_path, direction):
    src = direction.split("_to_")[0]
    case = next(p for p in sorted(cohort.iterdir()) if "test_t" in p.name)
    source_file = case / f"{case.name}_{src}.nii.gz"
    out = tmp_path / "out"
    assert main(["run", "--input", str(source_file), "--out-dir", str(out), "--direction", direction,
                 "--models", str(tiny_models), "--steps", "3", "--t-intermediate", "5"]) == 0
    ref = nib.load(str(source_file))
    names = sorted(p.name for p in out.iterdir())
    assert len(names) == 4 and all(n.startswith(case.name) for n in names)
    for p in out.iterdir():
        img = nib.load(str(p))
        assert img.shape == ref.shape
        np.testing.assert_allclose(img.affine, ref.affine)
        assert np.isfinite(img.get_fdata()).all()


def test_run_bad_input_leaves_no_outputs(tiny_models, tmp_path, capsys):
    bad = tmp_path / "nan.nii.gz"
    data = np.ones((20, 20, 20), np.float32)
    data[1, 1, 1] = np.nan
    save_volume(bad, data, np.eye(4))
    out = tmp_path / "out"
    assert main(["run", "--input", str(bad), "--out-dir", str(out), "--models", str(tiny_models)]) == 2
    assert "NaN" in capsys.readouterr().err
    assert not out.exists() or not any(out.iterdir())
    assert main(["run", "--input", str(bad), "--out-dir", str(out), "--models", str(tmp_path / "none")]) == 2
    assert "not found" in capsys.readouterr().err


def test_demo_figure_from_job_outputs(tiny_models, cohort, tmp_path):
    from localdiffusion.demo import comparison_figure
    from localdiffusion.io import save_png
    from localdiffusion.pipeline import JobOptions, run_job

    case = next(p for p in sorted(cohort.iterdir()) if "test_t" in p.name)
    outputs = run_job(case / f"{case.name}_t1.nii.gz", tmp_path, JobOptions(steps=2, t_intermediate=5), tiny_models,
                      progress=False)
    png = save_png(tmp_path / "translation.png", comparison_figure(case, case.name, outputs))
    assert png.stat().st_size > 20_000
