import gzip
import shutil

import nibabel as nib
import numpy as np
import pytest

from localdiffusion.cli import main
from localdiffusion.data.io import atomic_path, load_volume, save_volume
from localdiffusion.data.readers import list_cases, read_case
from localdiffusion.errors import InputError
from localdiffusion.volume.grid import prepare_case


@pytest.fixture()
def brats21(cohort):
    return sorted(p for p in cohort.iterdir() if p.is_dir() and "_t0" in p.name)[0]


def test_brats2021_round_trip(brats21):
    case = read_case(brats21, ("t1", "flair", "t2"))
    ref = nib.load(str(brats21 / f"{brats21.name}_flair.nii.gz"))
    np.testing.assert_array_equal(case.images["flair"], np.asarray(ref.dataobj, np.float32))
    np.testing.assert_allclose(case.affine, ref.affine)
    assert case.layout == "brats2021" and case.seg is not None and case.seg.max() == 4


def test_brats2023_round_trip(brats21, tmp_path):
    src = read_case(brats21, ("t1", "flair"))
    folder = tmp_path / "BraTS-GLI-00001-000"
    for ours, theirs in (("t1", "t1n"), ("flair", "t2f")):
        save_volume(folder / f"{folder.name}-{theirs}.nii.gz", src.images[ours], src.affine)
    seg23 = src.seg.copy()
    seg23[seg23 == 4] = 3
    save_volume(folder / f"{folder.name}-seg.nii.gz", seg23, src.affine)
    case = read_case(folder, ("t1", "flair"))
    assert case.layout == "brats2023"
    np.testing.assert_array_equal(case.images["t1"], src.images["t1"])
    np.testing.assert_array_equal(case.seg, src.seg)


def test_msd_round_trip(brats21, tmp_path):
    src = read_case(brats21, ("t1", "flair", "t2"))
    stack = np.stack([src.images["flair"], src.images["t1"], src.images["t1"] * 1.1, src.images["t2"]], axis=-1)
    (tmp_path / "imagesTr").mkdir()
    (tmp_path / "labelsTr").mkdir()
    nib.save(nib.Nifti1Image(stack, src.affine), str(tmp_path / "imagesTr" / "BRATS_001.nii.gz"))
    msd_label = np.zeros_like(src.seg)
    msd_label[src.seg == 2], msd_label[src.seg == 1], msd_label[src.seg == 4] = 1, 2, 3
    nib.save(nib.Nifti1Image(msd_label, src.affine), str(tmp_path / "labelsTr" / "BRATS_001.nii.gz"))
    [image_path] = list_cases(tmp_path)
    case = read_case(image_path, ("t1", "flair", "t2"))
    assert case.layout == "msd" and case.case_id == "BRATS_001"
    for m in ("t1", "flair", "t2"):
        np.testing.assert_array_equal(case.images[m], src.images[m])
    np.testing.assert_array_equal(case.seg, src.seg)


def _oblique(affine, degrees=12.0):
    theta = np.deg2rad(degrees)
    rot = np.eye(4)
    rot[:2, :2] = [[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]]
    return rot @ affine


@pytest.mark.parametrize("geometry", ["same", "oblique_1mm"])
def test_inverse_mapping_round_trip(tumour_case, tmp_path, geometry):
    from scipy import ndimage

    t1 = tumour_case.images["t1"].astype(np.float32)
    affine = tumour_case.affine
    if geometry == "oblique_1mm":  # a 1 mm oblique acquisition of the same smooth anatomy
        inside = ndimage.zoom((t1 > 0).astype(np.float32), 2, order=1) > 0.5
        t1 = ndimage.zoom(ndimage.gaussian_filter(t1, 1.0), 2, order=1) * inside
        affine = _oblique(affine @ np.diag([0.5, 0.5, 0.5, 1.0]))
    folder = tmp_path / "case1"
    save_volume(folder / "case1_t1.nii.gz", t1, affine)
    case = read_case(folder, ("t1",))
    prepared = prepare_case(case)
    assert prepared.grid.shape[:2] == (96, 112)
    back = prepared.to_input_grid(prepared.images["t1"])
    assert back.shape == t1.shape
    expected = np.clip(t1 / prepared.scales["t1"], 0, 1)
    interior = ndimage.binary_erosion(t1 > 0, iterations=3)
    err = np.abs(back - expected)[interior]
    if geometry == "same":
        assert err.max() < 1e-6  # on-lattice: exact
    else:
        assert err.mean() < 0.05  # two trilinear resamplings of a 1 mm volume through 2 mm


def test_healthy_slice_selection(cohort):
    case = read_case(sorted(p for p in cohort.iterdir() if "_t0" in p.name)[0], ("t1", "flair"))
    prepared = prepare_case(case)
    slices = prepared.brain_slices()
    assert 0 < slices.size < prepared.grid.shape[2]
    tumour_slices = np.flatnonzero(prepared.seg.any(axis=(0, 1)))
    assert tumour_slices.size > 0 and set(tumour_slices) <= set(range(prepared.grid.shape[2]))


# ---------------------------------------------------------------- bad input


def _case_with(tmp_path, name="bad", t1=None, flair=None, affine=None, flair_affine=None):
    rng = np.random.default_rng(0)
    base = np.zeros((20, 24, 16), np.float32)
    base[5:15, 6:18, 4:12] = rng.uniform(10, 100, (10, 12, 8))
    folder = tmp_path / name
    affine = np.diag([4.0, 4.0, 4.0, 1.0]) if affine is None else affine
    save_volume(folder / f"{name}_t1.nii.gz", base if t1 is None else t1, affine)
    if flair is not False:
        save_volume(folder / f"{name}_flair.nii.gz", base if flair is None else flair,
                    affine if flair_affine is None else flair_affine)
    return folder


def _expect_cli_error(path, capsys, *words):
    assert main(["check", "--case", str(path)]) == 2
    err = capsys.readouterr().err
    for w in words:
        assert w in err, err
    return err


def test_missing_modality(tmp_path, capsys):
    folder = _case_with(tmp_path, flair=False)
    _expect_cli_error(folder, capsys, "missing modality 'flair'", "bad_flair.nii.gz")


def test_mismatched_shape(tmp_path, capsys):
    folder = _case_with(tmp_path, flair=np.ones((20, 24, 15), np.float32))
    _expect_cli_error(folder, capsys, "shape", "bad_flair.nii.gz")


def test_mismatched_affine(tmp_path, capsys):
    shifted = np.diag([4.0, 4.0, 4.0, 1.0])
    shifted[0, 3] = 10.0
    folder = _case_with(tmp_path, flair_affine=shifted)
    _expect_cli_error(folder, capsys, "affine", "bad_flair.nii.gz")


def test_4d_where_3d_expected(tmp_path, capsys):
    folder = _case_with(tmp_path, t1=np.ones((20, 24, 16, 3), np.float32))
    _expect_cli_error(folder, capsys, "expected a 3D volume", "bad_t1.nii.gz")


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_or_inf(tmp_path, capsys, bad):
    t1 = np.ones((20, 24, 16), np.float32)
    t1[3, 3, 3] = bad
    folder = _case_with(tmp_path, t1=t1)
    _expect_cli_error(folder, capsys, "NaN or infinite", "bad_t1.nii.gz")


def test_all_zero_volume(tmp_path, capsys):
    folder = _case_with(tmp_path, t1=np.zeros((20, 24, 16), np.float32))
    _expect_cli_error(folder, capsys, "empty", "bad_t1.nii.gz")


def test_non_nifti_file(tmp_path, capsys):
    folder = _case_with(tmp_path)
    (folder / "bad_t1.nii.gz").write_bytes(b"this is not a NIfTI file at all")
    _expect_cli_error(folder, capsys, "bad_t1.nii.gz", "NIfTI")


def test_truncated_file(tmp_path, capsys):
    folder = _case_with(tmp_path)
    path = folder / "bad_t1.nii.gz"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    _expect_cli_error(folder, capsys, "bad_t1.nii.gz")


def test_uncompressed_truncated_file(tmp_path):
    folder = _case_with(tmp_path)
    raw = folder / "raw.nii"
    with gzip.open(folder / "bad_t1.nii.gz") as src, open(raw, "wb") as dst:
        shutil.copyfileobj(src, dst)
    raw.write_bytes(raw.read_bytes()[:400])
    with pytest.raises(InputError, match="raw.nii"):
        load_volume(raw)


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.nii.gz"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"partial")
            raise RuntimeError("crash mid-write")
    assert list(tmp_path.iterdir()) == []


def test_never_overwrites_an_input(tmp_path):
    folder = _case_with(tmp_path)
    src = folder / "bad_t1.nii.gz"
    before = src.read_bytes()
    with pytest.raises(InputError, match="overwrite an input"):
        save_volume(src, np.ones((2, 2, 2)), np.eye(4), protect=[src])
    assert src.read_bytes() == before


def test_phantom_cli_rejects_bad_arguments(tmp_path, capsys):
    assert main(["phantom", "--out", str(tmp_path / "x")]) == 2
    assert "at least one case" in capsys.readouterr().err
    assert main(["phantom", "--out", str(tmp_path / "x"), "--healthy", "1", "--spacing", "9"]) == 2
    assert "spacing" in capsys.readouterr().err


def test_written_files_get_the_usual_mode(tmp_path):
    import os

    path = save_volume(tmp_path / "v.nii.gz", np.ones((2, 2, 2)), np.eye(4))
    umask = os.umask(0)
    os.umask(umask)
    assert (path.stat().st_mode & 0o777) == (0o666 & ~umask)


def test_misleading_messages_name_the_real_problem(tmp_path, brats21):
    """Each of these used to be reported as something else (a bare "Singular matrix", NaN, "file not
    found", "volume too small", PyTorch's weights_only advice, BraTS labels 0-6 accepted)."""
    from localdiffusion.jobs.inputs import prepare_input
    from localdiffusion.network.denoiser import load_denoiser

    data = np.random.default_rng(0).uniform(1, 100, (20, 20, 20)).astype(np.float32)
    singular = tmp_path / "singular.nii.gz"
    header = nib.Nifti1Header()  # nibabel refuses to build a singular affine itself: write the header by hand
    header.set_data_shape(data.shape)
    header.set_data_dtype(np.float32)
    header["qform_code"], header["sform_code"] = 0, 1
    header["srow_x"], header["srow_y"], header["srow_z"] = [1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0]
    nib.save(nib.Nifti1Image(data, None, header=header), str(singular))
    huge = tmp_path / "huge.nii.gz"
    nib.save(nib.Nifti1Image(np.full((20, 20, 20), 1e300, np.float64), np.eye(4)), str(huge))
    loop = tmp_path / "loop.nii.gz"
    loop.symlink_to(tmp_path / "loop.nii.gz")
    labels = tmp_path / "labels.nii.gz"
    seg = np.zeros((40, 40, 40), np.float32)
    seg[10:30, 10:30, 10:30] = 2
    seg[15:25, 15:25, 15:25] = 4
    nib.save(nib.Nifti1Image(seg, np.eye(4)), str(labels))
    cases = {singular: "singular", huge: "exceed the float32 range", loop: "cannot be opened"}
    for path, message in cases.items():
        with pytest.raises(InputError, match=message) as info:
            load_volume(path)
        assert str(path) in str(info.value)
    with pytest.raises(InputError, match="looks like a label map"):
        prepare_input(labels, "t1", 2.0, (96, 112))
    weights = tmp_path / "model"
    weights.mkdir()
    (weights / "config.json").write_text("{}")
    (weights / "model.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="corrupt weights file") as info:
        load_denoiser(weights)
    assert "weights_only" not in str(info.value)
    folder = tmp_path / brats21.name
    shutil.copytree(brats21, folder)
    seg_path = folder / f"{brats21.name}_seg.nii.gz"
    bad = nib.load(str(seg_path))
    values = np.asarray(bad.dataobj).copy()
    values[values == 4] = 6
    nib.save(nib.Nifti1Image(values, bad.affine), str(seg_path))
    with pytest.raises(InputError, match="unexpected label values"):
        read_case(folder)
