"""Hallucination-aware T1 <-> FLAIR translation: `localdiffusion run` is the main job, `demo` runs it on the phantom.

User parameters come from the options table (:mod:`localdiffusion.options`). Every command
turns a user fault (:class:`~localdiffusion.errors.InputError`, and only that) into one
``error:`` line and exit code 2; any other exception is a programming error and keeps its
traceback (exit code 1).
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import sys
from pathlib import Path

from localdiffusion.errors import InputError
from localdiffusion.options import DIRECTIONS, HEALTHY_FPR, MODALITIES, RUN_OPTIONS, add_options
from localdiffusion.shipped import ood_bank_path, shipped_model_dir

EXIT_BAD_INPUT = 2
MODELS_HELP = "models folder (default: $LOCALDIFFUSION_MODELS, else the shipped models)"
INPUT_HELP = ("3D volume of the source contrast: NIfTI, NRRD, MetaImage (.mha/.mhd), MGZ, or a folder holding a "
              "DICOM series")


#: each command's one-line help (also what `localdiffusion --help` lists without building every parser)
COMMAND_HELP = {
    "phantom": "generate the physics-phantom cohort (BraTS 2021 layout)",
    "studies": "a flat MONAI Label studies folder (T1, FLAIR and labels side by side) from a BraTS-layout cohort",
    "demo": "the main job on the embedded default data (phantom from nilearn's MNI152)",
    "check": "read and validate one case (BraTS 2020/2021/2023 folder or MSD image)",
    "train": "train the conditional diffusion model on healthy slices",
    "translate": "translate a volume (e.g. T1 -> FLAIR) with a trained model",
    "calibrate-gate": "fit the input gate (contrast and distribution checks) on healthy validation cases",
    "calibrate-risk": "fit the hallucination-risk calibration on healthy validation cases",
    "evaluate": "translation PSNR/SSIM over the brain on a cohort split",
    "ood": "PatchCore OOD detector: build a calibrated bank, map a volume",
    "train-seg": "train the downstream tumour-segmentation U-Net",
    "run": "the main job: OOD map, baseline and Local Diffusion translation of a volume or a cohort (resumable; "
           "shards across torchrun ranks)",
}


def _add_phantom(sub) -> None:
    from localdiffusion.phantom.families import FAMILIES
    from localdiffusion.phantom.generate import GRIDS
    from localdiffusion.phantom.physics import ACQUISITION_SHIFTS

    p = sub.add_parser("phantom", help=COMMAND_HELP["phantom"])
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--healthy", type=int, default=0, help="number of healthy cases")
    p.add_argument("--tumour", type=int, default=0, help="number of glioma cases")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--spacing", type=float, default=2.0, help="voxel size in mm (default 2)")
    p.add_argument("--split", default="all", choices=["all", "train", "val", "test"],
                   help="all: 70/15/15 split; otherwise put every case in this split")
    p.add_argument("--t1-sequence", default="mprage", choices=["mprage", "spin_echo"])
    p.add_argument("--acquisition", default="training", choices=list(ACQUISITION_SHIFTS),
                   help="scanner settings: the training distribution or a shifted test variant (docs/phantom.md)")
    p.add_argument("--family", default="training", choices=list(FAMILIES),
                   help="lesion family: the training phantom's gliomas, or a test family with its own subjects, "
                        "lesions and 1.5/3 T tissues (docs/phantom.md)")
    p.add_argument("--grid", default="template", choices=list(GRIDS),
                   help="template: the MNI152 field of view; brats: 240 x 240 x 155 at 1 mm (with --spacing 1)")
    p.add_argument("--preview", action="store_true", help="write a PNG montage per case")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--skip-existing", action="store_true",
                   help="keep the cases already in the folder's manifest and generate only the others (add subjects "
                        "to a cohort)")
    p.set_defaults(func=_run_phantom)


def _run_phantom(args) -> int:
    from localdiffusion.phantom.dataset import write_cohort

    entries = write_cohort(args.out, args.healthy, args.tumour, args.seed, spacing=args.spacing, split=args.split,
                           preview=args.preview, workers=args.workers, t1_sequence=args.t1_sequence,
                           acquisition=args.acquisition, family=args.family, grid=args.grid,
                           skip_existing=args.skip_existing)
    print(f"wrote {len(entries)} cases and manifest.json to {args.out}")
    return 0


def _add_studies(sub) -> None:
    p = sub.add_parser("studies", help=COMMAND_HELP["studies"])
    p.add_argument("--data", required=True, type=Path, help="cohort folder, one folder per case (BraTS layout)")
    p.add_argument("--out", required=True, type=Path, help="the studies folder for `monailabel start_server --studies`")
    p.add_argument("--labels", action="store_true", help="also each case's tumour labels as the final label of its "
                   "images (an image with a final label counts as done: the stock plugin's Next Sample skips it)")
    p.set_defaults(func=_run_studies)


def _run_studies(args) -> int:
    from localdiffusion.jobs.studies import flat_studies

    ids = flat_studies(args.data, args.out, labels=args.labels)
    where = f" (labels in {args.out / 'labels' / 'final'})" if args.labels else ""
    print(f"{len(ids)} images in {args.out}{where}")
    return 0


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help=COMMAND_HELP["demo"])
    p.add_argument("--out", type=Path, default=Path("outputs/demo"))
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_run_demo)


def _run_demo(args) -> int:
    from localdiffusion.jobs.demo import run_demo

    for line in run_demo(args.out, seed=args.seed):
        print(line)
    return 0


def _add_check(sub) -> None:
    p = sub.add_parser("check", help=COMMAND_HELP["check"])
    p.add_argument("--case", required=True, type=Path)
    p.add_argument("--modalities", nargs="+", default=["t1", "flair"])
    p.set_defaults(func=_run_check)


def _run_check(args) -> int:
    from localdiffusion.data.readers import read_case
    from localdiffusion.volume.grid import prepare_case

    case = read_case(args.case, args.modalities)
    prepared = prepare_case(case)
    labels = "none" if case.seg is None else sorted(set(case.seg.ravel().tolist()))
    print(f"{case.case_id}: layout {case.layout}, shape {case.shape}, modalities {list(case.images)}, labels {labels}")
    print(f"working grid {prepared.grid.shape} at {prepared.grid.spacing} mm, "
          f"{prepared.brain_slices().size} brain slices")
    return 0


def _add_train(sub) -> None:
    from localdiffusion.network.denoiser import DiffusionConfig
    from localdiffusion.training.diffusion import TrainConfig
    from localdiffusion.training.objectives import OBJECTIVES

    d = TrainConfig(data="", out="")
    p = sub.add_parser("train", help=COMMAND_HELP["train"])
    p.add_argument("--data", required=True, help="cohort folder (phantom manifest or BraTS/MSD cases)")
    p.add_argument("--source", default="t1")
    p.add_argument("--target", default="flair")
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--crop", type=int, default=d.crop, help="random crop size (multiple of 4)")
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every)
    p.add_argument("--val-every", type=int, default=d.val_every)
    p.add_argument("--val-slices", type=int, default=d.val_slices)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument("--init-from", type=Path, default=None, help="initialise from a model folder (fine-tuning)")
    p.add_argument("--timesteps", type=int, default=DiffusionConfig.num_train_timesteps, help="T, training timesteps")
    p.add_argument("--prediction-type", default="sample", choices=["sample", "epsilon", "v_prediction"])
    p.add_argument("--channels", type=int, nargs="+", default=[32, 64, 128])
    p.add_argument("--num-res-blocks", type=int, default=2)
    p.add_argument("--condition-slices", type=int, default=1,
                   help="2.5D: the source slice and its neighbours as condition channels (odd; 5 = 2 on each side)")
    p.add_argument("--objective", default=d.objective, choices=list(OBJECTIVES),
                   help="plain: MSE on x0; vsm: + learned variance, its variational term and the VSM regulariser")
    p.add_argument("--vsm-rho", type=float, default=d.vsm_rho, help="weight of the VSM smoothness regulariser")
    p.add_argument("--vsm-time-aware", action="store_true", help="weight the regulariser by rho / sqrt(1 - abar_t)")
    p.set_defaults(func=_run_train)


def _run_train(args) -> int:
    from localdiffusion.network.denoiser import DiffusionConfig
    from localdiffusion.training.diffusion import TrainConfig, train

    n = len(args.channels)
    model_cfg = DiffusionConfig(source=args.source, target=args.target, channels=tuple(args.channels),
                                attention_levels=tuple([False] * (n - 1) + [True]), num_res_blocks=args.num_res_blocks,
                                num_train_timesteps=args.timesteps, prediction_type=args.prediction_type,
                                norm_num_groups=min(16, args.channels[0]), num_head_channels=min(32, args.channels[-1]),
                                condition_slices=args.condition_slices)
    cfg = TrainConfig(data=args.data, out=args.out, steps=args.steps, batch_size=args.batch_size, crop=args.crop,
                      lr=args.lr, checkpoint_every=args.checkpoint_every, val_every=args.val_every,
                      val_slices=args.val_slices, seed=args.seed, device=args.device, threads=args.threads,
                      objective=args.objective, vsm_rho=args.vsm_rho, vsm_time_aware=args.vsm_time_aware)
    out = train(cfg, model_cfg, resume=args.resume, init_from=args.init_from)
    print(f"model written to {out}")
    return 0


def _add_whole_slices_option(p) -> None:
    p.add_argument("--whole-slices", action="store_true",
                   help="run the network on whole slices instead of each slice's brain crop (slower, same model)")


def _crop_margin(args) -> int | None:
    from localdiffusion.volume.batching import BRAIN_CROP_MARGIN

    return None if args.whole_slices else BRAIN_CROP_MARGIN


def _add_translate(sub) -> None:
    p = sub.add_parser("translate", help=COMMAND_HELP["translate"])
    p.add_argument("--input", required=True, type=Path, help=INPUT_HELP)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--model", type=Path, default=None, help="model folder (default: shipped T1->FLAIR)")
    add_options(p, ["sampler", "steps", "seed", "noise_sigma_z", "z_harmonise", "batch_size", "device", "force"])
    p.add_argument("--risk-map", type=Path, default=None, help="also write the per-voxel hallucination risk here")
    p.add_argument("--ood-bank", type=Path, default=None, help="source-modality PatchCore bank for the risk map "
                   "(default: ood_<source>.pt beside the model folder)")
    p.add_argument("--rods", action="store_true", help="RODS robust sampling at the calibrated eps")
    _add_whole_slices_option(p)
    p.set_defaults(func=_run_translate)


def _run_translate(args) -> int:
    from localdiffusion.jobs.translate import translate_file

    model = args.model or shipped_model_dir()
    translate_file(args.input, args.out, model, sampler=args.sampler, steps=args.steps, seed=args.seed,
                   batch_size=args.batch_size, device=args.device, risk_map=args.risk_map, ood_bank=args.ood_bank,
                   rods=args.rods, crop_margin=_crop_margin(args), force=args.force,
                   noise_sigma_z=args.noise_sigma_z, z_harmonise=args.z_harmonise)
    print(f"wrote {args.out}" + (f" and {args.risk_map}" if args.risk_map else ""))
    return 0


def _add_calibrate_gate(sub) -> None:
    p = sub.add_parser("calibrate-gate", help=COMMAND_HELP["calibrate-gate"])
    p.add_argument("--data", required=True, type=Path, nargs="+",
                   help="cohort folder(s): every acquisition the gate must accept (e.g. both T1 kinds)")
    p.add_argument("--models", type=Path, default=None, help=MODELS_HELP + "; the gate is written there")
    p.add_argument("--split", default="val")
    p.add_argument("--max-cases", type=int, default=10, help="at most this many healthy cases per folder")
    p.set_defaults(func=_run_calibrate_gate)


def _run_calibrate_gate(args) -> int:
    from localdiffusion.detectors.input_gate import GATE_FILE
    from localdiffusion.jobs.calibrate import calibrate_gate
    from localdiffusion.shipped import MODELS_ROOT

    models = args.models or MODELS_ROOT
    gate = calibrate_gate(args.data, models, split=args.split, max_cases=args.max_cases)
    path = gate.save(Path(models) / GATE_FILE)
    ranges = ", ".join(f"{c}: correlation {lo:+.3f} to {hi:+.3f}, flagged <= {gate.flagged[c]:.3f}"
                       for c, (lo, hi) in gate.correlation.items())
    print(f"wrote {path} ({gate.cases} healthy {gate.split} cases; {ranges})")
    return 0


def _add_calibrate_risk(sub) -> None:
    from localdiffusion.detectors.maps import DETECTORS
    from localdiffusion.detectors.risk import (COMBINATIONS, RISK_DEFAULTS, growth_label, smoothing_label,
                                               weights_label)

    p = sub.add_parser("calibrate-risk", help=COMMAND_HELP["calibrate-risk"])
    p.add_argument("--data", required=True, type=Path, nargs="+",
                   help="cohort folder(s); the healthy cases of --split (and its lesion cases with --lesion-cases), "
                        "at most --max-cases from each")
    p.add_argument("--model", type=Path, default=None, help="model folder (default: shipped T1->FLAIR)")
    p.add_argument("--ood-bank", type=Path, default=None, help="default: ood_<source>.pt beside the model folder")
    defaults = "; ".join(f"{d}: {' '.join(r.detectors)}, smoothing {smoothing_label(r.smoothing)}, {r.combination}"
                         + (f", grown through {growth_label(r.grow)}" if r.grow else "")
                         + (f", weights {weights_label(r.weights)}" if r.weights else "")
                         for d, r in RISK_DEFAULTS.items())
    p.add_argument("--detectors", nargs="+", default=None, choices=list(DETECTORS),
                   help=f"detector maps the risk combines (default per direction, chosen on validation: {defaults}; "
                        "cycle: the back-translation residual, needs the reverse model beside the model folder; "
                        "curvature needs --rods)")
    p.add_argument("--smoothing", default=None,
                   help="3D Gaussian sigma (voxels) applied to every map before its calibration: one value, or "
                        "x,y,z (z: the slice axis); default: the direction's")
    p.add_argument("--combination", choices=list(COMBINATIONS), default=None,
                   help="how the detectors' probabilities make one score (max, or Fisher's sum of -log(1 - p)); "
                        "default: the direction's")
    p.add_argument("--weights", nargs="+", default=None, metavar="DETECTOR=W",
                   help="a weighted maximum: each detector's share of the false-alarm budget, one per detector "
                        "(e.g. tumour=0.8 wm_lesion=0.2; normalised to sum 1), or 'none'; default: the direction's, "
                        "with its default detectors")
    p.add_argument("--grow", default=None, metavar="MAP:LEVEL",
                   help="grow every flagged region by hysteresis through the brain voxels of MAP >= LEVEL (MAP: "
                        "'risk' or a detector's raw map, e.g. tumour:0.5), or 'none'; default: the direction's, with "
                        "its default detectors")
    p.add_argument("--rods", action="store_true", help="also record RODS curvature and fit its eps")
    p.add_argument("--rods-mode", choices=["cas", "sas"], default=None, help="RODS perturbation direction")
    p.add_argument("--rods-estimator", choices=["autograd", "finite_difference"], default=None,
                   help="how H is computed (finite differences assume a symmetric Jacobian)")
    p.add_argument("--rods-stride", type=int, default=None, help="evaluate H on every n-th step of the window")
    p.add_argument("--rods-rho", type=float, default=None, help="RMS per-pixel size of the perturbation")
    p.add_argument("--max-cases", type=int, default=3)
    p.add_argument("--lesion-cases", action="store_true",
                   help="also the lesion cases of --split, each on its brain outside its lesion labels (the level then "
                        "also holds next to a lesion); --max-cases counts both kinds")
    add_options(p, ["steps", "device"])
    p.add_argument("--fpr", type=float, default=HEALTHY_FPR, help="healthy false-positive rate of the risk threshold")
    p.add_argument("--out", type=Path, default=None,
                   help="default: <model>/risk_calibration.json for the model's validated step count, else "
                        "<model>/risk_calibration_ddim<steps>.json (run and translate pick the one fitted for their "
                        "step count)")
    p.set_defaults(func=_run_calibrate_risk)


def _run_calibrate_risk(args) -> int:
    from localdiffusion.detectors.given import GivenMaps
    from localdiffusion.detectors.risk import (calibration_name, parse_growth, parse_smoothing, parse_weights,
                                               risk_default)
    from localdiffusion.jobs.calibrate import calibrate_risk
    from localdiffusion.methods.rods import RODSConfig
    from localdiffusion.network.denoiser import load_denoiser
    from localdiffusion.network.device import select_device
    from localdiffusion.ood.patchcore import PatchCore

    try:
        smoothing = parse_smoothing(args.smoothing) if args.smoothing is not None else None
    except ValueError as exc:
        raise InputError(f"--smoothing: {exc}") from None
    try:
        grow = parse_growth(args.grow) if args.grow is not None else "default"
    except ValueError as exc:
        raise InputError(f"--grow: {exc}") from None
    model = args.model or shipped_model_dir()
    device = select_device(args.device)
    denoiser = load_denoiser(model, device)
    bank_path = args.ood_bank or ood_bank_path(model.parent, denoiser.config.source)
    bank = PatchCore.load(bank_path, modality=denoiser.config.source)
    rods = None
    if args.rods:
        chosen = {"mode": args.rods_mode, "estimator": args.rods_estimator, "stride": args.rods_stride,
                  "rho": args.rods_rho}
        try:
            rods = RODSConfig(**{k: v for k, v in chosen.items() if v is not None})
        except ValueError as exc:
            raise InputError(f"RODS settings: {exc}") from None
    detectors = tuple(args.detectors or risk_default(denoiser.config.direction).detectors)
    weights = "default"
    if args.weights == ["none"]:
        weights = None
    elif args.weights is not None:
        try:
            weights = parse_weights(args.weights, detectors)
        except ValueError as exc:
            raise InputError(f"--weights: {exc}") from None
    given = GivenMaps.load(detectors, bank, bank_path, model, denoiser.config, device)
    calibration = calibrate_risk(denoiser, args.data, given, detectors=detectors,
                                 smoothing=smoothing, combination=args.combination, grow=grow, weights=weights,
                                 rods=rods,
                                 max_cases=args.max_cases, lesion_cases=args.lesion_cases, steps=args.steps,
                                 false_positive_rate=args.fpr)
    out = args.out or model / calibration_name(calibration.steps, denoiser.config.steps)
    calibration.save(out)
    print(f"wrote {out}" + (f" (RODS {calibration.rods.describe()}, eps {calibration.rods.eps:.4g})"
                            if calibration.rods is not None else ""))
    return 0


def _add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help=COMMAND_HELP["evaluate"])
    p.add_argument("--data", required=True, type=Path)
    p.add_argument("--model", type=Path, default=None)
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--kind", default="healthy", choices=["healthy", "tumour", "all"])
    add_options(p, ["sampler", "steps", "seed", "noise_sigma_z", "z_harmonise", "device"])
    p.add_argument("--max-cases", type=int, default=None)
    p.add_argument("--report", type=Path, default=None, help="write the JSON report here")
    _add_whole_slices_option(p)
    p.set_defaults(func=_run_evaluate)


def _run_evaluate(args) -> int:
    from localdiffusion.jobs.evaluate import evaluate_translation, write_report
    from localdiffusion.network.denoiser import load_denoiser
    from localdiffusion.network.device import select_device

    denoiser = load_denoiser(args.model or shipped_model_dir(), select_device(args.device))
    result = evaluate_translation(denoiser, args.data, args.split, None if args.kind == "all" else args.kind,
                                  sampler=args.sampler, steps=args.steps, seed=args.seed, max_cases=args.max_cases,
                                  crop_margin=_crop_margin(args), noise_sigma_z=args.noise_sigma_z,
                                  z_harmonise=args.z_harmonise)
    result["model"] = str(args.model or shipped_model_dir())
    m = result["mean_std"]
    print(f"{result['direction']} {args.split}/{args.kind} ({result['cases']} cases, {args.sampler}-{args.steps}): "
          f"whole-brain PSNR {m['psnr'][0]:.2f} +- {m['psnr'][1]:.2f} dB, SSIM {m['ssim'][0]:.4f} +- "
          f"{m['ssim'][1]:.4f} on [0, 1]; with the true volume's p99.5 as data range PSNR {m['psnr_range'][0]:.2f} "
          f"+- {m['psnr_range'][1]:.2f} dB, SSIM {m['ssim_range'][0]:.4f} +- {m['ssim_range'][1]:.4f} "
          f"(mean per-slice PSNR {m['psnr_slice_mean'][0]:.2f} dB), {m['seconds'][0]:.1f} s per volume")
    if args.report:
        write_report(result, args.report)
    return 0


def _add_ood(sub) -> None:
    p = sub.add_parser("ood", help=COMMAND_HELP["ood"])
    ood = p.add_subparsers(dest="ood_command", required=True)
    b = ood.add_parser("build", help="fit on healthy train slices, calibrate on healthy val slices")
    b.add_argument("--data", required=True, type=Path)
    b.add_argument("--modality", required=True, choices=MODALITIES)
    b.add_argument("--out", required=True, type=Path)
    b.add_argument("--backbone", default=None,
                   help="timm backbone (default: resnet18 for random weights, wide_resnet50_2 otherwise)")
    b.add_argument("--layers", nargs="+", default=None,
                   help="feature stages (default: layer1 layer2 for random weights, layer2 layer3 otherwise)")
    b.add_argument("--weights", default="random",
                   help="random (BatchNorm recalibrated), imagenet (timm, online or cached), a local "
                        "state_dict file, or diffusion:<model dir> (diffusion U-Net encoder)")
    b.add_argument("--projection-dim", type=int, default=None)
    b.add_argument("--bank-size", type=int, default=4000)
    b.add_argument("--fpr", type=float, default=HEALTHY_FPR, help="calibrated false-positive rate of healthy voxels")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--standardise-to", type=Path, default=None, metavar="ROBUST_JSON",
                   help="a bank for the robust map: standardise every volume onto this robust calibration's "
                        "intensity landmarks first")
    b.add_argument("--augment", type=int, default=0,
                   help="add this many acquisition-augmented copies of every training volume (volume/acquisition.py)")
    b.set_defaults(func=_run_ood_build)
    m = ood.add_parser("map", help="OOD probability map (+ binary mask) in the input's geometry")
    m.add_argument("--input", required=True, type=Path)
    m.add_argument("--bank", required=True, type=Path)
    m.add_argument("--out", required=True, type=Path)
    m.add_argument("--mask-out", type=Path, default=None, help="default: OUT with _mask suffix")
    m.add_argument("--modality", default=None, choices=MODALITIES,
                   help="the input's contrast; refused if the bank was built for another")
    add_options(m, ["robust_ood", "device"])
    m.set_defaults(func=_run_ood_map)
    r = ood.add_parser("calibrate-robust", help="fit a bank's acquisition-robust calibration on healthy validation "
                       "volumes (written beside the bank as <bank>_robust.json)")
    r.add_argument("--bank", required=True, type=Path)
    r.add_argument("--data", required=True, type=Path)
    r.add_argument("--split", default="val", choices=["train", "val", "test"])
    r.add_argument("--max-cases", type=int, default=10)
    r.add_argument("--standardise", default="auto", choices=["auto", "on", "off"],
                   help="intensity standardisation before the backbone (auto: the contrast's validated choice, "
                   "ood/robust.py PREPROCESSING)")
    r.add_argument("--bias-correct", default="auto", choices=["auto", "on", "off"],
                   help="N4 bias-field correction before the backbone (auto: as --standardise)")
    r.add_argument("--location", default="auto", choices=["auto", "none", "max", "only"],
                   help="the location score (registered MNI152 tissues, ood/location.py) beside the patch distance "
                        "(auto: as --standardise)")
    r.add_argument("--mask-level", type=float, default=None,
                   help="Local Diffusion's mask: each flagged component's level set at this fraction, 0 off "
                        "(default: as --standardise)")
    r.set_defaults(func=_run_ood_calibrate_robust)


def _run_ood_build(args) -> int:
    from localdiffusion.jobs.ood_bank import build_bank
    from localdiffusion.ood.features import make_extractor

    extractor = make_extractor(args.backbone, args.weights, layers=args.layers,
                               projection_dim=args.projection_dim, seed=args.seed)
    reference = None
    if args.standardise_to is not None:
        from localdiffusion.ood.robust import RobustCalibration

        reference = RobustCalibration.load(args.standardise_to).reference
        if reference is None:
            raise InputError(f"{args.standardise_to}: this robust calibration does not standardise intensities")
    if args.augment < 0:
        raise InputError(f"--augment must be >= 0, got {args.augment}")
    model = build_bank(args.data, args.modality, extractor, bank_size=args.bank_size,
                       false_positive_rate=args.fpr, seed=args.seed, reference=reference, augment=args.augment)
    model.save(args.out)
    print(f"wrote {args.out}: {len(model.bank)} patches, threshold p >= {model.threshold:.3f}")
    return 0


def _run_ood_map(args) -> int:
    from localdiffusion.jobs.ood_map import map_volume

    prob, mask = map_volume(args.input, args.bank, args.out, args.mask_out, args.modality, device=args.device,
                            robust=args.robust_ood)
    print(f"wrote {prob} and {mask}")
    return 0


def _run_ood_calibrate_robust(args) -> int:
    from localdiffusion.jobs.calibrate import calibrate_robust_ood
    from localdiffusion.shipped import robust_calibration_path

    choice = {"auto": None, "on": True, "off": False}
    location = {"auto": None, "none": ""}.get(args.location, args.location)
    calibration = calibrate_robust_ood(args.bank, args.data, split=args.split, max_cases=args.max_cases,
                                       standardise=choice[args.standardise], bias_correct=choice[args.bias_correct],
                                       location=location, mask_level=args.mask_level)
    out = calibration.save(robust_calibration_path(args.bank))
    print(f"wrote {out}: {calibration.modality}, standardise {calibration.standardise}, "
          f"bias_correct {calibration.bias_correct}, location {calibration.location or 'none'}, "
          f"mask level {calibration.mask_level:g}")
    return 0


def _add_train_seg(sub) -> None:
    p = sub.add_parser("train-seg", help=COMMAND_HELP["train-seg"])
    p.add_argument("--data", required=True, type=Path, nargs="+",
                   help="phantom cohort folder(s); the train tumour cases of all are pooled, the first one's val "
                   "cases validate (unless --val-data)")
    p.add_argument("--val-data", type=Path, default=None,
                   help="the cohort whose val tumour cases validate (default: the first --data folder)")
    p.add_argument("--spacing", type=float, default=None,
                   help="the U-Net's working grid in mm (default: the translation models' 2 mm; the in-plane size "
                        "covers the same field of view)")
    p.add_argument("--modality", default="flair", choices=["t1", "flair", "t2"])
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--gamma-sd", type=float, default=0.0,
                   help="intensity augmentation: standard deviation of log(gamma), with noise; 0 (default) = off")
    p.add_argument("--resume", action="store_true",
                   help="continue from the checkpoint in --out (written every 500 steps and at the end)")
    p.set_defaults(func=_run_train_seg)


def _run_train_seg(args) -> int:
    from localdiffusion.network.segmenter import SegConfig
    from localdiffusion.training.segmenter import train_segmenter

    cfg = SegConfig(modality=args.modality)
    if args.spacing is not None:
        if not 0.5 <= args.spacing <= 4:
            raise InputError(f"--spacing {args.spacing:g}: a grid of 0.5 to 4 mm")
        cfg = cfg.at_spacing(args.spacing)
    metrics = train_segmenter(args.data, args.out, cfg, steps=args.steps, batch_size=args.batch_size, seed=args.seed,
                              gamma_sd=args.gamma_sd, val_data=args.val_data, resume=args.resume)
    print(f"wrote {args.out}: validation tumour Dice {metrics['val_tumour_dice']:.3f}")
    return 0


def _add_run(sub) -> None:
    p = sub.add_parser("run", help=COMMAND_HELP["run"])
    p.add_argument("--input", required=True, type=Path, help=INPUT_HELP + "; or a cohort: a folder of volumes, a "
                   "MONAI datalist JSON, a BraTS 2020/2021/2023 release or an MSD Task01 folder")
    p.add_argument("--out-dir", required=True, type=Path)
    p.add_argument("--models", type=Path, default=None, help=MODELS_HELP)
    add_options(p, RUN_OPTIONS + ("threads",))
    p.add_argument("--json", action="store_true",
                   help="report progress and outputs as JSON lines on stdout (for programs, e.g. the Slicer module)")
    p.set_defaults(func=_run_run)


def _json_line(event: dict) -> None:
    print(json.dumps(event), flush=True)


def _check_input_early(path: Path) -> None:
    """A single volume file is read and validated before the networks are loaded, so that a bad file is
    refused in a fraction of a second (folders, datalists and releases are resolved by the cohort reader)."""
    from localdiffusion.data.io import check_exists, load_volume

    check_exists(path)
    if path.is_file() and path.suffix.lower() != ".json":
        load_volume(path)


def _run_run(args) -> int:
    import os

    _check_input_early(args.input)
    if args.json:
        _json_line({"event": "progress", "phase": "load", "fraction": 0.0})
    from localdiffusion.jobs.cohort import CohortTranslator, is_cohort, resolve_cohort
    from localdiffusion.jobs.run import JOB_OPTIONS, JobOptions, run_job
    from localdiffusion.network.device import use_threads

    use_threads(args.threads)

    options = JobOptions(**{name: getattr(args, name) for name in JOB_OPTIONS})
    items = resolve_cohort(args.input, DIRECTIONS[options.direction][0])
    if is_cohort(items, int(os.environ.get("WORLD_SIZE", "1"))):
        translator = CohortTranslator(args.input, args.out_dir, options, args.models, items=items)
        translator.run()
        counts = {}
        for result in translator.results:
            counts[result.status] = counts.get(result.status, 0) + 1
        print(f"cohort: {len(translator.results)} cases on this process, " +
              ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) + f"; report: {args.out_dir}/cohort_report.json")
        return translator.exit_code
    report = _json_line if args.json else None
    outputs = run_job(args.input, args.out_dir, options, args.models, progress=not args.json, report=report)
    if not args.json:
        for name, path in outputs.items():
            print(f"{name}: {path}")
    return 0


#: command -> the function that adds its parser, in the order `--help` lists them
COMMANDS = {"run": _add_run, "phantom": _add_phantom, "studies": _add_studies, "check": _add_check, "train": _add_train,
            "translate": _add_translate, "evaluate": _add_evaluate, "ood": _add_ood, "train-seg": _add_train_seg,
            "calibrate-risk": _add_calibrate_risk, "calibrate-gate": _add_calibrate_gate, "demo": _add_demo}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The command-line parser; with ``only``, just that command's arguments are built (the others are
    listed by name and help), so that option parsing imports nothing heavy for the commands not run."""
    parser = argparse.ArgumentParser(prog="localdiffusion", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, add in COMMANDS.items():
        if only is None or only == name:
            add(sub)
        else:
            sub.add_parser(name, help=COMMAND_HELP[name])
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = argv[0] if argv and argv[0] in COMMANDS else ""
    args = build_parser(only=command).parse_args(argv)
    args.argv = argv
    # notes and warnings (which DICOM series was taken, a borderline input) go to stderr, one line each
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    try:
        return int(args.func(args) or 0)
    except InputError as exc:
        return _fail(args, str(exc), EXIT_BAD_INPUT)
    except KeyboardInterrupt:  # outputs are written atomically: nothing partial is left behind
        return _fail(args, "interrupted (nothing was written for the unfinished outputs)", EXIT_INTERRUPTED)
    except OSError as exc:
        problem = ENVIRONMENT_FAULTS.get(exc.errno)
        if problem is None:
            raise  # not a fault of the machine's disk or names: a bug, with its traceback
        where = f" ({exc.filename})" if exc.filename else ""
        return _fail(args, f"{problem}{where}; nothing partial was left behind", EXIT_BAD_INPUT)


#: exit status of an interrupted command (128 + SIGINT, as shells report Ctrl-C)
EXIT_INTERRUPTED = 130
#: errno -> what the machine is short of: one line instead of a traceback
ENVIRONMENT_FAULTS = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
                      errno.ENAMETOOLONG: "a file name is too long for the file system",
                      errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
                      errno.EMFILE: "too many open files"}


def _fail(args, message: str, code: int) -> int:
    """One error line (and a JSON error event with ``--json``); returns ``code``."""
    if getattr(args, "json", False):
        _json_line({"event": "error", "message": message})
    print(f"error: {message}", file=sys.stderr)
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
