"""Run the MONAI model zoo's own bundle checks (``ci/verify_bundle.py``) on the standalone bundle, offline.

    python tools/zoo_checks.py --zoo <clone of Project-MONAI/model-zoo>
    python tools/zoo_checks.py --write-large-files   # refresh monai_bundle/large_files.yml

The standalone bundle (``tools/build_bundle.py``) is built into ``<tmp>/models/<name>`` (the zoo's
layout) with the zoo's published metadata schema placed where its CI puts it
(``eval/schema.json``, which ``ci/prepare_schema.py`` downloads from the URL in
``metadata.json``): ``tools/zoo/meta_schema_20240725.json``, the file served at
https://project-monai.github.io/schema/meta_schema_20240725.json, as stored in
Project-MONAI/project-monai.github.io at commit abfc0515409b160a9af8f5cef631dff45d503162
(``public/schema/``; copied there verbatim from the MONAI-extra-test-data 0.8.1 release that
``metadata.json`` names).

Two checks are excused, the two the zoo grants its own diffusion bundles: in
Project-MONAI/model-zoo at commit dfae206df112837d817e78d3727c9f32b3b52e82, ``ci/bundle_custom_data.py``
lists ``brats_mri_axial_slices_generative_diffusion`` and ``brats_mri_generative_diffusion`` in
``exclude_verify_shape_list`` and ``exclude_verify_torchscript_list`` (and neither in
``exclude_verify_preferred_files_list``, which names only ``pediatric_abdominal_ct_segmentation`` and
``maisi_ct_generative``). Why they apply here, in monai_bundle/docs/README.md ("Model zoo checks"):

* network input/output shape: the denoiser takes x_t, the condition and the timestep, not
  the single image ``verify_net_in_out`` feeds it;
* TorchScript export: the sampler loop and PatchCore (faiss) are Python, as in the zoo's
  diffusion bundles.

The preferred files are present: ``configs/inference.json`` and ``models/model.pt`` (the default
direction's denoiser, T1 -> FLAIR).
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # build_bundle beside this file
from build_bundle import BUNDLE, NAME, build  # noqa: E402

LARGE_FILE_BYTES = 1 << 20  # the zoo keeps files over 1 MB out of its repository
URL = "https://raw.githubusercontent.com/SlicerLocalDiffusion/SlicerLocalDiffusion/main/monai_bundle/"


def large_files() -> list[Path]:
    return sorted(p.relative_to(BUNDLE) for p in BUNDLE.rglob("*") if p.is_file()
                  and p.stat().st_size > LARGE_FILE_BYTES and "eval" not in p.parts)


def large_files_yaml() -> str:
    lines = ["# files over 1 MB (the model zoo keeps them out of its repository); written by",
             "# tools/zoo_checks.py --write-large-files, checked by tests/test_bundle_zoo.py", "large_files:"]
    for rel in large_files():
        md5 = hashlib.md5((BUNDLE / rel).read_bytes()).hexdigest()
        lines += [f'  - path: "{rel.as_posix()}"', f'    url: "{URL}{rel.as_posix()}"', f'    hash_val: "{md5}"',
                  '    hash_type: "md5"']
    return "\n".join(lines) + "\n"


#: the zoo's published metadata schema (module docstring)
SCHEMA = Path(__file__).resolve().parent / "zoo" / "meta_schema_20240725.json"
#: the checks the zoo excuses for its own diffusion bundles (module docstring)
EXCUSED = ("exclude_verify_shape_list", "exclude_verify_torchscript_list")


def run_zoo_checks(zoo: Path) -> None:
    sys.path.insert(0, str(zoo / "ci"))
    import bundle_custom_data
    import verify_bundle

    for excused in EXCUSED:
        getattr(bundle_custom_data, excused).append(NAME)
        getattr(verify_bundle, excused).append(NAME)
    with tempfile.TemporaryDirectory() as tmp:
        models = Path(tmp) / "models"
        target = build(models)
        shutil.copy(zoo / "models" / "model_info.json", models / "model_info.json")
        (target / "eval").mkdir()
        shutil.copy(SCHEMA, target / "eval" / "schema.json")
        verify_bundle.verify(NAME, str(models), mode="full")
    print(f"model zoo checks passed for {NAME} (excused as for the zoo's diffusion bundles: shape, TorchScript)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zoo", type=Path, help="a clone of Project-MONAI/model-zoo")
    parser.add_argument("--write-large-files", action="store_true")
    args = parser.parse_args()
    if args.write_large_files:
        (BUNDLE / "large_files.yml").write_text(large_files_yaml())
        print(f"wrote {BUNDLE / 'large_files.yml'}: {len(large_files())} files")
    if args.zoo:
        run_zoo_checks(args.zoo)
    return 0


if __name__ == "__main__":
    sys.exit(main())
