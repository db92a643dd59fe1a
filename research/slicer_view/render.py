"""What the Slicer module shows after a translation, drawn by Slicer's own slice-view code, in three planes::

    python -m research.slicer_view.render --input outputs/demo/phantom/ld0_test_t0000/ld0_test_t0000_t1.nii.gz \
        --out outputs/slicer_view.png

The module's own path on a scene like the one Slicer starts with (slicer-core): the input volume node, the
background ``localdiffusion run`` job the panel starts, its outputs loaded as nodes (translations, risk map,
flagged regions as an outlined segmentation with its table) and shown side by side with the panel's defaults.
The Red and Yellow views are then drawn offscreen by Slicer's slice logic and displayable managers
(``tests/slicer_scene.py``), axial, sagittal and coronal through the centre of the largest flagged region:
row 1 as the panel shows them (the risk overlay at its default opacity), rows 2 and 3 with the overlay's opacity
at 0 (the translations under the region outlines).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "SlicerLocalDiffusion"), str(ROOT / "tests")]

ORIENTATIONS = ("Axial", "Sagittal", "Coronal")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m research.slicer_view.render", description=__doc__.splitlines()[0])
    p.add_argument("--input", type=Path, required=True, help="the source volume (NIfTI)")
    p.add_argument("--direction", default="t1_to_flair", choices=["t1_to_flair", "flair_to_t1"])
    p.add_argument("--models", default="", help="models folder (default: the shipped models)")
    p.add_argument("--force", action="store_true", help="translate a volume the input check refuses (Translate anyway)")
    p.add_argument("--size", type=int, default=512, help="pixels per view side")
    p.add_argument("--out", type=Path, required=True, help="the figure (PNG)")
    args = p.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from slicer_scene import SliceViews, slicer_like_scene
    from SlicerLocalDiffusionLib import (OVERLAY_OPACITY, OVERLAY_THRESHOLD, TranslationRequest, nifti_to_node,
                                        show_side_by_side, start_translation, style_overlay)

    scene = slicer_like_scene(colours=True)
    views = SliceViews(scene, size=args.size)  # made before any data, as Slicer's views are
    source = nifti_to_node(args.input, scene, args.input.name.split(".")[0])
    job = start_translation(source, TranslationRequest(direction=args.direction, models=args.models, force=args.force))
    while (status := job.poll()) == "running":
        print(f"\rtranslating: {job.progress:.0%}", end="", file=sys.stderr, flush=True)
        time.sleep(1.0)
    print(file=sys.stderr)
    if status != "done":
        print(f"error: the translation failed: {job.error_message()}", file=sys.stderr)
        return 1
    nodes = job.load_results(scene)
    job.cleanup()
    regions = sorted(job.regions, key=lambda r: -float(r["volume_ml"]))
    if not regions:
        print("no flagged region: the views are drawn through the volume's centre", file=sys.stderr)
    centre = tuple(regions[0]["centre_mm"]) if regions else None
    overlay = nodes.get("risk") or nodes["ood"]
    show_side_by_side(scene, nodes["local"], nodes.get("baseline"), overlay, OVERLAY_OPACITY, OVERLAY_THRESHOLD)
    shown = views.render(ORIENTATIONS, centre)
    style_overlay(scene, overlay, 0.0, OVERLAY_THRESHOLD)  # the opacity slider at 0
    under = views.render(ORIENTATIONS, centre)
    views.close()

    rows = [("Red: " + nodes["local"].GetName() + f", {overlay.GetName()} at opacity {OVERLAY_OPACITY}",
             [shown[("Red", o)] for o in ORIENTATIONS]),
            ("Red: " + nodes["local"].GetName() + ", overlay opacity 0", [under[("Red", o)] for o in ORIENTATIONS])]
    if nodes.get("baseline") is not None:
        rows.append(("Yellow: " + nodes["baseline"].GetName() + ", overlay opacity 0",
                     [under[("Yellow", o)] for o in ORIENTATIONS]))
    figure, axes = plt.subplots(len(rows), 3, figsize=(12, 4.2 * len(rows)), squeeze=False)
    for (title, images), row in zip(rows, axes):
        for orientation, image, ax in zip(ORIENTATIONS, images, row):
            ax.imshow(np.asarray(image))
            ax.set_title(f"{title}\n{orientation}" if orientation == "Axial" else orientation, fontsize=8,
                         loc="left")
            ax.axis("off")
    where = f"through the largest flagged region, R A S {', '.join(f'{c:+.1f}' for c in centre)} mm" if centre \
        else "through the volume's centre"
    figure.suptitle(f"Slicer slice views after translating {args.input.name} ({args.direction}; "
                    f"{len(regions)} flagged region(s)), {where}", fontsize=9)
    figure.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.out, dpi=100)
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
