"""localdiffusion: hallucination-aware MRI contrast translation on MONAI."""

__version__ = "0.1.0"
