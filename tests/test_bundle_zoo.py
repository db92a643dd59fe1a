"""What the MONAI model zoo's CI checks (tools/zoo_checks.py runs the zoo's own script
when a clone is at hand), checked here with MONAI's API so that CI needs no network."""

import hashlib
import importlib.metadata
import importlib.util
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "monai_bundle"
CONFIGS = BUNDLE / "configs"


def _zoo_checks():
    spec = importlib.util.spec_from_file_location("zoo_checks", ROOT / "tools" / "zoo_checks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_necessary_files_and_a_changelog_entry_for_the_version():
    assert (BUNDLE / "LICENSE").is_file() and (CONFIGS / "inference.json").is_file()
    metadata = json.loads((CONFIGS / "metadata.json").read_text())
    assert metadata["version"] in metadata["changelog"]


def test_large_files_lists_every_file_over_1_mb_with_its_md5():
    import yaml

    zoo = _zoo_checks()
    assert (BUNDLE / "large_files.yml").read_text() == zoo.large_files_yaml(), \
        "stale: python tools/zoo_checks.py --write-large-files"
    entries = yaml.safe_load((BUNDLE / "large_files.yml").read_text())["large_files"]
    big = {p.relative_to(BUNDLE).as_posix() for p in BUNDLE.rglob("*") if p.is_file()
           and p.stat().st_size > 1 << 20 and "eval" not in p.parts}
    assert {e["path"] for e in entries} == big and len(big) >= 4
    for entry in entries:
        assert hashlib.md5((BUNDLE / entry["path"]).read_bytes()).hexdigest() == entry["hash_val"]


def test_required_packages_are_installable_at_the_named_versions():
    """The zoo's CI pip-installs required_packages_version: every entry must be a real
    distribution at that version (here: the one this environment installed from its index)."""
    metadata = json.loads((CONFIGS / "metadata.json").read_text())
    assert "localdiffusion" not in metadata["required_packages_version"]  # not on the package index
    for name, version in metadata["required_packages_version"].items():
        assert importlib.metadata.version(name) == version, name


def test_eval_metrics_hold_numbers_and_the_docs_a_performance_table():
    metadata = json.loads((CONFIGS / "metadata.json").read_text())
    numbers = {k: v for k, v in metadata["eval_metrics"].items() if isinstance(v, (int, float))}
    assert len(numbers) >= 6 and all(0 <= v < 100 for v in numbers.values())
    docs = (BUNDLE / "docs" / "README.md").read_text()
    performance = docs.split("## Performance", 1)[1].split("\n## ", 1)[0]
    assert str(numbers["t1_to_flair_healthy_test_psnr_db"]) in performance
    assert "not yet" not in (BUNDLE / "README.md").read_text().lower()


@pytest.mark.parametrize("workflow_type, config", [("train", "train.json"), ("inference", "inference.json")])
def test_configs_have_the_properties_monai_requires(workflow_type, config, tmp_path, monkeypatch):
    import numpy as np
    from monai.bundle import create_workflow

    from localdiffusion.data.io import save_volume

    volume = save_volume(tmp_path / "case_t1.nii.gz", np.ones((8, 8, 8), np.float32), np.eye(4))
    monkeypatch.syspath_prepend(str(BUNDLE))  # the bundle's scripts/, as the zoo's verify_bundle.py and `run` add it
    overrides = {"input": str(volume)} if workflow_type == "inference" else {}
    workflow = create_workflow(workflow_type=workflow_type, config_file=str(CONFIGS / config),
                               meta_file=str(CONFIGS / "metadata.json"), logging_file=str(CONFIGS / "logging.conf"),
                               **overrides)
    assert not workflow.check_properties()


def test_extension_screenshot_and_icon_urls_name_files_of_this_repository():
    cmake = (ROOT / "CMakeLists.txt").read_text()
    urls = re.findall(r"https://raw\.githubusercontent\.com/[^/]+/[^/]+/main/([^\"\s]+)", cmake)
    assert len(urls) >= 2 and all((ROOT / path).is_file() for path in urls), urls
