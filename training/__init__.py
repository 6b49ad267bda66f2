"""Training and synthetic data for the shapes-tiny models: the shapes world, pixel colour statistics, the CLIP,
VQGAN and DDPM trainers, and what they share (training.core). Nothing in guidance, generators, pipelines or
apps imports this package."""
