"""Non-GUI helpers of the SlicerLocalDiffusion module (usable without Qt)."""

from .jobs import (LocalTranslation, ServerTranslation, TranslationJob, TranslationRequest, run_translation,
                   start_translation)
from .nodes import OUTPUTS, nifti_to_node, node_to_nifti, remove_nodes
from .views import OVERLAY_OPACITY, OVERLAY_THRESHOLD, show_side_by_side, style_overlay

__all__ = ["OUTPUTS", "OVERLAY_OPACITY", "OVERLAY_THRESHOLD", "LocalTranslation", "ServerTranslation",
           "TranslationJob", "TranslationRequest", "nifti_to_node", "node_to_nifti", "remove_nodes", "run_translation",
           "show_side_by_side", "start_translation", "style_overlay"]
