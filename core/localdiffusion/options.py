"""One table of user options: default, range or choices, and help for every parameter a user sets.

The CLI (:mod:`localdiffusion.cli`), the main job's :class:`~localdiffusion.jobs.run.JobOptions`
and the MONAI Label parameter validation (:mod:`localdiffusion.serving.tasks`) are built from
:data:`OPTIONS`; a test checks that the Slicer module's parameter node and ``.ui`` agree with
it (Slicer may run without this package, against a server, so it cannot import it).
The facts that several layers name live here too: the translation directions, the
contrasts, and the main job's outputs and their file-name suffixes. Sampler names come
from the update-rule registry (:data:`~localdiffusion.engine.updates.UPDATE_RULES`).
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from typing import Any, Iterable

from localdiffusion.engine.updates import UPDATE_RULES
from localdiffusion.errors import InputError

#: direction name -> (source contrast, target contrast)
DIRECTIONS = {"t1_to_flair": ("t1", "flair"), "flair_to_t1": ("flair", "t1")}
#: contrasts the readers know (OOD banks can be built for any of them)
MODALITIES = ("t1", "t1ce", "t2", "flair")
#: outputs of the main job, in the order a client lists them
OUTPUTS = ("local", "baseline", "ood", "ood_mask", "risk", "risk_regions")
#: outputs a client may ask for beside the Local Diffusion translation
EXTRA_OUTPUTS = OUTPUTS[1:]
DEVICES = ("auto", "cpu", "cuda")
#: every shipped probability map (OOD, hallucination risk) is calibrated to flag this fraction of
#: healthy validation voxels at the level 1 - HEALTHY_FPR; displays threshold it there
HEALTHY_FPR = 0.01
FLAG_THRESHOLD = 1.0 - HEALTHY_FPR
#: output file formats ("input": the input's own, NIfTI for a DICOM series); suffixes in data/formats.py
OUTPUT_FORMATS = ("input", "nifti", "nrrd", "metaimage", "mgz")


def reverse_direction(direction: str) -> str:
    """The direction that undoes ``direction`` (its model back-translates for the cycle residual)."""
    source, target = DIRECTIONS[direction]
    return next(name for name, pair in DIRECTIONS.items() if pair == (target, source))


def output_suffix(name: str, direction: str, local_diffusion: bool = True) -> str:
    """File-name suffix of the main job's output ``name``: ``<input stem>_<suffix>.<format suffix>``; the
    translation (``local``) is ``<target>_local_diffusion`` when Local Diffusion made it, else ``<target>``."""
    target = DIRECTIONS[direction][1]
    translation = f"{target}_local_diffusion" if local_diffusion else target
    return {"ood": "ood_probability", "ood_mask": "ood_mask", "local": translation,
            "baseline": f"{target}_baseline", "risk": "hallucination_risk", "risk_regions": "risk_regions"}[name]


#: the outputs written only with a risk calibration for the sampler and step count
RISK_OUTPUTS = ("risk", "risk_regions")


@dataclass(frozen=True)
class Option:
    """A user parameter. A boolean becomes ``--x`` / ``--no-x`` on the command line, or only
    ``flag`` when one is given (it stores the opposite of the default, e.g. ``--force``)."""

    name: str
    type: type
    default: Any
    help: str
    choices: tuple | None = None
    low: float | None = None
    high: float | None = None
    flag: str | None = None

    @property
    def cli_flag(self) -> str:
        return self.flag or "--" + self.name.replace("_", "-")

    def check(self, value: Any) -> Any:
        """``value`` converted to the option's type; :class:`InputError` naming the option if it is not valid."""
        if value is None:
            return self.default
        try:
            if self.type is bool:
                if isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
                    value = value.lower() in ("true", "1")
                elif not isinstance(value, (bool, int)):
                    raise TypeError
                converted = bool(value)
            elif self.type is int:
                if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                    raise TypeError
                converted = int(value)
            else:
                converted = self.type(value)
        except (TypeError, ValueError, OverflowError):
            raise InputError(f"parameter {self.name!r} must be {self.type.__name__}, got {value!r}") from None
        if self.type is float and not math.isfinite(converted):
            raise InputError(f"parameter {self.name!r} must be a finite number, got {value!r}")
        if self.choices is not None and converted not in self.choices:
            raise InputError(f"parameter {self.name!r} must be one of {list(self.choices)}, got {converted!r}")
        if (self.low is not None and converted < self.low) or (self.high is not None and converted > self.high):
            raise InputError(f"parameter {self.name!r} must be between {self.low} and {self.high}, got {converted}")
        return converted

    def add_to(self, parser: argparse.ArgumentParser) -> None:
        if self.type is bool:
            if self.flag:
                action = "store_false" if self.default else "store_true"
                parser.add_argument(self.flag, dest=self.name, action=action, help=self.help)
            else:
                parser.add_argument(self.cli_flag, dest=self.name, action=argparse.BooleanOptionalAction,
                                    default=self.default, help=f"{self.help} (default: {'on' if self.default else 'off'})")
            return
        parser.add_argument(self.cli_flag, dest=self.name, type=self.type, default=self.default,
                            choices=self.choices, help=self._help())

    def _help(self) -> str:
        bounds = ""
        if self.low is not None or self.high is not None:
            bounds = f", {self.low if self.low is not None else '-inf'} to {self.high if self.high is not None else 'inf'}"
        return f"{self.help} (default {self.default}{bounds})"


_TABLE = [
    Option("direction", str, "t1_to_flair", "translation direction", choices=tuple(DIRECTIONS)),
    Option("sampler", str, "ddim", "reverse-process update rule", choices=tuple(UPDATE_RULES)),
    Option("steps", int, 0, "reverse-process steps of every pass; 0 = the model's validated count (its config.json: "
           "the fewest steps no worse than 25 on validation); at most the model's training timesteps, 100 for the "
           "shipped models; the risk map needs a step count it is calibrated for", low=0, high=1000),
    Option("seed", int, 0, "random seed (slice k uses seed * 1000003 + k)", low=0, high=2**31 - 1),
    Option("noise_sigma_z", float, -1.0, "slice-correlated noise: each slice's noise mixes its neighbours' with "
           "Gaussian weights of this sigma (in slices); 0 = independent slices, -1 = the model's validated value "
           "(its config.json)", low=-1.0, high=16.0),
    Option("z_harmonise", float, -1.0, "banding filter: the translation's coarse in-plane image (32 mm) is smoothed "
           "along z with this sigma (in slices), detail is kept; 0 = off, -1 = the model's validated value (its "
           "config.json)", low=-1.0, high=16.0),
    Option("batch_size", int, 0, "slices per network call; 0 = automatic (8 on the CPU, from the free memory on "
           "a GPU)", low=0, high=4096),
    Option("local_diffusion", str, "model", "the translation: Local Diffusion (on), the plain sampler (off), or "
           "model = the direction's validated choice (its config.json: on only where Local Diffusion was no worse "
           "than the plain translation on validation, research/hallucination)", choices=("model", "on", "off")),
    Option("t_intermediate", int, -1, "Local Diffusion fusion timestep in training-timestep units (the steps after it "
           "see the whole condition); 0 = fuse at the last step, -1 = the model's validated value (its config.json)",
           low=-1, high=100_000),
    Option("mask_mode", str, "hard", "Local Diffusion branching mask: hard (thresholded) or soft (probability)",
           choices=("hard", "soft")),
    Option("ind_floor", float, 0.95, "the in-distribution branch keeps max(1 - w, floor) of the condition "
           "(paper 0, reference code 0.95)", low=0.0, high=1.0),
    Option("independent_noise", bool, False, "draw each Local Diffusion branch's noise separately (default: both "
           "branches share x_T and every step's noise, as the reference code does)", flag="--independent-noise"),
    Option("max_rebranch", int, 2, "how often the gate may send a slice back to branching", low=0, high=1000),
    Option("gate", bool, False, "Local Diffusion's classifier gate (a target-modality PatchCore that can send a "
           "slice back to branching; off by default: on validation it only delayed fusion, research/RECORD.md 4a)"),
    Option("robust_ood", bool, False, "the acquisition-robust OOD map (per-volume self-calibration; T1 "
           "intensity-standardised, FLAIR bias-corrected first; <bank>_robust.json) instead of the bank's own "
           "calibration, for scans from another scanner (the main job always writes and branches on this map, "
           "ood/robust.py)",
           flag="--robust"),
    Option("baseline", bool, True, "the baseline translation beside Local Diffusion's"),
    Option("risk_map", bool, True, "the hallucination-risk map (needs the model's risk_calibration.json and its "
           "DDIM step count; the shipped maps read the source contrast's lesion U-Net, one pass over the slices; a "
           "calibration with the cycle residual costs one more translation)"),
    Option("device", str, "auto", "where the networks run", choices=DEVICES),
    Option("threads", int, 0, "CPU threads for the networks; 0 = the cores this process may use, divided among the "
           "torchrun ranks on this machine", low=0, high=4096),
    Option("force", bool, False, "translate even an input the input gate refuses (wrong contrast, not a brain "
           "scan like the training data); it is then translated with a warning", flag="--force"),
    Option("output_format", str, "input", "output file format: the input's own (NIfTI for a DICOM series), nifti, "
           "nrrd, metaimage (.mha) or mgz", choices=OUTPUT_FORMATS),
]
#: name -> :class:`Option`
OPTIONS: dict[str, Option] = {o.name: o for o in _TABLE}
#: the main job's user options, in the order of :class:`~localdiffusion.jobs.run.JobOptions`' fields
RUN_OPTIONS = ("direction", "sampler", "steps", "seed", "noise_sigma_z", "z_harmonise", "batch_size", "local_diffusion",
               "t_intermediate",
               "mask_mode", "ind_floor", "independent_noise", "max_rebranch", "gate", "baseline", "device", "force",
               "output_format", "risk_map")


def default(name: str) -> Any:
    return OPTIONS[name].default


def add_options(parser: argparse.ArgumentParser, names: Iterable[str]) -> None:
    """Add the CLI flags of ``names`` (in the table's wording) to ``parser``."""
    for name in names:
        OPTIONS[name].add_to(parser)


def check_values(**values: Any) -> None:
    """Check keyword values against their rows of the table (:class:`InputError` for the first bad one)."""
    for name, value in values.items():
        OPTIONS[name].check(value)


def parse_params(params: dict, names: Iterable[str]) -> dict[str, Any]:
    """Validate a client's parameters (MONAI Label ``params``) against the table:
    every one of ``names`` is converted or set to its default; unknown keys are left alone."""
    if not isinstance(params, dict):
        raise InputError(f"parameters must be a JSON object, got {type(params).__name__}")
    return {name: OPTIONS[name].check(params.get(name)) for name in names}
