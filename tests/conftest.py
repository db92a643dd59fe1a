"""Shared fixtures: a tiny phantom cohort generated once per test session."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(scope="session")
def tumour_case():
    from localdiffusion.phantom.generate import generate_case

    return generate_case(200_000_123, tumour=True, spacing=2.0)


@pytest.fixture(scope="session")
def healthy_case():
    from localdiffusion.phantom.generate import generate_case

    return generate_case(200_000_007, tumour=False, spacing=2.0)


@pytest.fixture(scope="session")
def cohort(tmp_path_factory):
    """4 mm cohort: 3 healthy + 3 tumour cases (one per split each)."""
    from localdiffusion.phantom.dataset import write_cohort

    root = tmp_path_factory.mktemp("cohort")
    write_cohort(root, 3, 3, seed=7, spacing=4.0, preview=True)
    return root
