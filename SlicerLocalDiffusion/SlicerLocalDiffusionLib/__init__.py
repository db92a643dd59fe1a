"""Non-GUI helpers of the SlicerLocalDiffusion module (usable without Qt)."""

from .logic import (OUTPUTS, BackgroundTranslation, TranslationRequest, nifti_to_node, node_to_nifti,
                    run_translation)

__all__ = ["OUTPUTS", "BackgroundTranslation", "TranslationRequest", "nifti_to_node", "node_to_nifti",
           "run_translation"]
