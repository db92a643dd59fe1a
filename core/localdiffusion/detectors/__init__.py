"""Hallucination detectors as a named set of per-voxel maps, and the calibrated risk map that combines them."""

from localdiffusion.detectors import cycle, given  # register the cycle residual and the robust OOD detectors

__all__ = ["cycle", "given"]
