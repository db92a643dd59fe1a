"""The gross-error event a risk map is validated against (:data:`~localdiffusion.detectors.risk.GROSS_ERROR`)."""

from __future__ import annotations

import numpy as np
from scipy.ndimage import uniform_filter

from localdiffusion.detectors.risk import GROSS_ERROR


def neighbourhood_error(translation: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """The event's quantity: ``|translation - truth|`` averaged over the :data:`GROSS_ERROR` cube.

    Args:
        translation, truth: volumes of one shape, on one intensity scale.
    Returns:
        float32 volume of that shape.
    """
    error = np.abs(translation.astype(np.float32) - truth.astype(np.float32))
    return uniform_filter(error, size=GROSS_ERROR["neighbourhood"], mode="constant")
