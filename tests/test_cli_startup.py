"""The command line answers `--help` and refuses a bad input without loading torch or MONAI."""

import subprocess
import sys
import time

#: developer commands whose help lists defaults that live beside the networks (training, risk fitting)
HEAVY_HELP = {"train", "calibrate-risk"}


def _loaded_after(code: str) -> tuple[list[str], str]:
    probe = code + "\nimport sys\nprint(sorted(m for m in ('torch', 'monai') if m in sys.modules))"
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return eval(proc.stdout.strip().splitlines()[-1]), proc.stderr


def test_help_of_every_user_command_loads_neither_torch_nor_monai():
    from localdiffusion.cli import COMMAND_HELP

    commands = [[], *([c] for c in COMMAND_HELP if c not in HEAVY_HELP), ["ood", "map"]]
    code = "from localdiffusion.cli import main\n" + "".join(
        f"try:\n    main({argv + ['--help']!r})\nexcept SystemExit:\n    pass\n" for argv in commands)
    loaded, _ = _loaded_after(code)
    assert loaded == []


def test_a_bad_input_is_refused_in_one_line_before_the_networks_load(tmp_path):
    bad = tmp_path / "scan_t1.nii.gz"
    bad.write_text("not an image")
    code = ("from localdiffusion.cli import main\n"
            f"assert main(['run', '--input', {str(bad)!r}, '--out-dir', {str(tmp_path / 'out')!r}]) == 2\n"
            f"assert main(['run', '--input', {str(tmp_path / 'missing_t1.nii.gz')!r}, '--out-dir', "
            f"{str(tmp_path / 'out')!r}]) == 2")
    start = time.monotonic()
    loaded, err = _loaded_after(code)
    assert loaded == [] and time.monotonic() - start < 5
    lines = err.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith(f"error: {bad}") and "missing_t1.nii.gz" in lines[1]
    assert not (tmp_path / "out").exists()
