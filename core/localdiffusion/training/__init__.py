"""Training loops: the diffusion denoiser (single process or torchrun DDP) and the tumour segmenter."""
