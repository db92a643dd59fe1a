"""localdiffusion: hallucination-aware MRI contrast translation on MONAI."""

__version__ = "0.27.0"  # one version for the package, the bundle (configs/metadata.json) and the MONAI Label app
