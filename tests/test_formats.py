"""Image formats: NIfTI, MGZ, NRRD (LPS and RAS headers), MetaImage and DICOM series keep
their voxels and geometry through the readers and writers; outputs take the input's format."""

import logging

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from dicom_series import write_dicom_series
from scipy.spatial.transform import Rotation

from localdiffusion.data.formats import output_suffix_for, sitk_affine, split_suffix
from localdiffusion.data.io import load_volume, save_volume
from localdiffusion.errors import InputError
from localdiffusion.jobs.cohort import resolve_inputs
from localdiffusion.jobs.inputs import check_outputs


def _oblique_affine(spacing=(1.0, 1.5, 2.0), angles=(10, -20, 30), origin=(10.0, -20.0, 30.0)) -> np.ndarray:
    affine = np.eye(4)
    affine[:3, :3] = Rotation.from_euler("xyz", angles, degrees=True).as_matrix() * np.asarray(spacing)
    affine[:3, 3] = origin
    return affine


@pytest.fixture
def volume():
    return (np.random.default_rng(0).random((10, 12, 9)) * 1000 + 1).astype(np.int16).astype(np.float32)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha", ".mgz"])
def test_every_writable_format_round_trips_voxels_and_oblique_geometry(tmp_path, volume, suffix):
    affine = _oblique_affine()
    path = save_volume(tmp_path / f"case_t1{suffix}", volume, affine)
    data, read_affine = load_volume(path)
    assert np.array_equal(data, volume) and np.allclose(read_affine, affine, atol=1e-5)
    labels = save_volume(tmp_path / f"mask{suffix}", (volume > 500).astype(np.uint8), affine)
    assert np.array_equal(load_volume(labels)[0], (volume > 500).astype(np.float32))


def test_simpleitk_and_nibabel_agree_on_world_coordinates(tmp_path, volume):
    """The LPS <-> RAS conversion checked against ITK's own NIfTI reader (an independent implementation)."""
    affine = _oblique_affine()
    nib.save(nib.Nifti1Image(volume, affine), str(tmp_path / "x.nii.gz"))
    image = sitk.ReadImage(str(tmp_path / "x.nii.gz"))
    assert np.allclose(sitk_affine(image), affine, atol=1e-4)
    ras = affine @ np.array([3, 4, 5, 1.0])
    lps = image.TransformIndexToPhysicalPoint((3, 4, 5))
    assert np.allclose(lps, [-ras[0], -ras[1], ras[2]], atol=1e-4)


@pytest.mark.parametrize("space", ["left-posterior-superior", "right-anterior-superior"])
def test_nrrd_headers_in_lps_and_ras_space_give_the_same_geometry(tmp_path, volume, space):
    nrrd = pytest.importorskip("nrrd")
    affine = _oblique_affine()
    flip = np.diag([-1.0, -1.0, 1.0]) if space.startswith("left") else np.eye(3)
    header = {"space": space, "space directions": (flip @ affine[:3, :3]).T, "space origin": flip @ affine[:3, 3],
              "kinds": ["domain"] * 3}
    path = tmp_path / "x.nrrd"
    nrrd.write(str(path), volume, header)
    data, read_affine = load_volume(path)
    assert np.array_equal(data, volume) and np.allclose(read_affine, affine, atol=1e-5)


def test_a_dicom_series_folder_is_read_with_its_geometry_and_the_larger_series_is_named(tmp_path, volume, caplog):
    affine = _oblique_affine(spacing=(1.0, 1.0, 3.0))
    folder = tmp_path / "dicom"
    write_dicom_series(volume, affine, folder, "1.2.826.0.1.3680043.2.1125.1001")
    write_dicom_series(volume[:, :, :3], affine, folder, "1.2.826.0.1.3680043.2.1125.1002", "localizer")
    with caplog.at_level(logging.WARNING, logger="localdiffusion"):
        data, read_affine = load_volume(folder)
    assert np.array_equal(data, volume) and np.allclose(read_affine, affine, atol=1e-4)
    assert "took 1.2.826.0.1.3680043.2.1125.1001 (9 files)" in caplog.text and "1002 (3 files)" in caplog.text
    assert resolve_inputs(folder) == [folder] and output_suffix_for(folder) == ".nii.gz"


def test_output_names_follow_the_input_format_or_the_option(tmp_path):
    assert split_suffix("CASE.v2_t1.nii.gz") == ("CASE.v2_t1", ".nii.gz")
    assert output_suffix_for(tmp_path / "a.nrrd") == ".nrrd" and output_suffix_for(tmp_path / "a.mhd") == ".mha"
    assert output_suffix_for(tmp_path / "a.MGZ") == ".mgz" and output_suffix_for(tmp_path / "a.nrrd", "nifti") == ".nii.gz"
    with pytest.raises(InputError, match="must end in one of"):
        check_outputs([], {"--out": tmp_path / "out.mhd"})  # a detached header cannot be replaced atomically


def test_unreadable_and_unknown_files_are_one_line_input_errors(tmp_path):
    bad = tmp_path / "broken.nrrd"
    bad.write_bytes(b"NRRD0004\nthis is not a header\n")
    with pytest.raises(InputError) as info:
        load_volume(bad)
    assert str(info.value).startswith(f"{bad}: not a readable nrrd image") and "\n" not in str(info.value)
    other = tmp_path / "scan.jpg"
    other.write_bytes(b"\xff\xd8")
    with pytest.raises(InputError, match="unknown image format"):
        load_volume(other)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="no DICOM series"):
        load_volume(empty)


def test_the_output_format_option_lists_exactly_the_writable_formats():
    from localdiffusion.data.formats import OUTPUT_SUFFIX
    from localdiffusion.options import OPTIONS, OUTPUT_FORMATS

    assert OUTPUT_FORMATS[0] == "input" and set(OUTPUT_FORMATS[1:]) == set(OUTPUT_SUFFIX)
    assert OPTIONS["output_format"].choices == OUTPUT_FORMATS


def test_several_outputs_are_written_all_or_nothing(tmp_path, volume):
    from localdiffusion.data.io import save_volumes

    sheared = _oblique_affine()
    sheared[0, 1] += 0.5  # NRRD stores orthogonal directions only: the second write fails
    with pytest.raises(InputError, match="sheared"):
        save_volumes({tmp_path / "first.nii.gz": (volume, sheared), tmp_path / "second.nrrd": (volume, sheared)})
    assert sorted(tmp_path.iterdir()) == []  # neither output, no temporary file


def test_a_dicom_series_with_missing_or_unreadable_slices_is_refused_with_the_positions(tmp_path):
    volume = np.random.default_rng(0).uniform(10, 100, (12, 10, 30)).astype(np.float32)
    affine = _oblique_affine(spacing=(1.0, 1.0, 2.5))
    whole = tmp_path / "whole"
    write_dicom_series(volume, affine, whole, "1.2.826.0.1.3680043.2.1125.2001")
    assert load_volume(whole)[0].shape == volume.shape
    gaps = tmp_path / "gaps"
    write_dicom_series(volume, affine, gaps, "1.2.826.0.1.3680043.2.1125.2002")
    for k in range(10, 20):  # 10 of 30 slices missing
        next(gaps.glob(f"*_{k:03d}.dcm")).unlink()
    with pytest.raises(InputError, match="uneven slice positions") as info:
        load_volume(gaps)
    assert str(gaps) in str(info.value) and "about 10 slices missing" in str(info.value) and " mm" in str(info.value)
    corrupt = tmp_path / "corrupt"
    write_dicom_series(volume, affine, corrupt, "1.2.826.0.1.3680043.2.1125.2003")
    next(corrupt.glob("*_015.dcm")).write_bytes(b"\0" * 200)  # one slice file overwritten
    with pytest.raises(InputError, match=r"uneven slice positions|unreadable") as info:
        load_volume(corrupt)
    assert str(corrupt) in str(info.value)


def test_upper_case_suffixes_are_read_and_an_oversized_header_is_refused_before_reading(tmp_path, monkeypatch):
    import nibabel as nib

    data = np.random.default_rng(0).uniform(1, 100, (20, 20, 20)).astype(np.float32)
    upper = tmp_path / "CASE_T1.NII.GZ"
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(tmp_path / "case.nii.gz"))
    (tmp_path / "case.nii.gz").rename(upper)
    assert np.array_equal(load_volume(upper)[0], data)
    header = nib.Nifti1Header()
    header.set_data_shape((1000, 1000, 400))
    header.set_data_dtype(np.int16)
    import gzip

    big = tmp_path / "big_t1.nii.gz"
    big.write_bytes(gzip.compress(header.binaryblock + b"\0" * 4 + b"\0" * 65536))
    with pytest.raises(InputError, match="declares 1000 x 1000 x 400 voxels") as info:
        load_volume(big)
    assert "LOCALDIFFUSION_MAX_VOXELS" in str(info.value)
    monkeypatch.setenv("LOCALDIFFUSION_MAX_VOXELS", "1000")
    with pytest.raises(InputError, match="more than the 1,000"):
        load_volume(upper)


def test_a_truncated_metaimage_is_called_truncated_not_missing(tmp_path, volume):
    path = save_volume(tmp_path / "case_t1.mha", volume, np.eye(4))
    raw = path.read_bytes()
    truncated = tmp_path / "cut_t1.mha"
    truncated.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(InputError, match="corrupt or truncated") as info:
        load_volume(truncated)
    assert str(truncated) in str(info.value) and "No such file" not in str(info.value)
