"""The main job on one volume: OOD map, baseline and Local Diffusion translations, risk map.

Holds :class:`JobOptions`, :func:`compute_job` (computes, writes nothing), :func:`write_outputs`
(the one writer the CLI, the bundle, the cohort runner and :func:`run_job` share) and the output
naming rule (:func:`planned_outputs`, :func:`output_paths`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Callable

import numpy as np

from localdiffusion import __version__
from localdiffusion.data.formats import output_suffix_for, split_suffix
from localdiffusion.data.io import atomic_path, save_volumes, volume_stem
from localdiffusion.detectors.cycle import reverse_model_dir
from localdiffusion.detectors.given import GivenMaps
from localdiffusion.detectors.maps import VolumeRecorder
from localdiffusion.detectors.regions import FlaggedRegion, find_regions, region_report, write_report
from localdiffusion.detectors.risk import RiskCalibration, calibration_for, risk_volumes
from localdiffusion.errors import InputError
from localdiffusion.jobs.inputs import check_out_dir, check_outputs, check_sampling, gate_input, prepare_input
from localdiffusion.methods.local_diffusion import (LocalDiffusionConfig, LocalDiffusionPlan, PatchCoreGate,
                                                    branch_weight_volume)
from localdiffusion.network.denoiser import load_denoiser, read_config
from localdiffusion.network.device import select_device
from localdiffusion.ood.patchcore import PatchCore
from localdiffusion.ood.robust import RobustCalibration
from localdiffusion.ood.volume import OodMap, bank_map
from localdiffusion.options import DIRECTIONS, OPTIONS, OUTPUTS, RISK_OUTPUTS, RUN_OPTIONS, default, output_suffix
from localdiffusion.shipped import MODELS_ROOT, ood_bank_path, robust_calibration_path
from localdiffusion.volume.batching import SampledSlices, batch_sampler, translate_prepared

log = logging.getLogger("localdiffusion")

#: ``report(event)``: ``{"event": "progress", "phase": ..., "fraction": ...}`` or ``{"event": "output", ...}``
Report = Callable[[dict], None]


@dataclass
class JobOptions:
    """The main job's parameters; defaults, ranges and choices come from :data:`~localdiffusion.options.OPTIONS`."""

    direction: str = default("direction")
    sampler: str = default("sampler")
    steps: int = default("steps")
    seed: int = default("seed")
    noise_sigma_z: float = default("noise_sigma_z")
    z_harmonise: float = default("z_harmonise")
    batch_size: int = default("batch_size")
    local_diffusion: str = default("local_diffusion")
    t_intermediate: int = default("t_intermediate")
    mask_mode: str = default("mask_mode")
    ind_floor: float = default("ind_floor")
    independent_noise: bool = default("independent_noise")
    max_rebranch: int = default("max_rebranch")
    gate: bool = default("gate")
    baseline: bool = default("baseline")
    device: str = default("device")
    force: bool = default("force")
    output_format: str = default("output_format")
    risk_map: bool = default("risk_map")  # written when the model folder holds a risk calibration for the step count

    def __post_init__(self):
        for name in JOB_OPTIONS:
            setattr(self, name, OPTIONS[name].check(getattr(self, name)))


#: the main job's user options (the fields that are rows of the options table), in field order
JOB_OPTIONS = tuple(f.name for f in fields(JobOptions) if f.name in OPTIONS)
if JOB_OPTIONS != RUN_OPTIONS:  # the command line builds its flags from RUN_OPTIONS without importing this module
    raise ImportError(f"options.RUN_OPTIONS {RUN_OPTIONS} differs from JobOptions' fields {JOB_OPTIONS}")


def model_paths(models_root: str | Path, direction: str) -> dict[str, Path]:
    source, target = DIRECTIONS[direction]
    root = Path(models_root)
    return {"diffusion": root / direction, "ood": ood_bank_path(root, source), "gate": ood_bank_path(root, target),
            "risk": root / direction / "risk_calibration.json",
            "reverse": reverse_model_dir(root / direction, direction),
            "robust": robust_calibration_path(ood_bank_path(root, source))}


def planned_outputs(input_path: str | Path, out_dir: str | Path, options: JobOptions,
                    models_root: str | Path | None = None) -> dict[str, Path]:
    """The files :func:`run_job` writes for ``input_path`` with ``options``: every output it
    produces (no baseline when ``options.baseline`` is off, no risk map and regions without a calibration
    fitted for this sampler and step count), named ``<input stem>_<suffix><format suffix>``."""
    paths = model_paths(Path(models_root) if models_root else MODELS_ROOT, options.direction)
    local = read_config(paths["diffusion"]).uses_local_diffusion(options.local_diffusion)
    names = [name for name in OUTPUTS if name != "baseline" or (options.baseline and local)]
    if _risk_calibration(paths, options)[0] is None:
        names = [name for name in names if name not in RISK_OUTPUTS]
    return output_paths(input_path, out_dir, options, names, local)


def uses_local_diffusion(options: JobOptions, models_root: str | Path | None = None) -> bool:
    """Whether the job's translation is Local Diffusion's: ``options.local_diffusion``, where "model" reads the
    direction's validated choice from its ``config.json``. Without it the job writes the plain translation and
    no separate baseline (it would be the same image)."""
    paths = model_paths(Path(models_root) if models_root else MODELS_ROOT, options.direction)
    return read_config(paths["diffusion"]).uses_local_diffusion(options.local_diffusion)


def output_paths(input_path: str | Path, out_dir: str | Path, options: JobOptions, names,
                 local_diffusion: bool = True) -> dict[str, Path]:
    """The naming rule: ``<out_dir>/<input stem>_<output suffix><format suffix>`` for each name
    (:func:`~localdiffusion.options.output_suffix`)."""
    stem, suffix = volume_stem(input_path), output_suffix_for(input_path, options.output_format)
    return {name: Path(out_dir) / f"{stem}_{output_suffix(name, options.direction, local_diffusion)}{suffix}"
            for name in names}


def _risk_calibration(paths: dict[str, Path], options: JobOptions) -> tuple[RiskCalibration | None, str]:
    """The risk calibration the job uses, or None and why not: none asked for, none fitted for this sampler
    and step count, or one combining a map whose model file is not at hand (the cycle residual's reverse
    model, the robust OOD map's calibration): no risk map rather than a miscalibrated one."""
    if not options.risk_map:
        return None, ""
    steps = read_config(paths["diffusion"]).sampling_steps(options.steps)
    calibration, why = calibration_for(paths["diffusion"], options.sampler, steps)
    if calibration is None:
        return None, why
    needed = GivenMaps.files(calibration.needs, paths["ood"], paths["diffusion"], options.direction)
    missing = [str(path) for path in needed.values() if not path.exists()]
    if missing:
        return None, f"no hallucination-risk map: it needs {', '.join(missing)}, which is not there"
    return calibration, ""


def _robust_calibration(paths: dict[str, Path]) -> tuple[RobustCalibration | None, str]:
    """The source contrast's robust calibration, the OOD map the job writes and branches on; or None and
    what that means: a models folder without it falls back to the bank's own map."""
    if not paths["robust"].exists():
        return None, (f"{paths['robust']} not found: the OOD map and Local Diffusion's masks use the bank's own "
                      f"calibration, which flags the acquisition of a scan from another scanner")
    return RobustCalibration.load(paths["robust"]), ""


@dataclass
class JobResult:
    """What the main job computes for one volume, on the input's grid.

    Attributes:
        volumes: output name (:data:`~localdiffusion.options.OUTPUTS`) -> (X, Y, Z) volume on
            the input's grid: float32 translations, OOD probability and risk, uint8 OOD mask.
        affine: (4, 4) voxel-to-RAS affine of the input.
        ood: the OOD map Local Diffusion branched on, on the working grid, with its threshold.
        warnings: the input gate's and the job's warnings, in order.
        steps: the step count every pass sampled with (the model's validated one unless the options named one).
        regions: the risk map's flagged regions (:mod:`~localdiffusion.detectors.regions`; numbered as in the
            ``risk_regions`` label map), None without a risk map.
        working: the working grid's volumes before resampling to the input (translations, ``ood``, ``risk``,
            ``brain``, and ``detector_<name>``: each map as the risk's CDFs read it, to fit a calibration on);
            ``working_affine`` is that grid's.
        stem: the input's file-name stem, which names every output (:func:`output_paths`).
        provenance: what made the outputs (version, models, direction, sampler, steps, seed, options, the risk
            calibration's definition, warnings), for their sidecar.
    """

    volumes: dict[str, np.ndarray]
    affine: np.ndarray
    ood: OodMap
    warnings: list[str]
    steps: int
    regions: list[FlaggedRegion] | None = None
    working: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    working_affine: np.ndarray | None = None
    stem: str = ""
    provenance: dict = dataclasses.field(default_factory=dict)

    def description(self) -> str:
        """One line of provenance for the output files' headers."""
        p = self.provenance
        return (f"localdiffusion {p.get('version', '')} {p.get('direction', '')} {p.get('sampler', '').upper()}-"
                f"{self.steps} seed {p.get('seed', '')}").strip()

    def region_report(self, **context) -> dict:
        """The flagged regions as the JSON report ``run`` writes (``context``: input, direction, ...)."""
        return region_report(self.regions or [], steps=self.steps, **context)


def compute_job(input_path: str | Path, options: JobOptions | None = None, models_root: str | Path | None = None,
                progress: bool = True, report: Report | None = None) -> JobResult:
    """Compute the main job's outputs for one volume; writes nothing.

    Models come from one folder (default: the shipped ``monai_bundle/models``):
    ``<source>_to_<target>/`` (the diffusion model), ``ood_<contrast>.pt`` (PatchCore banks; the
    target contrast's is the gate's classifier) and ``ood_<source>_robust.json`` (the
    acquisition-robust calibration: the OOD map the job returns and Local Diffusion branches on;
    without it, the bank's own map, with a warning); the input gate reads the bank's own map.
    With a ``<source>_to_<target>/risk_calibration*.json`` fitted for the sampler and step count the
    job also computes the per-voxel hallucination risk (:mod:`~localdiffusion.detectors.risk`);
    a calibration that combines the cycle residual needs the reverse model ``<target>_to_<source>/``.

    Args:
        input_path: a volume file or a DICOM series folder of the direction's source contrast.
        options: the job's parameters (default: the options table's defaults).
        models_root: the models folder (default: the shipped models).
        progress: show progress bars on stderr.
        report: told ``{"event": "progress" | "warning" | "phases" | "region", ...}`` as the job goes.
    Returns:
        a :class:`JobResult`; the risk map only when a calibration fits the sampler and step count
        (:func:`planned_outputs`), the baseline only when ``options.baseline``.
    """
    options = options or JobOptions()
    warnings: list[str] = []

    def tell(event: dict) -> None:
        if event["event"] == "warning":
            warnings.append(event["message"])
        if report is not None:
            report(event)

    def warn(message: str) -> None:
        log.warning("warning: %s", message)
        tell({"event": "warning", "message": message})

    models_root = Path(models_root) if models_root else MODELS_ROOT
    paths = model_paths(models_root, options.direction)
    source, target = DIRECTIONS[options.direction]
    device = select_device(options.device)
    denoiser = load_denoiser(paths["diffusion"], device)
    if (denoiser.config.source, denoiser.config.target) != (source, target):
        raise InputError(f"{paths['diffusion']}: model translates {denoiser.config.source} -> "
                         f"{denoiser.config.target}, not {source} -> {target}")
    options = dataclasses.replace(options, steps=denoiser.config.sampling_steps(options.steps),  # 0: the model's
                                  t_intermediate=denoiser.config.fusion_step(options.t_intermediate))  # -1: the model's
    local_on = denoiser.config.uses_local_diffusion(options.local_diffusion)
    with_baseline = options.baseline and local_on  # without Local Diffusion the translation is the baseline
    ood_bank = PatchCore.load(paths["ood"], modality=source, model_root=models_root).to(device)
    gate = PatchCoreGate(PatchCore.load(paths["gate"], modality=target, model_root=models_root).to(device)
                         ) if options.gate else None
    robust, no_robust = _robust_calibration(paths)
    if no_robust:
        warn(no_robust)
    calibration, no_risk = _risk_calibration(paths, options)
    given = GivenMaps.load(calibration.needs, ood_bank, paths["ood"], paths["diffusion"], denoiser.config,
                           device) if calibration is not None else None
    prepared = prepare_input(input_path, source, denoiser.config.spacing_mm, denoiser.config.in_plane)
    check_sampling(denoiser, options.steps, options.t_intermediate)
    if no_risk:  # said once the input is known to be translatable
        warn(no_risk)

    # the sampling phases, each reported from 0 to 1 (clients weigh them equally)
    cycle = given is not None and given.reverse is not None
    tell({"event": "phases", "phases": ["local"] + ["cycle"] * cycle + ["baseline"] * with_baseline})
    tell({"event": "progress", "phase": "ood", "fraction": 0.0})
    bank = bank_map(ood_bank, prepared)  # the gate's reading: how far from the training scans
    for warning in gate_input(input_path, prepared, source, models_root, probability=bank.probability,
                              bank=ood_bank, force=options.force, robust_map=robust is not None):
        tell({"event": "warning", "message": warning})
    known = {"ood": bank.probability}
    ood = bank
    if robust is not None:  # the map the job writes and Local Diffusion branches on
        robust_map = robust.ood_map(ood_bank, prepared.images[source], prepared.brain, prepared.grid.affine)
        ood = robust_map.map
        if robust_map.unlocated:
            warn(f"the OOD map does not know where each voxel lies: {robust_map.unlocated}; it is the patch map "
                 f"alone, blind to lesions that look like normal tissue elsewhere")
        if robust_map.patch is not None:  # the risk calibrations read the patch map (detectors/given.py)
            known["ood_robust"] = robust_map.patch
        known["ood_located"] = ood.probability
    source_maps = given.source_maps(prepared, known) if given is not None else None  # still the OOD phase
    recorder = VolumeRecorder(prepared.grid.shape, calibration.last_k) if calibration is not None else None
    common = dict(seed=options.seed, batch_size=options.batch_size, progress=progress,
                  noise_sigma_z=options.noise_sigma_z, z_harmonise=options.z_harmonise)
    ld_config = LocalDiffusionConfig(mask_mode=options.mask_mode, ind_floor=options.ind_floor,
                                     independent_noise=options.independent_noise,
                                     t_intermediate=options.t_intermediate, max_rebranch=options.max_rebranch)
    plan = LocalDiffusionPlan(ood, ld_config, gate, brain_volume=prepared.brain)
    local = batch_sampler(options.sampler, options.steps, method=plan if local_on else None)
    phase = lambda name: (lambda done, total: tell({"event": "progress", "phase": name,  # noqa: E731
                                                     "fraction": done / max(total, 1)}))
    raw_local = []  # Local Diffusion's raw samples: the baseline copies its batches that never branched
    volumes = {"ood": ood.probability, "local": translate_prepared(denoiser, prepared, **common, recorder=recorder,
                                                                   sample_batch=local, on_batch=phase("local"),
                                                                   on_raw=raw_local.append)}
    risk_maps = None
    if recorder is not None:
        maps = given.maps(prepared, volumes["local"], source_maps, steps=options.steps, seed=options.seed,
                          batch_size=options.batch_size, on_batch=phase("cycle"))
        risk_maps = risk_volumes(calibration, recorder.volumes(maps), prepared.brain, prepared.voxel_ml)
        volumes["risk"] = risk_maps.risk
    if with_baseline:
        volumes["baseline"] = translate_prepared(denoiser, prepared, sampler=options.sampler, steps=options.steps,
                                                 **common, on_batch=phase("baseline"),
                                                 reuse=SampledSlices(raw_local[0], plan.plain_slices()))
    # where Local Diffusion branched (the hard mask; a soft plan's weight is the probability near it)
    branch_mask = plan.weight if options.mask_mode == "hard" else branch_weight_volume(
        ood, dataclasses.replace(ld_config, mask_mode="hard"), prepared.brain)
    on_input = {name: prepared.to_input_brain(volume) for name, volume in volumes.items()}
    on_input["ood_mask"] = (prepared.to_input_brain(branch_mask) >= 0.5).astype(np.uint8)
    regions = None
    if risk_maps is not None:  # the regions on the input's grid: their volumes and centres are the scanner's
        detectors = {name: prepared.to_input_brain(p) for name, p in risk_maps.probabilities.items()}
        on_input["risk_regions"], regions = find_regions(on_input["risk"], prepared.input_affine, detectors)
        for region in regions:  # a line each on stderr, an event each for clients
            log.warning("%s", region.line())
            tell({"event": "region", **dataclasses.asdict(region)})
    ordered = {name: on_input[name] for name in OUTPUTS if name in on_input}
    working = {**volumes, "brain": prepared.brain, **{f"detector_{name}": v for name, v in
                                                      (risk_maps.volumes.items() if risk_maps else ())}}
    provenance = {"version": __version__, "direction": options.direction, "sampler": options.sampler,
                  "steps": options.steps, "seed": options.seed, "models": str(models_root),
                  "translation": "local diffusion" if local_on else "plain sampler",
                  "options": {name: getattr(options, name) for name in JOB_OPTIONS},
                  "risk_calibration": calibration.definition if calibration is not None else None,
                  "warnings": warnings}
    return JobResult(ordered, prepared.input_affine, ood, warnings, options.steps, regions, working,
                     prepared.grid.affine, volume_stem(input_path), provenance)


def provenance_path(out_dir: str | Path, stem: str) -> Path:
    """The provenance sidecar of a job's outputs: ``<input stem>_localdiffusion.json`` beside them."""
    return Path(out_dir) / f"{stem}_localdiffusion.json"


def region_report_path(regions_path: str | Path) -> Path:
    """The JSON report beside a ``risk_regions`` label map: same stem, ``.json``."""
    return Path(regions_path).with_name(split_suffix(regions_path)[0] + ".json")


def write_outputs(result: JobResult, paths: dict[str, Path], protect=(), report: Report | None = None,
                  context: dict | None = None) -> dict[str, Path]:
    """Write a job's volumes all-or-nothing, each atomically; the writer every entry point shares. With the
    ``risk_regions`` label map goes its JSON report (:func:`region_report_path`, output name ``region_report``);
    with every job a provenance sidecar (:func:`provenance_path`, output name ``provenance``: version, model
    folder, direction, sampler, steps, seed, options, the risk calibration's definition, warnings, outputs); the
    NIfTI headers carry a one-line description.

    Args:
        result: from :func:`compute_job`.
        paths: output name -> file (its suffix picks the format); only these volumes are written.
        protect: files that must never be overwritten (the input).
        report: told ``{"event": "output", "name": ..., "path": ...}`` for each written file.
        context: what the region report records beside the regions (input, direction, ...).
    Returns:
        output name -> written path, in :data:`~localdiffusion.options.OUTPUTS` order.
    """
    outputs = {name: Path(paths[name]) for name in result.volumes if name in paths}
    reports = {}  # JSON beside the volumes: the region report, the provenance sidecar
    if "risk_regions" in outputs:
        reports["region_report"] = (region_report_path(outputs["risk_regions"]), result.region_report(**(context or {})))
    if outputs:
        reports["provenance"] = (provenance_path(next(iter(outputs.values())).parent, result.stem), {
            **result.provenance, **(context or {}), "outputs": {name: str(path) for name, path in outputs.items()}})
    with contextlib.ExitStack() as stack:  # the reports are renamed into place after every volume
        for path, payload in reports.values():
            write_report(stack.enter_context(atomic_path(path, protect=protect)), payload)
        save_volumes({outputs[name]: (result.volumes[name], result.affine) for name in outputs}, protect=protect,
                     description=result.description())
    outputs.update({name: path for name, (path, _) in reports.items()})
    for name, path in outputs.items():
        if report is not None:
            report({"event": "output", "name": name, "path": str(path)})
    return outputs


def run_job(input_path: str | Path, out_dir: str | Path, options: JobOptions | None = None,
            models_root: str | Path | None = None, progress: bool = True, report: Report | None = None
            ) -> dict[str, Path]:
    """The main job: check the outputs, :func:`compute_job`, then :func:`write_outputs`.

    Args:
        input_path, options, models_root, progress, report: as :func:`compute_job`.
        out_dir: where ``<input stem>_<output suffix><format suffix>`` files go.
    Returns:
        output name -> written path.
    """
    options = options or JobOptions()
    planned = output_paths(input_path, out_dir, options, OUTPUTS, uses_local_diffusion(options, models_root))
    check_out_dir(Path(out_dir))
    check_outputs([input_path], planned)
    result = compute_job(input_path, options, models_root, progress, report)
    return write_outputs(result, planned, protect=[input_path], report=report,
                         context={"input": str(input_path), "direction": options.direction})
