"""PatchCore OOD detection: features, memory bank, anomaly maps, calibration, volumes."""
