"""Shared fixtures: a tiny phantom cohort generated once per test session."""

from __future__ import annotations

import dataclasses
import json
import os

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(scope="session")
def tumour_case():
    from localdiffusion.phantom.generate import generate_case

    return generate_case(200_000_123, tumour=True, spacing=2.0)


@pytest.fixture(scope="session")
def healthy_case():
    from localdiffusion.phantom.generate import generate_case

    return generate_case(200_000_007, tumour=False, spacing=2.0)


@pytest.fixture(scope="session")
def cohort(tmp_path_factory):
    """4 mm cohort: 3 healthy + 3 tumour cases (one per split each)."""
    from localdiffusion.phantom.dataset import write_cohort

    root = tmp_path_factory.mktemp("cohort")
    write_cohort(root, 3, 3, seed=7, spacing=4.0, preview=True)
    return root


TINY_MODELS = dict(channels=(8, 16), attention_levels=(False, True), num_res_blocks=1, num_head_channels=8,
                   norm_num_groups=8, num_train_timesteps=10, spacing_mm=4.0, in_plane=(48, 56), steps=3)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory, cohort):
    """A models folder like monai_bundle/models with tiny random weights (4 mm grid), segmenters included."""
    import torch

    from localdiffusion.jobs.calibrate import calibrate_robust_ood
    from localdiffusion.network.denoiser import DiffusionConfig, build_network, save_model
    from localdiffusion.network.segmenter import SegConfig, Segmenter
    from localdiffusion.ood.features import FeatureExtractor
    from localdiffusion.ood.patchcore import PatchCore
    from localdiffusion.shipped import robust_calibration_path
    from localdiffusion.volume.cohort import load_slice_set

    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    for src, tgt in (("t1", "flair"), ("flair", "t1")):
        cfg = DiffusionConfig(source=src, target=tgt, **TINY_MODELS)
        save_model(root / f"{src}_to_{tgt}", cfg, build_network(cfg).state_dict())
    for m in ("t1", "flair"):
        train = load_slice_set(cohort, "train", (m,), kind="healthy", spacing=4.0, in_plane=(48, 56))
        val = load_slice_set(cohort, "val", (m,), kind="healthy", spacing=4.0, in_plane=(48, 56))
        model = PatchCore.fit(FeatureExtractor("resnet18", ("layer1", "layer2")), train.images[m], train.brain,
                              modality=m, bank_size=200, progress=False,
                              grid={"spacing_mm": 4.0, "in_plane": [48, 56]})
        model.calibrate(val.images[m], val.brain)
        model.save(root / f"ood_{m}.pt")
        # the acquisition-robust calibration beside the bank (the T1 -> FLAIR risk map combines it)
        calibrate_robust_ood(root / f"ood_{m}.pt", cohort).save(robust_calibration_path(root / f"ood_{m}.pt"))
        seg = SegConfig(modality=m, channels=(4, 8), strides=(2,), in_plane=(48, 56), spacing_mm=4.0)
        # the segment job's U-Net and the risk map's lesion U-Nets (T1 -> FLAIR also reads a white-matter one)
        for kind in ("seg", "lesion", "wm_lesion") if m == "t1" else ("seg", "lesion"):
            (root / f"{kind}_{m}").mkdir()
            (root / f"{kind}_{m}" / "config.json").write_text(json.dumps(dataclasses.asdict(seg)))
            torch.save(Segmenter(seg).network.state_dict(), root / f"{kind}_{m}" / "model.pt")
    return root


@pytest.fixture(scope="session")
def risk_models(tiny_models, tmp_path_factory):
    """A copy of the tiny models with a toy T1 -> FLAIR risk calibration (the OOD map alone, smoothed, fitted
    for 2 steps on random healthy maps), so that ``run --steps 2`` writes a risk map and its regions."""
    import shutil

    import numpy as np

    from localdiffusion.detectors.risk import fit_on_volumes

    models = tmp_path_factory.mktemp("risk") / "risk_models"
    shutil.copytree(tiny_models, models)
    rng = np.random.default_rng(0)
    brain = np.ones((8, 8, 4), bool)
    healthy = [(brain, {"ood": rng.uniform(0, 0.9, brain.shape).astype(np.float32)}) for _ in range(30)]
    fit_on_volumes(healthy, ("ood",), 1.0, "max", steps=2).save(models / "t1_to_flair" / "risk_calibration.json")
    return models


DATASTORE_IMAGE = "datastore_t1"


def _datastore_image(studies):
    """One small T1 in the server's datastore (image id ``DATASTORE_IMAGE``)."""
    import numpy as np

    from localdiffusion.data.io import save_volume
    from localdiffusion.phantom.generate import generate_case

    case = generate_case(300_000_001, tumour=True, spacing=4.0)
    save_volume(studies / f"{DATASTORE_IMAGE}.nii.gz", case.images["t1"].astype(np.float32), case.affine)


@pytest.fixture(scope="session")
def server(tiny_models, tmp_path_factory):
    """URL of a real MONAI Label server on 127.0.0.1 serving the app with the tiny models."""
    pytest.importorskip("monailabel", reason="MONAI Label is the optional 'label' extra (make test installs it)")
    from research.bench.label_server import local_server

    log = tmp_path_factory.mktemp("label_log") / "server.log"
    studies = tmp_path_factory.mktemp("studies")
    _datastore_image(studies)
    try:
        with local_server(studies, log, models_root=tiny_models, threads=1) as url:
            yield url
    except RuntimeError as exc:
        pytest.fail(str(exc))
