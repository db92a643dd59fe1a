"""Device choice, autocast precision and the automatic batch size: the CPU path runs here, the GPU
path where a GPU exists (skipped elsewhere)."""

import numpy as np
import pytest
import torch

from localdiffusion.network.device import CPU_BATCH, auto_batch_size, autocast_dtype, select_device

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_cpu_defaults():
    def never(n):
        raise AssertionError("the CPU needs no probe")

    cpu = torch.device("cpu")
    assert auto_batch_size(never, (96, 112), cpu, 0) == CPU_BATCH and auto_batch_size(never, (96, 112), cpu, 3) == 3
    assert autocast_dtype("cpu") == torch.bfloat16
    assert select_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        from localdiffusion.errors import InputError

        with pytest.raises(InputError, match="CUDA is not available"):
            select_device("cuda")
        assert select_device("auto").type == "cpu"


@gpu
def test_gpu_autocast_and_batch_size_from_free_memory():
    from localdiffusion.network.denoiser import Denoiser, DiffusionConfig

    device = select_device("auto")
    assert device.type == "cuda"
    expected = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    assert autocast_dtype("cuda") == expected
    config = DiffusionConfig(channels=(8, 16), attention_levels=(False, True), num_res_blocks=1, num_head_channels=8,
                             norm_num_groups=8, num_train_timesteps=10, spacing_mm=4.0, in_plane=(48, 56))
    denoiser = Denoiser(config).to(device).eval()
    probe = lambda n: denoiser(torch.zeros(n, 1, 48, 56, device=device), torch.zeros(n, 1, 48, 56, device=device), 0)  # noqa: E731
    batch = auto_batch_size(probe, (48, 56), device, 0)
    assert 1 <= batch <= 256
    cpu = Denoiser(config, network=denoiser.network.to("cpu")).eval()
    x = torch.rand(2, 1, 48, 56)
    with torch.no_grad():
        on_cpu = cpu(x, x, 5)
        on_gpu = Denoiser(config, network=cpu.network.to(device)).eval()(x.to(device), x.to(device), 5).cpu()
    assert np.abs((on_cpu - on_gpu).numpy()).max() < 0.05  # the same network, half-precision rounding apart


def test_ranks_and_workers_divide_the_cores_instead_of_each_taking_all(monkeypatch):
    from localdiffusion.network.device import available_cores, thread_count, use_threads

    cores = available_cores()
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert thread_count() == cores and thread_count(3) == 3
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # two torchrun ranks on this machine
    assert thread_count() == max(1, cores // 2)
    assert thread_count(sharers=4 * cores) == 1  # never fewer than one
    before = torch.get_num_threads()
    try:
        assert use_threads(1) == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
