"""Volumes as slices: the working grid (normalised, resampled, exact way back), cohort splits and slice sets on it, and batching a volume's slices through a sampler."""
