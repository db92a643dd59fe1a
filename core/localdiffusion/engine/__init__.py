"""The sampling engine, tensors only: noise schedule, update rules (a registry), the one reverse-process loop, and the one function that assembles a sampler call."""
