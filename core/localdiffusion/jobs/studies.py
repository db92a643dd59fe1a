"""A MONAI Label studies folder from a cohort in BraTS layout.

MONAI Label's local datastore lists only the image files directly inside its studies folder; a
cohort in BraTS layout (one folder per case, as ``localdiffusion phantom`` writes it) gives an empty
datastore. :func:`flat_studies` puts each case's T1 and FLAIR side by side in one folder, under their
own file names (the image id is the name without its suffix), and, when asked, the case's tumour labels
as each image's final label (``labels/final/<image file name>``, where MONAI Label looks for them; an
image with a final label counts as done, so the stock plugin's "Next Sample" skips it).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from localdiffusion.data.readers import label_file, list_cases, source_file
from localdiffusion.errors import InputError

#: the contrasts the product translates, each one datastore image per case
CONTRASTS = ("t1", "flair")
LABEL_FOLDER = Path("labels") / "final"


def _place(source: Path, target: Path) -> None:
    """Hard-link (else copy) ``source`` to ``target``; nothing to do when ``target`` already holds the same bytes,
    :class:`InputError` when it holds something else (nothing is overwritten)."""
    if target.exists():
        if target.stat().st_size == source.stat().st_size and target.read_bytes() == source.read_bytes():
            return
        raise InputError(f"{target}: exists and differs from {source}; choose an empty --out folder")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial")
    try:
        os.link(source, partial)
    except OSError:  # another file system, or links not allowed: a copy
        shutil.copyfile(source, partial)
    os.replace(partial, target)


def flat_studies(data: str | Path, out: str | Path, labels: bool = False) -> list[str]:
    """Fill ``out`` with the T1 and FLAIR of every BraTS-layout case under ``data`` (and, with ``labels``,
    their tumour labels).

    Args:
        data: a cohort folder with one folder per case (BraTS 2020/2021 or 2023 naming).
        out: the studies folder to give ``monailabel start_server --studies``; created if needed. The
            source files are linked or copied, never moved or changed.
    Returns:
        the datastore image ids, sorted.
    """
    data, out = Path(data), Path(out)
    if (data / "imagesTr").is_dir():
        raise InputError(f"{data}: a Medical Segmentation Decathlon folder holds every contrast in one 4D file; "
                         f"give a folder with one folder per case (BraTS layout)")
    cases = list_cases(data)  # case folders (an MSD folder was refused above)
    if not cases:
        raise InputError(f"{data}: no case folders in BraTS layout (CASE/CASE_t1.nii.gz or CASE/CASE-t1n.nii.gz)")
    if out.resolve() == data.resolve():
        raise InputError(f"{out}: the studies folder must not be the cohort folder itself")
    ids = []
    for case in cases:
        seg = label_file(case)
        for contrast in CONTRASTS:
            image = source_file(case, contrast)
            if not image.is_file():
                continue  # a case without this contrast: nothing to list
            _place(image, out / image.name)
            if labels and seg is not None:
                _place(seg, out / LABEL_FOLDER / image.name)
            ids.append(image.name.split(".nii")[0])
    if not ids:
        raise InputError(f"{data}: no T1 or FLAIR files in its {len(cases)} case folders")
    return sorted(ids)


def nested_cases_warning(studies: str | Path) -> str | None:
    """A warning when ``studies`` holds case folders but no image directly inside it (MONAI Label would
    show an empty datastore); None otherwise."""
    studies = Path(studies)
    if not studies.is_dir() or any(p.name.endswith((".nii", ".nii.gz")) for p in studies.iterdir() if p.is_file()):
        return None
    try:
        cases = list_cases(studies)
    except InputError:
        return None
    if not cases:
        return None
    return (f"{studies}: holds {len(cases)} case folders but no image directly inside it; MONAI Label lists only "
            f"the files in the studies folder itself, so the datastore is empty. Make a flat studies folder with "
            f"`localdiffusion studies --data {studies} --out <folder>` and start the server on that")
