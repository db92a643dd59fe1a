"""MR signal equations and literature tissue parameters at 3 T.

Parameters and sources are documented in ``docs/phantom.md``. They are fixed from the
literature; per case only the lesion tissues are drawn inside their published ranges and
the sequence timings inside clinical protocol ranges. Never tune them to favour a method.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class Tissue:
    """Relaxation times (ms) and proton density (relative to water = 1)."""

    t1: float
    t2: float
    pd: float


#: Healthy tissues: literature consensus values at 3 T (docs/phantom.md).
HEALTHY_TISSUES = {
    "wm": Tissue(970.0, 73.0, 0.65),
    "gm": Tissue(1500.0, 88.0, 0.78),
    "csf": Tissue(4470.0, 2030.0, 0.97),
}

#: Lesion tissues: (low, high) ranges for (T1, T2, PD); a case draws one value per range.
LESION_TISSUE_RANGES = {
    "oedema": ((1300.0, 1700.0), (120.0, 180.0), (0.80, 0.88)),
    "enhancing": ((1700.0, 2000.0), (110.0, 170.0), (0.80, 0.85)),
    "necrosis": ((2500.0, 3500.0), (200.0, 500.0), (0.85, 0.95)),
}

TISSUE_ORDER = ("wm", "gm", "csf", "oedema", "enhancing", "necrosis")


def draw_tissues(rng: np.random.Generator) -> dict[str, Tissue]:
    """Healthy tissues fixed; lesion tissues drawn uniformly inside their ranges."""
    tissues = dict(HEALTHY_TISSUES)
    for name, ranges in LESION_TISSUE_RANGES.items():
        tissues[name] = Tissue(*(float(rng.uniform(lo, hi)) for lo, hi in ranges))
    return tissues


def spin_echo(t: Tissue, tr: float, te: float) -> float:
    """Spin echo: ``S = PD (1 - exp(-TR/T1)) exp(-TE/T2)``."""
    return t.pd * (1.0 - math.exp(-tr / t.t1)) * math.exp(-te / t.t2)


def inversion_recovery(t: Tissue, tr: float, ti: float, te: float) -> float:
    """Magnitude inversion recovery: ``S = PD |1 - 2 exp(-TI/T1) + exp(-TR/T1)| exp(-TE/T2)``."""
    return t.pd * abs(1.0 - 2.0 * math.exp(-ti / t.t1) + math.exp(-tr / t.t1)) * math.exp(-te / t.t2)


def csf_null_inversion_time(tr: float, t1_csf: float = HEALTHY_TISSUES["csf"].t1) -> float:
    """TI that nulls CSF: ``TI = T1_csf ln(2 / (1 + exp(-TR/T1_csf)))``."""
    return t1_csf * math.log(2.0 / (1.0 + math.exp(-tr / t1_csf)))


@dataclass(frozen=True)
class Sequence:
    """One acquisition: kind is ``spin_echo`` or ``inversion_recovery``; times in ms."""

    kind: str
    tr: float
    te: float
    ti: float = 0.0

    def signal(self, tissue: Tissue) -> float:
        if self.kind == "spin_echo":
            return spin_echo(tissue, self.tr, self.te)
        if self.kind == "inversion_recovery":
            return inversion_recovery(tissue, self.tr, self.ti, self.te)
        raise ValueError(f"unknown sequence kind {self.kind!r}")

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Acquisition:
    """The scanner settings a subject's protocol is drawn from. The default is the training
    distribution; :data:`ACQUISITION_SHIFTS` lists the shifted test variants: a
    spin-echo T1 (BraTS mixes 3D gradient-echo and 2D spin-echo native T1), MPRAGE timings
    outside the training ranges, a stronger receive-coil bias, lower and higher SNR."""

    t1_sequence: str = "mprage"
    mprage_tr: tuple[float, float] = (1900.0, 2300.0)
    mprage_ti: tuple[float, float] = (850.0, 1100.0)
    mprage_te: tuple[float, float] = (2.0, 4.0)
    coil_bias: float = 0.08  # strength of the shared receive-coil field (subject.bias_field)
    snr: tuple[float, float] = (15.0, 40.0)

    def __post_init__(self):
        if self.t1_sequence not in ("mprage", "spin_echo"):
            raise ValueError(f"unknown T1 sequence {self.t1_sequence!r}; expected 'mprage' or 'spin_echo'")


#: name -> acquisition of a shifted test variant ("training": the distribution of the training data)
ACQUISITION_SHIFTS: dict[str, Acquisition] = {
    "training": Acquisition(),
    "spin_echo": Acquisition(t1_sequence="spin_echo"),
    "long_ti": Acquisition(mprage_tr=(2600.0, 3000.0), mprage_ti=(1250.0, 1450.0), mprage_te=(4.5, 6.0)),
    "strong_bias": Acquisition(coil_bias=0.25),
    "low_snr": Acquisition(snr=(6.0, 10.0)),
    "high_snr": Acquisition(snr=(80.0, 120.0)),
}


def draw_protocol(rng: np.random.Generator, acquisition: "Acquisition | str" = "mprage") -> dict[str, Sequence]:
    """Sequence timings jittered inside clinical 3 T ranges (docs/phantom.md).

    ``acquisition.t1_sequence`` (or a sequence name): ``mprage`` (default, 3D inversion-prepared
    gradient echo as in BraTS 2021; closed-form IR signal with gradient-echo TE, readout-train
    saturation ignored) or ``spin_echo`` (2D SE T1).
    """
    acq = Acquisition(t1_sequence=acquisition) if isinstance(acquisition, str) else acquisition
    if acq.t1_sequence == "mprage":
        t1 = Sequence("inversion_recovery", tr=float(rng.uniform(*acq.mprage_tr)),
                      te=float(rng.uniform(*acq.mprage_te)), ti=float(rng.uniform(*acq.mprage_ti)))
    else:
        t1 = Sequence("spin_echo", tr=float(rng.uniform(400, 600)), te=float(rng.uniform(8, 15)))
    flair_tr = float(rng.uniform(8000, 11000))
    flair = Sequence("inversion_recovery", tr=flair_tr, te=float(rng.uniform(100, 140)),
                     ti=csf_null_inversion_time(flair_tr))
    t2 = Sequence("spin_echo", tr=float(rng.uniform(4000, 6000)), te=float(rng.uniform(80, 110)))
    return {"t1": t1, "flair": flair, "t2": t2}


def tissue_signals(sequence: Sequence, tissues: dict[str, Tissue]) -> np.ndarray:
    """Signal of every tissue in :data:`TISSUE_ORDER` for one sequence, shape (6,)."""
    return np.array([sequence.signal(tissues[name]) for name in TISSUE_ORDER], dtype=np.float32)
