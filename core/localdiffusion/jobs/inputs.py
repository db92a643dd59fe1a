"""Reading a user's input volume onto a model's working grid (shared by every job)."""

from __future__ import annotations

from pathlib import Path

from localdiffusion.data.io import load_volume
from localdiffusion.data.readers import Case
from localdiffusion.errors import InputError
from localdiffusion.volume.grid import PreparedCase, prepare_case


def prepare_input(path: str | Path, modality: str, spacing: float, in_plane: tuple[int, int]) -> PreparedCase:
    """Load one 3D input volume and put it on its working grid."""
    data, affine = load_volume(path)
    case = Case(Path(path).name.split(".")[0], {modality: data}, affine, None, "volume", {modality: Path(path)})
    prepared = prepare_case(case, spacing, in_plane)
    if prepared.brain_slices().size == 0:
        raise InputError(f"{path}: no slice holds enough brain for the {in_plane} working grid "
                         f"at {spacing} mm (volume too small for the network)")
    return prepared


def refuse_overwriting_input(input_path: str | Path, *outputs: str | Path | None) -> None:
    """Before any work: no output may be the input file."""
    for path in outputs:
        if path is not None and Path(path).exists() and Path(path).resolve() == Path(input_path).resolve():
            raise InputError(f"{path}: refusing to overwrite the input volume")


def check_sampling(denoiser, steps: int | None, t_intermediate: int = -1) -> None:
    """Before any work: the step count and fusion timestep fit the model's training timesteps."""
    T = denoiser.schedule.num_train_timesteps
    if steps is not None and not 1 <= int(steps) <= T:
        raise InputError(f"steps must be between 1 and the model's {T} training timesteps, got {steps}")
    if not -1 <= int(t_intermediate) < T:
        raise InputError(f"t_intermediate must be -1 (10% of T) or between 0 and {T - 1}, got {t_intermediate}")
