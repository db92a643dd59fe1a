"""Volumes as slices: the working grid (normalised, resampled, exact way back), brain crops, and batching a volume's slices through a sampler."""
