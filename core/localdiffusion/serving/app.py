"""The MONAI Label app: the five tasks of :mod:`localdiffusion.serving.tasks`, no training."""

from __future__ import annotations

import logging
from pathlib import Path

from monailabel.interfaces.app import MONAILabelApp

from localdiffusion import __version__
from localdiffusion.jobs.studies import nested_cases_warning
from localdiffusion.serving.tasks import (LocalDiffusionTask, OodMapTask, OodSegmentationTask, RiskSegmentationTask,
                                         TumourSegmentationTask)
from localdiffusion.shipped import MODELS_ROOT


class LocalDiffusionLabelApp(MONAILabelApp):
    """``--conf models_root DIR`` selects the models folder (default: the shipped bundle models)."""

    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]):
        self.models_root = Path((conf or {}).get("models_root") or MODELS_ROOT)
        nested = nested_cases_warning(studies)
        if nested:  # MONAI Label's datastore would be empty without a word
            logging.getLogger("localdiffusion").warning("warning: %s", nested)
        super().__init__(app_dir=app_dir, studies=studies, conf=conf, name="SlicerLocalDiffusion",
                         description="Hallucination-aware T1 <-> FLAIR translation, OOD maps and tumour segmentation "
                                     "(research use only, not for diagnosis)", version=__version__)

    def init_infers(self):
        return {"local_diffusion": LocalDiffusionTask(self.models_root), "ood_map": OodMapTask(self.models_root),
                "ood_segmentation": OodSegmentationTask(self.models_root),
                "tumour_segmentation": TumourSegmentationTask(self.models_root),
                "risk_segmentation": RiskSegmentationTask(self.models_root)}

    def init_trainers(self):
        return {}
