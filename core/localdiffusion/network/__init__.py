"""Networks and their configurations: the conditional diffusion denoiser, the tumour segmenter, device choice."""
