"""Hallucination detectors as a named set of per-voxel maps, and the calibrated risk map that combines them."""
