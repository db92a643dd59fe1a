"""Hallucination detectors as a named set of per-voxel maps, and the calibrated risk map that combines them."""

from localdiffusion.detectors import cycle  # registers the cycle residual detector

__all__ = ["cycle"]
