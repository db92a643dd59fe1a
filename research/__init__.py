"""The research record: studies that measure the ``localdiffusion`` product.

This package imports the product and is never imported by it. ``research.bench`` holds the
shared measurement code (the hallucination benchmark's matrix, scoring, figures and report);
every other folder is one study with its scripts and a README giving its question, command and
current answer. Run a study from the repository root, e.g. ``python -m research.hallucination``.
"""
