import numpy as np
import pytest
import torch

from localdiffusion.cli import main
from localdiffusion.data.io import save_volume
from localdiffusion.errors import InputError
from localdiffusion.ood.anomaly_map import Calibration
from localdiffusion.ood.features import FeatureExtractor
from localdiffusion.ood.memory_bank import MemoryBank, greedy_coreset
from localdiffusion.ood.patchcore import PatchCore


def test_coreset_radius_never_increases_and_is_deterministic():
    x = np.random.default_rng(0).normal(size=(2000, 64)).astype(np.float32)
    idx, radii = greedy_coreset(x, 100, projection_dim=16, seed=3)
    assert np.all(np.diff(radii) <= 1e-9)
    assert len(set(idx.tolist())) == 100
    idx2, _ = greedy_coreset(x, 100, projection_dim=16, seed=3)
    np.testing.assert_array_equal(idx, idx2)
    idx3, _ = greedy_coreset(x, 100, projection_dim=16, seed=4)
    assert not np.array_equal(idx, idx3)


@pytest.mark.parametrize("index_type", ["flat", "hnsw"])
def test_faiss_matches_brute_force(index_type):
    rng = np.random.default_rng(1)
    bank_x = rng.normal(size=(3000, 32)).astype(np.float32)
    queries = rng.normal(size=(200, 32)).astype(np.float32)
    bank = MemoryBank(bank_x, index_type)
    dist, idx = bank.search(queries)
    ref = torch.cdist(torch.as_tensor(queries).double(), torch.as_tensor(bank_x).double()).min(1)
    hit = idx[:, 0] == ref.indices.numpy()
    if index_type == "flat":
        assert hit.all()
    else:  # approximate: high recall on this hard (isotropic 32-D) data
        assert hit.mean() > 0.9
    np.testing.assert_allclose(dist[hit, 0], ref.values.numpy()[hit], atol=1e-4)


def test_calibration_gives_target_false_positive_rate():
    rng = np.random.default_rng(2)
    cal = Calibration.fit(rng.gamma(2.0, 1.0, 200_000), false_positive_rate=0.01)
    held_out = rng.gamma(2.0, 1.0, 200_000)
    fpr = float((cal.probability(held_out) >= cal.probability_threshold).mean())
    assert abs(fpr - 0.01) < 0.002
    p = cal.probability(np.array([-1.0, 1e9]))
    assert p[0] == 0.0 and p[1] == 1.0
    with pytest.raises(ValueError):
        Calibration.fit(held_out, false_positive_rate=0.7)


def _textures(n, seed):
    """Smooth random 'healthy' slices (n, 48, 56) in [0, 1] with a round brain."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:48, :56]
    brain = ((yy - 24) / 20) ** 2 + ((xx - 28) / 24) ** 2 < 1
    out = np.stack([ndimage.gaussian_filter(rng.normal(size=(48, 56)), 2.0) for _ in range(n)])
    out = 0.5 + 0.15 * out / out.std()
    return np.clip(out, 0, 1).astype(np.float32) * brain, np.repeat(brain[None], n, 0)


@pytest.fixture(scope="module")
def tiny_patchcore():
    train, brain = _textures(24, 0)
    val, val_brain = _textures(12, 1)
    extractor = FeatureExtractor("resnet18", ("layer1", "layer2"), weights="random", input_scale=2.0)
    model = PatchCore.fit(extractor, train, brain, modality="t1", bank_size=500, progress=False)
    model.calibrate(val, val_brain, 0.01)
    return model


def test_planted_anomaly_is_found(tiny_patchcore):
    test, brain = _textures(2, 5)
    test[0, 18:26, 30:38] = 1.0  # a bright lesion
    prob, slice_prob = tiny_patchcore.probability(test, brain)
    lesion = np.zeros_like(brain[0])
    lesion[18:26, 30:38] = True
    from scipy import ndimage

    far = brain[0] & (ndimage.distance_transform_edt(~lesion) > 12)
    raw = tiny_patchcore.score(test, brain).pixel
    print(prob[0][lesion].mean(), prob[0][far].mean(), raw[0][lesion].mean(), raw[0][far].mean())
    assert prob[0][lesion].mean() > 0.99
    assert raw[0][lesion].mean() > 1.5 * raw[0][far].mean()
    assert lesion[np.unravel_index(np.argmax(raw[0]), raw[0].shape)]
    assert slice_prob[0] > slice_prob[1]
    assert not prob[~brain].any()


def test_save_load_round_trip(tiny_patchcore, tmp_path):
    path = tiny_patchcore.save(tmp_path / "bank.pt")
    loaded = PatchCore.load(path, modality="t1")
    test, brain = _textures(2, 9)
    a, b = tiny_patchcore.score(test, brain), loaded.score(test, brain)
    np.testing.assert_allclose(a.pixel, b.pixel, rtol=2e-2, atol=2e-2)  # fp16 storage of bank and backbone
    assert loaded.threshold == tiny_patchcore.threshold
    assert loaded.meta == tiny_patchcore.meta


def test_bad_banks(tiny_patchcore, tmp_path):
    path = tiny_patchcore.save(tmp_path / "bank.pt")
    with pytest.raises(InputError, match="modality 't1', not 'flair'"):
        PatchCore.load(path, modality="flair")
    with pytest.raises(InputError, match="backbone 'resnet18', not 'wide_resnet50_2'"):
        PatchCore.load(path, backbone="wide_resnet50_2")
    with pytest.raises(InputError, match="slice size"):
        tiny_patchcore.score(np.zeros((1, 32, 32), np.float32), np.ones((1, 32, 32), bool))
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(InputError, match="corrupt"):
        PatchCore.load(corrupt)
    with pytest.raises(InputError, match="not found"):
        PatchCore.load(tmp_path / "missing.pt")
    with pytest.raises(InputError, match="no feature stages"):
        FeatureExtractor("resnet18", ("layer9",))


@pytest.mark.slow
def test_ood_map_cli_writes_probability_and_mask(tiny_patchcore, tmp_path, capsys):
    import nibabel as nib

    tiny_patchcore.meta["slice_size"] = [96, 112]  # map volumes on the default working grid
    bank = tiny_patchcore.save(tmp_path / "bank.pt")
    tiny_patchcore.meta["slice_size"] = [48, 56]
    from localdiffusion.phantom.generate import generate_case

    case = generate_case(200_000_077, tumour=True, spacing=2.0)
    src = tmp_path / "c_t1.nii.gz"
    save_volume(src, case.images["t1"], case.affine)
    out = tmp_path / "ood.nii.gz"
    assert main(["ood", "map", "--input", str(src), "--bank", str(bank), "--out", str(out)]) == 0
    prob, mask = nib.load(str(out)), nib.load(str(tmp_path / "ood_mask.nii.gz"))
    assert prob.shape == case.images["t1"].shape
    np.testing.assert_allclose(prob.affine, case.affine)
    p = prob.get_fdata()
    assert 0 <= p.min() and p.max() <= 1 and not p[case.brain_mask == 0].any()
    assert set(np.unique(mask.get_fdata())) <= {0.0, 1.0}
    assert main(["ood", "map", "--input", str(src), "--bank", str(tmp_path / "nope.pt"), "--out", str(out)]) == 2
    assert "OOD bank not found" in capsys.readouterr().err
    assert main(["ood", "map", "--input", str(src), "--bank", str(bank), "--out", str(tmp_path / "x.nii.gz"),
                 "--modality", "flair"]) == 2
    assert "built for modality 't1'" in capsys.readouterr().err
    assert not (tmp_path / "x.nii.gz").exists()


@pytest.mark.slow
def test_ood_build_cli_calibrates_on_validation(cohort, tmp_path):
    bank = tmp_path / "t1_bank.pt"
    assert main(["ood", "build", "--data", str(cohort), "--modality", "t1", "--out", str(bank),
                 "--backbone", "resnet18", "--bank-size", "300"]) == 0
    model = PatchCore.load(bank, modality="t1")
    assert len(model.bank) == 300
    assert model.meta["calibration"]["false_positive_rate"] == 0.01
    assert model.meta["extractor"]["backbone"] == "resnet18" and model.meta["extractor"]["weights"] == "random"
    assert model.threshold == pytest.approx(0.99)


def test_backbone_from_a_local_weights_file(tmp_path):
    import timm

    source = timm.create_model("resnet18", pretrained=False, features_only=True, out_indices=(1, 2))
    with torch.no_grad():
        for p in source.parameters():
            p.add_(0.5)
    path = tmp_path / "resnet18_weights.pt"
    torch.save(source.state_dict(), path)
    extractor = FeatureExtractor("resnet18", ("layer1", "layer2"), weights=str(path))
    for name, value in source.state_dict().items():
        assert torch.equal(extractor.model.state_dict()[name], value)
    assert extractor.describe()["weights"] == str(path)
    torch.save({"unrelated": torch.zeros(1)}, tmp_path / "bad.pt")
    with pytest.raises(InputError, match="do not fit"):
        FeatureExtractor("resnet18", ("layer1", "layer2"), weights=str(tmp_path / "bad.pt"))
    with pytest.raises(InputError, match="not found"):
        FeatureExtractor("resnet18", ("layer1", "layer2"), weights=str(tmp_path / "missing.pt"))


def _as_flair(bank):
    """The same tiny bank labelled FLAIR (the contrast whose robust map is bias-corrected, section 9d)."""
    from localdiffusion.ood.patchcore import PatchCore

    return PatchCore(bank.extractor, bank.bank, {**bank.meta, "modality": "flair"}, bank.pixel_calibration)


def _volume(seed, n=16):
    """``_textures`` stacked along z: an (X, Y, Z) volume and its brain (16 slices: enough depth for N4's field)."""
    return tuple(np.moveaxis(a, 0, 2) for a in _textures(n, seed))


@pytest.mark.slow
@pytest.mark.parametrize("standardise,bias_correct", [(False, False), (True, False), (False, True)])
def test_robust_map_survives_a_noisier_scanner_and_keeps_the_lesion(tiny_patchcore, standardise, bias_correct,
                                                                     tmp_path):
    from localdiffusion.ood.robust import RobustCalibration, distance_volume

    if bias_correct:  # a corrected image is normalised again, by its contrast's rule: FLAIR's (median) here
        tiny_patchcore = _as_flair(tiny_patchcore)
    robust = RobustCalibration.fit(tiny_patchcore, [_volume(s) for s in (11, 12, 13)], standardise=standardise,
                                   bias_correct=bias_correct)
    image, brain = _volume(7)
    noisy = np.clip(image + np.random.default_rng(3).normal(0, 0.1, image.shape), 0, 1)  # another scanner: SNR
    lesion = np.zeros_like(brain)
    lesion[18:26, 30:38, 7:9] = True
    scan = np.where(brain, np.where(lesion, 1.0, noisy), 0).astype(np.float32)
    healthy = brain & ~lesion
    bank_map = tiny_patchcore.pixel_calibration.probability(distance_volume(tiny_patchcore, scan, brain))
    robust_map = robust.probability(tiny_patchcore, scan, brain)
    assert (bank_map[healthy] >= tiny_patchcore.threshold).mean() > 0.25  # the bank's calibration flags the scanner
    assert (robust_map[healthy] >= robust.threshold).mean() < 0.05
    assert robust_map[lesion].mean() > 0.95 and not robust_map[~brain].any()
    loaded = RobustCalibration.load(robust.save(tmp_path / "bank_robust.json"))
    np.testing.assert_array_equal(loaded.probability(tiny_patchcore, scan, brain), robust_map)
    assert loaded.standardise == standardise and loaded.threshold == robust.threshold
    assert loaded.bias_correct == bias_correct


def test_robust_calibration_files_before_bias_correction_still_load(tiny_patchcore, tmp_path):
    import json

    from localdiffusion.ood.robust import RobustCalibration

    path = RobustCalibration.fit(tiny_patchcore, [_volume(11)], standardise=False).save(tmp_path / "old.json")
    payload = json.loads(path.read_text())
    del payload["bias_correct"]  # a file without the option: no correction
    path.write_text(json.dumps(payload))
    assert RobustCalibration.load(path).bias_correct is False


@pytest.mark.slow
def test_robust_map_from_the_command_line(tiny_patchcore, cohort, tmp_path, capsys):
    import nibabel as nib

    from localdiffusion.shipped import robust_calibration_path

    tiny_patchcore.meta["slice_size"] = [96, 112]  # the default working grid of the phantom cohort
    bank = tiny_patchcore.save(tmp_path / "bank.pt")
    tiny_patchcore.meta["slice_size"] = [48, 56]
    case = next(p for p in sorted(cohort.iterdir()) if p.name.endswith("test_t0000"))
    src = next(case.glob("*_t1.nii.gz"))
    out = tmp_path / "robust.nii.gz"
    args = ["ood", "map", "--input", str(src), "--bank", str(bank), "--out", str(out), "--robust"]
    assert main(args) == 2
    assert "robust OOD calibration not found" in capsys.readouterr().err and not out.exists()
    assert main(["ood", "calibrate-robust", "--bank", str(bank), "--data", str(cohort), "--max-cases", "3"]) == 0
    assert robust_calibration_path(bank).exists() and "standardise True" in capsys.readouterr().out
    assert main(args) == 0
    prob = nib.load(str(out)).get_fdata()
    assert 0 <= prob.min() and prob.max() <= 1 and prob.max() > 0
    assert set(np.unique(nib.load(str(tmp_path / "robust_mask.nii.gz")).get_fdata())) <= {0.0, 1.0}
    # the bias-corrected option (section 9d) through the same two commands
    assert main(["ood", "calibrate-robust", "--bank", str(bank), "--data", str(cohort), "--max-cases", "3",
                 "--bias-correct", "on"]) == 0
    assert "standardise True, bias_correct True" in capsys.readouterr().out
    out.unlink()
    assert main(args) == 0 and nib.load(str(out)).get_fdata().max() > 0
    robust_calibration_path(bank).write_text("{}")
    assert main(args) == 2 and "not a robust OOD calibration" in capsys.readouterr().err


def _tissue_volume(seed, shape=(48, 48, 32)):
    """Two blobby tissues (0.5, 0.8) with 3% noise in an ellipsoid brain, and a smooth coil field
    (the exp of a quadratic, normalised to a brain-mean of 1 in log space) to multiply it by."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    brain = x ** 2 + y ** 2 + (z / 0.9) ** 2 < 0.8
    tissue = np.where(ndimage.gaussian_filter(rng.normal(size=shape), 3) > 0, 0.8, 0.5)
    image = np.where(brain, tissue * (1 + rng.normal(0, 0.03, shape)), 0).astype(np.float32)
    log_field = 0.25 * x + 0.2 * y * y - 0.15 * x * z
    return image, brain, np.exp(log_field - log_field[brain].mean()).astype(np.float32)


def _field_spread(image, reference, brain):
    """Spread over the brain of the smoothed log ratio image / reference: what remains of a coil field."""
    from scipy import ndimage

    ratio = np.where(brain, np.log(np.maximum(image, 1e-6) / np.maximum(reference, 1e-6)), 0)
    weight = ndimage.gaussian_filter(brain.astype(np.float32), 4)
    smooth = ndimage.gaussian_filter(ratio, 4) / np.maximum(weight, 1e-6)
    return smooth[brain & (weight > 0.5)].std()


def test_bias_correction_removes_a_coil_field_and_keeps_the_scale():
    from localdiffusion.volume.bias import correct_bias

    image, brain, field = _tissue_volume(0)
    corrected = correct_bias(image * field, brain, spacing_mm=2.0)
    before, after = _field_spread(image * field, image, brain), _field_spread(corrected, image, brain)
    assert before > 0.05 and after < 0.2 * before  # the oracle: the field-free image
    assert abs(corrected[brain].mean() / image[brain].mean() - 1) < 0.05 and not corrected[~brain].any()
    assert _field_spread(correct_bias(image, brain, 2.0), image, brain) < 0.02  # no field: (almost) nothing to do


def test_robust_bias_correction_sees_the_whole_brain_when_every_second_slice_is_scored(tiny_patchcore):
    # calibrations score every second slice; N4 given only those slices' mask leaves the field untouched
    # (found on the strong-bias test scans: 14% of healthy brain flagged instead of 0.9%)
    from localdiffusion.ood.anomaly_map import Calibration
    from localdiffusion.ood.robust import RobustCalibration, strided_brain

    image, brain, field = _tissue_volume(0)
    scored = strided_brain(brain)
    robust = RobustCalibration("flair", None, Calibration.fit(np.arange(1000.0)), bias_correct=True)
    seen = robust.backbone_input(_as_flair(tiny_patchcore), image * field, brain, scored)
    left = np.log(seen[scored] / image[scored]).std()  # the field left in the backbone's input (a scale is no field)
    assert left < 0.2 * np.log(field[scored]).std()


def test_acquisition_augmentation_is_a_seeded_plausible_rescan():
    from localdiffusion.volume.acquisition import FIELD_LOG_STD, _polynomial_field, augment_acquisition

    image, brain, _ = _tissue_volume(0)
    first = augment_acquisition(image, brain, "t1", np.random.default_rng(5))
    np.testing.assert_array_equal(first, augment_acquisition(image, brain, "t1", np.random.default_rng(5)))
    copies = [augment_acquisition(image, brain, "t1", np.random.default_rng(s)) for s in range(6)]
    assert all(c.min() >= 0 and c.max() <= 1 and not c[~brain].any() for c in copies)
    # each copy changes the image (bias, blur, contrast, noise) but keeps the anatomy: the tissues stay apart
    assert min(np.abs(c - image)[brain].mean() for c in copies) > 0.005
    assert min(np.corrcoef(c[brain], image[brain])[0, 1] for c in copies) > 0.6
    fields = [_polynomial_field(image.shape, brain, np.random.default_rng(s)) for s in range(20)]
    spreads = [f[brain].std() for f in fields]
    assert max(spreads) <= FIELD_LOG_STD + 1e-9 and max(spreads) > 0.5 * FIELD_LOG_STD
    assert all(abs(f[brain].mean()) < 1e-9 for f in fields)  # a field, not a scale


@pytest.mark.slow
def test_ood_build_cli_builds_a_bank_for_the_robust_map(cohort, tmp_path, capsys):
    from localdiffusion.ood.robust import RobustCalibration, landmarks

    image, brain = _volume(11)
    robust = tmp_path / "t1_robust.json"
    RobustCalibration("t1", landmarks(image, brain), Calibration.fit(np.arange(1000.0))).save(robust)
    args = ["ood", "build", "--data", str(cohort), "--modality", "t1", "--bank-size", "200"]
    assert main(args + ["--out", str(tmp_path / "plain.pt")]) == 0
    assert main(args + ["--out", str(tmp_path / "robust.pt"), "--standardise-to", str(robust), "--augment", "1"]) == 0
    plain, built = PatchCore.load(tmp_path / "plain.pt"), PatchCore.load(tmp_path / "robust.pt")
    assert "robust_input" not in plain.meta
    assert built.meta["robust_input"] == {"standardised": True, "augmented_copies": 1}
    assert built.meta["candidates"] == 2 * plain.meta["candidates"]  # the same slices, each with one copy
    assert not np.array_equal(built.bank.features, plain.bank.features)
    # the bank's own calibration would map an unstandardised input against standardised patches: refused
    case = next(iter((cohort / "ld0_test_t0000").glob("*_t1.nii.gz")), None) or next(cohort.rglob("*_t1.nii.gz"))
    capsys.readouterr()
    assert main(["ood", "map", "--input", str(case), "--bank", str(tmp_path / "robust.pt"),
                 "--out", str(tmp_path / "ood.nii.gz")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "robust.pt" in err[0] and "ood map --robust" in err[0]
    assert not (tmp_path / "ood.nii.gz").exists()
    no_reference = tmp_path / "flair_robust.json"
    RobustCalibration("t1", None, Calibration.fit(np.arange(1000.0))).save(no_reference)
    capsys.readouterr()
    assert main(args + ["--out", str(tmp_path / "x.pt"), "--standardise-to", str(no_reference)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not standardise" in err[0] and not (tmp_path / "x.pt").exists()


def test_field_strength_reads_the_coil_field_and_not_the_anatomy():
    from localdiffusion.volume.bias import field_strength

    image, brain, field = _tissue_volume(0)
    true = np.log(field[brain]).std()  # the oracle: the field the volume was multiplied by
    assert abs(field_strength(image * field, brain, 2.0) / true - 1) < 0.3
    assert field_strength(image, brain, 2.0) < 0.25 * true


def test_the_coil_field_is_fitted_once_per_volume(monkeypatch):
    """The input gate and the robust FLAIR map both need the N4 field of the same volume: one fit."""
    from localdiffusion.volume import bias

    fits = []
    real = bias._fit_log_bias_field
    monkeypatch.setattr(bias, "_fit_log_bias_field", lambda *a: fits.append(1) or real(*a))
    rng = np.random.default_rng(3)
    brain = np.zeros((24, 24, 12), bool)
    brain[4:20, 4:20, 2:10] = True
    image = np.where(brain, rng.uniform(0.4, 0.6, brain.shape), 0).astype(np.float32)
    first = bias.log_bias_field(image, brain, 2.0)
    again = bias.log_bias_field(image.copy(), brain.copy(), 2.0)
    np.testing.assert_array_equal(first, again)
    assert len(fits) == 1
    other = image.copy()
    other[10, 10, 5] += 0.1  # another volume is fitted anew
    bias.log_bias_field(other, brain, 2.0)
    assert len(fits) == 2


def test_bank_distances_do_not_depend_on_the_number_of_threads():
    import faiss

    from localdiffusion.ood.memory_bank import MemoryBank

    rng = np.random.default_rng(0)
    bank = MemoryBank(rng.random((3000, 192)).astype(np.float32))
    queries = rng.random((5000, 192)).astype(np.float32)
    found = {}
    for threads in (1, 2):
        faiss.omp_set_num_threads(threads)
        found[threads] = bank.search(queries, k=3)
    np.testing.assert_array_equal(found[1][0], found[2][0])  # a cohort split across processes maps as one does
    expected = np.linalg.norm(bank.features[found[1][1][:, 0]] - queries, axis=1)
    np.testing.assert_allclose(found[1][0][:, 0], expected, rtol=1e-6)
    assert (np.diff(found[1][0], axis=1) >= -1e-5).all()  # nearest first (ties within rounding)
