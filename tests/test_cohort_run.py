"""Cohort inference: sharded across two torchrun processes (gloo on CPU) the outputs equal the
single-process outputs bit for bit; a killed run resumes without redoing finished cases; a
failing case is reported and does not stop the others; the exit code says whether any failed."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def volumes(cohort, tmp_path_factory):
    """A folder of five T1 volumes of the tiny 4 mm cohort and a broken file."""
    folder = tmp_path_factory.mktemp("cohort_inputs")
    cases = [p for p in sorted(cohort.iterdir()) if p.is_dir() and not p.name.startswith(".")][:5]
    for case in cases:
        shutil.copy(case / f"{case.name}_t1.nii.gz", folder / f"{case.name}_t1.nii.gz")
    (folder / "broken_t1.nii.gz").write_bytes(b"not an image")
    return folder


def _run(args, env=None, **kwargs):
    environment = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=environment, timeout=900,
                          **kwargs)


def _cli(volumes, out, models):
    return ["-m", "localdiffusion.cli", "run", "--input", str(volumes), "--out-dir", str(out), "--models", str(models),
            "--steps", "2", "--t-intermediate", "5"]


def _report(out: Path) -> dict:
    return json.loads((out / "cohort_report.json").read_text())


def _arrays(out: Path) -> dict[str, np.ndarray]:
    return {p.name: np.asarray(nib.load(str(p)).dataobj) for p in _outputs(out)}


def _outputs(out: Path) -> list[Path]:
    return sorted(p for p in out.glob("*.nii.gz") if not p.name.startswith("."))  # not a killed write's temporary


@pytest.fixture(scope="module")
def single(volumes, tiny_models, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("single")
    proc = _run(_cli(volumes, out, tiny_models))
    assert proc.returncode == 2, proc.stderr[-2000:]  # one case failed on a user fault
    return out


def test_a_failing_case_is_reported_and_the_others_run(single):
    report = _report(single)
    statuses = {row["case"]: row["status"] for row in report["cases"]}
    assert statuses.pop("broken_t1") == "failed" and set(statuses.values()) == {"done"} and len(statuses) == 5
    failed = next(row for row in report["cases"] if row["case"] == "broken_t1")
    assert "not a readable NIfTI" in failed["error"] and failed["seconds"] >= 0
    assert (single / "cohort_report.csv").read_text().splitlines()[0] == "case,input,status,error,seconds,rank"


def _same_as_single(single: Path, other: Path) -> None:
    report = _report(other)
    assert report["world_size"] == 2 and {row["rank"] for row in report["cases"]} == {0, 1}
    assert {row["case"]: row["status"] for row in report["cases"]}["broken_t1"] == "failed"
    one, two = _arrays(single), _arrays(other)
    assert set(one) == set(two) and len(one) == 5 * 4
    for name in one:
        assert np.array_equal(one[name], two[name]), name


def test_two_torchrun_processes_equal_one(single, volumes, tiny_models, tmp_path):
    proc = _run(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                 *_cli(volumes, tmp_path, tiny_models)])
    assert proc.returncode != 0  # a case failed (torchrun reports the ranks' exit code 2 as a failure)
    _same_as_single(single, tmp_path)


def test_the_bundle_multi_gpu_config_on_two_cpu_processes(single, volumes, tiny_models, tmp_path):
    configs = Path(__file__).resolve().parents[1] / "monai_bundle" / "configs"
    files = str([str(configs / "inference.json"), str(configs / "multi_gpu_inference.json")])
    proc = _run(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "monai.bundle", "run",
                 "--config_file", files, "--meta_file", str(configs / "metadata.json"), "--input", str(volumes),
                 "--output_dir", str(tmp_path), "--models_root", str(tiny_models), "--steps", "2",
                 "--t_intermediate", "5"])
    assert proc.returncode != 0  # a case failed
    _same_as_single(single, tmp_path)


def test_a_killed_run_resumes_without_redoing_finished_cases(volumes, tiny_models, tmp_path):
    out = tmp_path / "out"
    process = subprocess.Popen([sys.executable, *_cli(volumes, out, tiny_models)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"},
                               start_new_session=True)
    deadline = time.monotonic() + 600
    while len(list(out.glob("*_flair_local_diffusion.nii.gz"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    finished = {p.name: p.stat().st_mtime_ns for p in _outputs(out)}
    assert 2 * 4 <= len(finished) < 5 * 4, sorted(finished)
    proc = _run(_cli(volumes, out, tiny_models))
    assert proc.returncode == 2, proc.stderr[-2000:]
    statuses = [row["status"] for row in _report(out)["cases"]]
    assert statuses.count("skipped") == len(finished) // 4 and statuses.count("done") == 5 - len(finished) // 4
    assert all(p.stat().st_mtime_ns == finished[p.name] for p in _outputs(out) if p.name in finished)
    assert len(_outputs(out)) == 5 * 4


def test_brats_and_msd_releases_resolve_to_the_source_contrast(cohort, tmp_path):
    from localdiffusion.data.io import load_volume, save_volume
    from localdiffusion.jobs.cohort import _extract_channel, resolve_cohort

    items = resolve_cohort(cohort, "flair")  # the phantom cohort is a BraTS 2021 release
    cases = [p for p in sorted(cohort.iterdir()) if p.is_dir() and not p.name.startswith(".")]
    assert [i.path for i in items] == [c / f"{c.name}_flair.nii.gz" for c in cases]
    msd = tmp_path / "Task01_BrainTumour"
    (msd / "imagesTr").mkdir(parents=True)
    t1, affine = load_volume(cases[0] / f"{cases[0].name}_t1.nii.gz")
    flair, _ = load_volume(cases[0] / f"{cases[0].name}_flair.nii.gz")
    save_volume(msd / "imagesTr" / "BRATS_001.nii.gz", np.stack([flair, t1, t1, flair], -1), affine)
    (item,) = resolve_cohort(msd, "t1")
    assert (item.case, item.channel) == ("BRATS_001", 1)
    path, workdir = _extract_channel(item, "t1")
    try:
        data, extracted_affine = load_volume(path)
        assert path.name == "BRATS_001_t1.nii.gz" and np.array_equal(data, t1) and np.allclose(extracted_affine, affine)
    finally:
        shutil.rmtree(workdir)
