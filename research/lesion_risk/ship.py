"""Write the shipped risk calibration from ``calibrate-risk``'s fit, keeping the previous file's RODS settings
(their ``eps`` is a property of the model's healthy trajectories, not of the risk's combination; refitting it
on the lesion families would need RODS's autograd curvature on every healthy case)::

    python -m research.lesion_risk.ship --fit data/risk_new_t1_to_flair.json \
        --previous data/risk_015/t1_to_flair.json --out monai_bundle/models/t1_to_flair/risk_calibration.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from localdiffusion.detectors.risk import RiskCalibration


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m research.lesion_risk.ship", description=__doc__.splitlines()[0])
    p.add_argument("--fit", type=Path, required=True)
    p.add_argument("--previous", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    fit, previous = RiskCalibration.load(args.fit), RiskCalibration.load(args.previous)
    if previous.rods is not None and fit.rods is None:
        if previous.steps != fit.steps:
            raise SystemExit(f"the previous RODS eps is for DDIM-{previous.steps}, the fit for DDIM-{fit.steps}")
        fit.rods = previous.rods
        fit.definition = {**fit.definition, "rods": "RODS settings and eps kept from the previous calibration "
                                                    "(fitted on the phantom's healthy validation cases)"}
    fit.save(args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
