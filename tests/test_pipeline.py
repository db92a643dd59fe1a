import nibabel as nib
import numpy as np
import pytest
import torch

from localdiffusion.cli import main
from localdiffusion.diffusion.model import DiffusionConfig, build_network, save_model
from localdiffusion.io import save_volume
from localdiffusion.ood.features import FeatureExtractor
from localdiffusion.ood.patchcore import PatchCore

TINY = dict(channels=(8, 16), attention_levels=(False, True), num_res_blocks=1, num_head_channels=8,
            norm_num_groups=8, num_train_timesteps=10, spacing_mm=4.0, in_plane=(48, 56))


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory, cohort):
    from localdiffusion.slice_data import load_slice_set

    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    for src, tgt in (("t1", "flair"), ("flair", "t1")):
        cfg = DiffusionConfig(source=src, target=tgt, **TINY)
        save_model(root / f"{src}_to_{tgt}", cfg, build_network(cfg).state_dict())
    for m in ("t1", "flair"):
        train = load_slice_set(cohort, "train", (m,), kind="healthy", spacing=4.0, in_plane=(48, 56))
        val = load_slice_set(cohort, "val", (m,), kind="healthy", spacing=4.0, in_plane=(48, 56))
        model = PatchCore.fit(FeatureExtractor("resnet18", ("layer1", "layer2")), train.images[m], train.brain,
                              modality=m, bank_size=200, progress=False)
        model.calibrate(val.images[m], val.brain)
        model.save(root / f"ood_{m}.pt")
    return root


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
