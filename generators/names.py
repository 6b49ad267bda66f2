"""The generators' names and the settings their CLI help quotes, light to import: a CLI's parser reads them before
torch loads."""

# kind -> "module:loader"; the loader takes (name, device=..., **options) and returns a LatentGenerator.
GENERATORS: dict[str, str] = {
    "vqgan": "generators.vqgan:load_vqgan",
    "pixels": "generators.pixels:load_pixels",
    "noise": "generators.diffusion.noise:load_noise",
}
PARAMETERIZATIONS = ("fft", "lucid", "rgb")  # generators.pixels
DEFAULT_SPECTRUM_DECAY = 1.0  # the fft image's amplitudes fall as 1/f^decay (Lucid's 1: natural images' spectrum)
SCHEDULER_NAMES = ("ddim", "ddpm")  # generators.diffusion.sampling.SCHEDULERS
# Classifier-free guidance of text-conditioned models whose folder recommends no scale (Stable Diffusion's).
DEFAULT_CFG_SCALE = 7.5
DEFAULT_NOISE_STEPS = 4  # DDIM steps of a multi-step model's sampler (generators.diffusion.noise)
