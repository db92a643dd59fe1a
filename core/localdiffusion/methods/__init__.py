"""Methods that plug into the engine's loop: Local Diffusion (denoiser wrapper, hook, noise), RODS (denoiser wrapper), x0-trajectory recording (hook)."""
