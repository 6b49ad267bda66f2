"""The names of the choices the CLIs offer, light to import: a CLI's parser reads them before torch loads, and the
modules that implement the choices key their tables by them."""

AUGMENT_PRESETS = ("none", "light", "geometric", "default")  # guidance.cutouts.build_augmentations
PRECISION_NAMES = ("fp32", "bf16", "fp16")  # guidance.runtime.PRECISIONS
PRECISION_CHOICES = ("auto", *PRECISION_NAMES)  # auto: guidance.runtime.resolve_precision
