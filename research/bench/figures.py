"""The benchmark's figures: the montage (per evaluated case, the condition with the branching
masks, the baseline, every Local Diffusion row and the truth) and the three-plane grid the
consistency and risk-map benchmarks draw (``plane_grid``)."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class PlaneRow(NamedTuple):
    """One row of :func:`plane_grid`: a volume (X, Y, Z) shown in ``cmap`` over ``[vmin, vmax]``,
    optionally with a boolean ``outline`` drawn in red."""

    name: str
    volume: np.ndarray
    cmap: str = "gray"
    vmin: float = 0.0
    vmax: float = 1.0
    outline: np.ndarray | None = None


def plane_grid(rows: list[PlaneRow], centre: list[int], title: str):
    """Axial, coronal and sagittal views (columns) through voxel ``centre`` of every row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cuts = {"axial": np.s_[:, :, centre[2]], "coronal": np.s_[:, centre[1], :], "sagittal": np.s_[centre[0], :, :]}
    fig, axes = plt.subplots(len(rows), 3, figsize=(9, 2.9 * len(rows)), squeeze=False)
    for r, row in enumerate(rows):
        for c, (plane, cut) in enumerate(cuts.items()):
            ax = axes[r, c]
            ax.imshow(np.rot90(row.volume[cut]), cmap=row.cmap, vmin=row.vmin, vmax=row.vmax)
            if row.outline is not None and row.outline[cut].any():
                ax.contour(np.rot90(row.outline[cut].astype(float)), levels=[0.5], colors="red", linewidths=0.7)
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(row.name, fontsize=9)
            if r == 0:
                ax.set_title(plane, fontsize=10)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


#: the branching masks drawn over the condition, by mask kind (benchmark/matrix.py case_masks)
MASK_COLOURS = {"patchcore": "yellow", "robust patchcore": "orange", "unet": "magenta"}


def montage_figure(result: dict, max_cases: int = 6):
    """Per evaluated case (rows): condition, masks, the plain sampler (DDIM-25, else the shipped one),
    Local Diffusion rows, truth."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    source, target = result["direction"].split("->")
    shown = result["montage"][:max_cases]
    ld_rows = [n for n in result["rows"] if n.startswith(("LD", "shipped LD"))]
    lookup = [n for n in result["rows"] if n.startswith("local healthy mapping")]
    plain = "DDIM-25" if "DDIM-25" in result["rows"] else next(n for n in result["rows"] if n.startswith("shipped DDIM"))
    columns = [f"{source} (condition)", plain, *ld_rows, *lookup, f"true {target}"]
    fig, axes = plt.subplots(len(shown), len(columns), figsize=(2.6 * len(columns), 2.7 * len(shown)), squeeze=False)
    for r, case in enumerate(shown):
        images = [case["condition"], case["pred"][plain], *[case["pred"][n] for n in ld_rows + lookup],
                  case["truth"]]
        for c, (title, image) in enumerate(zip(columns, images)):
            ax = axes[r, c]
            ax.imshow(image.T, cmap="gray", origin="lower", vmin=0, vmax=1)
            ax.contour(case["tumour"].T, levels=[0.5], colors="c", linewidths=0.6, origin="lower")
            if c == 0:
                for kind, color in MASK_COLOURS.items():
                    if kind in case["masks"]:
                        ax.contour((case["masks"][kind] >= 0.5).T, levels=[0.5], colors=color, linewidths=0.6,
                                   origin="lower")
                ax.set_ylabel(f"{case['case_id']} z={case['z']}", fontsize=8)
            if r == 0:
                ax.set_title(title.replace(", IND floor", "\nfloor"), fontsize=8)
            ax.set_xticks([]), ax.set_yticks([])
    drawn = {kind for case in shown for kind in case["masks"]}
    legend = "".join(f", {colour} = {kind} branching mask" for kind, colour in MASK_COLOURS.items() if kind in drawn)
    fig.suptitle(f"{source} -> {target}, {result['split']} split, seed {result['seeds'][0]}: cyan = true tumour"
                 f"{legend}", fontsize=9)
    return fig
