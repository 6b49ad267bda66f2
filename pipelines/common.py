"""What every pipeline shares: the output type, edit checks, sizes, masks, progress videos, recipes and the CLI's
beginning (shared options) and end (saving, the status line, the exit code)."""

from __future__ import annotations

import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import imageio.v3 as iio
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from guidance.clip_models import check_images
from guidance.errors import InvalidInputError, ToolkitError
from guidance.images import attach_recipe, load_image, png_output_path, save_png
from guidance.outputs import atomic_path, check_output, partial_path
from guidance.prompts import parse_prompt
from guidance.relevance import relevance_mask
from guidance.validation import MAX_CUTN, check_count, check_number
from pipelines.cli import (DEFAULT_CLIP, CLIParser, DefaultsHelpFormatter, add_guidance_arguments,  # noqa: F401
                           add_runtime_arguments, call_defaults, command_line, run_cli)

MAX_SIDE = 4096

# Called during a run with (step, images in [0, 1]); returning True stops the run and keeps its last image.
StepCallback = Callable[[int, torch.Tensor], bool | None]


@dataclass
class PipelineOutput:
    """The result of a run: final images, the loss history, progress frames and the recipe.

    Each image carries the recipe, plus its own entries from `image_recipes` (one dict per image, e.g. its index
    and seed in a batch): `result.images[0].save("x.png")` writes it into the PNG, as `result.save` does
    (atomically).
    """

    images: list[Image.Image]
    history: list[dict[str, float]]
    frames: list[np.ndarray] = field(default_factory=list)
    recipe: dict[str, Any] = field(default_factory=dict)
    interrupted: bool = False
    image_recipes: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        """Attach each image's recipe to it."""
        for index, image in enumerate(self.images):
            attach_recipe(image, self.recipe_of(index))

    def recipe_of(self, index: int) -> dict[str, Any]:
        """The recipe of image `index`: the run's, updated with the image's own entries."""
        return {**self.recipe, **(self.image_recipes[index] if self.image_recipes else {})}

    def save(self, path: str | Path, index: int = 0) -> Path:
        """Save image `index` as a PNG carrying its recipe; returns its path."""
        return save_png(self.images[index], path, self.recipe_of(index))


AUTO_MASK = "auto"  # --mask auto: the region CLIP relates to the source -> target text direction
# A directional edit also descends the target text's own CLIP loss at this weight: every edit confined to a mask,
# and the sampler's guided DDIM inversion without one. Measured on the shapes world, 16 recolourings with --mask
# auto (colour / shape hit): VQGAN-CLIP 50.0 / 37.5% with the directional loss alone, 68.8 / 56.2% with the target
# loss alone, 62.5 / 43.8% with both; noise optimisation 31.2 / 12.5%, 18.8 / 6.2% and 31.2 / 25.0%. Both together
# are the best sum over the two. Unmasked, the whole grid of the guided inversion (bench/meaning.py, 96 images)
# goes from 83.3 / 50.0% to 93.8 / 59.4% with it (docs/shapes_models.md, "The target text in unmasked edits").
# The latent loops weigh it lower without a mask (latent_optimization.WHOLE_IMAGE_TARGET_WEIGHT).
TARGET_WEIGHT = 1.0


def is_auto_mask(mask: Any) -> bool:
    """Whether the mask asks to be found from the edit's texts (`--mask auto`)."""
    return isinstance(mask, str) and mask == AUTO_MASK


def edit_mode(init_image: Any, mask: Any, source_text: str | None) -> str:
    """What a run does with its inputs: 'generate', 'init' (start from an image), 'masked' or 'directional' (with
    a mask, a directional edit changes only the mask's region)."""
    if (mask is not None or source_text) and init_image is None:
        raise InvalidInputError("--mask and --source-text edit an image; give it with --init-image")
    if is_auto_mask(mask) and not source_text:
        raise InvalidInputError("--mask auto finds the region to edit from --source-text; give it, or paint a mask")
    if init_image is None:
        return "generate"
    return "directional" if source_text else "masked" if mask is not None else "init"


def directional_target(prompt: str) -> str:
    """The one target text of a directional edit."""
    target = parse_prompt(prompt).text if prompt and prompt.strip() else ""
    if not target or "|" in prompt:
        raise InvalidInputError("a directional edit needs exactly one target text, e.g. 'a photo of a dog'")
    return target


def check_cutouts(cutn: int, cut_pow: float) -> None:
    """Validate the cutout settings every CLIP-guided pipeline takes (count within MAX_CUTN, a finite power > 0)."""
    check_count("--cutn", cutn, 1, MAX_CUTN)
    check_number("--cut-pow", cut_pow, above=0)


def parse_size(text: str | int | Sequence[int]) -> tuple[int, int]:
    """`512` or `512x384` (width x height) as (width, height)."""
    if isinstance(text, int):
        width = height = text
    elif isinstance(text, (tuple, list)) and len(text) == 2:
        width, height = (int(v) for v in text)
    else:
        parts = str(text).lower().replace("*", "x").split("x")
        try:
            width, height = (int(parts[0]), int(parts[0])) if len(parts) == 1 else (int(parts[0]), int(parts[1]))
        except ValueError:
            raise InvalidInputError(f"size {text!r} is not WIDTH or WIDTHxHEIGHT, e.g. 512 or 512x384") from None
        if len(parts) > 2:
            raise InvalidInputError(f"size {text!r} is not WIDTH or WIDTHxHEIGHT, e.g. 512 or 512x384")
    if width <= 0 or height <= 0 or width > MAX_SIDE or height > MAX_SIDE:
        raise InvalidInputError(f"size {width}x{height} is impossible; each side must be between 1 and {MAX_SIDE}")
    return width, height


def round_size(size: tuple[int, int], factor: int, model: str) -> tuple[int, int]:
    """Round (width, height) down to multiples of the model's factor, with a notice when it changes."""
    width, height = (side // factor * factor for side in size)
    if width == 0 or height == 0:
        raise InvalidInputError(f"size {size[0]}x{size[1]} is smaller than {model}'s factor {factor}; "
                                f"use at least {factor}x{factor}")
    if (width, height) != tuple(size):
        warnings.warn(f"size {size[0]}x{size[1]} rounded down to {width}x{height} (a multiple of {factor} for {model})",
                      stacklevel=2)
    return width, height


def load_mask(path: str | Path, size: tuple[int, int], device: torch.device) -> torch.Tensor:
    """A (1, 1, H, W) mask in [0, 1] from an image file (white = region to change); must match `size`."""
    mask = load_image(path, mode="L")
    if tuple(mask.shape[-2:][::-1]) != tuple(size):
        raise InvalidInputError(f"mask {path} is {mask.shape[-1]}x{mask.shape[-2]} but the image is {size[0]}x{size[1]}; "
                                "draw the mask on the same image at the same size")
    if mask.max() <= 0:
        raise InvalidInputError(f"mask {path} is all black, so nothing would change; paint the region to edit white")
    return mask.to(device)


def as_mask(mask: str | Path | torch.Tensor | None, size: tuple[int, int], device: torch.device) -> torch.Tensor | None:
    """The edit mask (a file or a tensor; 1 = change) as (1, 1, H, W) on the device, checked against `size`."""
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor):
        return load_mask(mask, size, device)
    mask = mask.reshape(1, 1, *mask.shape[-2:]).float()
    if tuple(mask.shape[-2:]) != (size[1], size[0]):
        raise InvalidInputError(f"mask is {mask.shape[-1]}x{mask.shape[-2]} but the image is {size[0]}x{size[1]}")
    return mask.to(device)


InitImages = str | Path | torch.Tensor | Sequence[str | Path]


def load_init_images(init_image: InitImages | None, size: tuple[int, int], device: torch.device) -> torch.Tensor | None:
    """Init image(s) (a tensor, a file, or several files) as one (B, 3, H, W) batch on the device at `size`."""
    if init_image is None:
        return None
    if isinstance(init_image, torch.Tensor):
        images = [init_image.unsqueeze(0) if init_image.ndim == 3 else init_image]
        check_images(images[0])
    else:
        paths = [init_image] if isinstance(init_image, (str, Path)) else list(init_image)
        if not paths:
            raise InvalidInputError("init_image is an empty list; give at least one image")
        images = [load_image(path) for path in paths]
        for path, image in zip(paths, images):
            if tuple(image.shape[-2:]) != (size[1], size[0]):
                warnings.warn(f"init image {path} is {image.shape[-1]}x{image.shape[-2]}; the run works at "
                              f"{size[0]}x{size[1]}, so it is resized and the result is {size[0]}x{size[1]} "
                              "(--size chooses)", stacklevel=2)
    return torch.cat([fit_image(image.float(), size) for image in images]).to(device)


def load_edit_inputs(init_image: InitImages | None, mask: str | Path | torch.Tensor | None, size: tuple[int, int],
                     device: torch.device, clip_models: Any = None,
                     texts: tuple[str, str] | None = None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(init images, mask) on the device at `size`; the mask is checked first, so that a bad mask is refused in one
    line before any resize notice of the init images. `--mask auto` is found by `clip_models` from the edit's
    (source, target) `texts` (`guidance.relevance`)."""
    if is_auto_mask(mask):
        init = load_init_images(init_image, size, device)
        if init.shape[0] != 1:
            raise InvalidInputError(f"--mask auto finds the region of one init image, got {init.shape[0]}")
        return init, relevance_mask(clip_models, init, *texts)
    mask_tensor = as_mask(mask, size, device)
    return load_init_images(init_image, size, device), mask_tensor


def fit_image(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize a (1, C, H, W) image to (width, height), antialiased."""
    if tuple(image.shape[-2:]) == (size[1], size[0]):
        return image
    return F.interpolate(image, size=(size[1], size[0]), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)


def frame_of(images: torch.Tensor) -> np.ndarray:
    """The first image as an HxWx3 uint8 array (one device-to-host copy)."""
    return (images[0].detach().float().clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()


VIDEO_SUFFIXES = (".mp4", ".webm", ".mkv", ".gif")


def write_video(frames: Sequence[np.ndarray], path: str | Path, fps: int = 10) -> Path:
    """Write progress frames as an mp4 (ffmpeg) or a gif, chosen by the file extension, atomically."""
    path = Path(path)
    if not frames:
        raise InvalidInputError("no frames to write; use a smaller --save-every")
    if path.suffix.lower() not in VIDEO_SUFFIXES:
        raise InvalidInputError(f"video {path} must end in .mp4, .webm, .mkv or .gif")
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as temporary:
        if path.suffix.lower() == ".gif":
            iio.imwrite(temporary, np.stack(frames), duration=1000 / fps, loop=0)
        else:
            even = [f[: f.shape[0] // 2 * 2, : f.shape[1] // 2 * 2] for f in frames]  # codecs want even sides
            iio.imwrite(temporary, np.stack(even), fps=fps, codec="libx264" if path.suffix.lower() == ".mp4" else None,
                        macro_block_size=1)
    return path


def output_paths(output: str | Path, count: int) -> list[Path]:
    """The PNGs of a run of `count` images: `-o NAME.png` itself for one; `NAME-1.png` ... `NAME-{count}.png` for
    several (image k of a batch, or the k-th edited image, is `NAME-k.png`); one-line error unless it ends in .png."""
    output = png_output_path(output)
    if count == 1:
        return [output]
    return [output.with_name(f"{output.stem}-{k}{output.suffix}") for k in range(1, count + 1)]


def check_cli_outputs(paths: Sequence[Path], video: str | None) -> None:
    """Check every file a CLI run will write (the `output_paths` of its output), before any model loads (see
    guidance.outputs.check_output)."""
    for path in paths:
        check_output(path, (".png",), "output")
    if video:
        check_output(video, VIDEO_SUFFIXES, "video")


def check_batch_outputs(output: str | Path, count: int, keep_best: int | None, video: str | None
                        ) -> tuple[list[Path], list[Path]]:
    """(the kept images' PNGs, best first; the PNGs whose partial saves the run writes, one per image made) of a run
    of `count` images keeping `keep_best` of them, every file checked up front (`check_cli_outputs`)."""
    kept, running = output_paths(output, keep_best or count), output_paths(output, count)
    check_cli_outputs(list(dict.fromkeys([*kept, *running])), video)
    return kept, running


def save_partial(images: torch.Tensor, paths: Sequence[Path], command: str, step: int) -> None:
    """Save a run's current images beside its outputs (`output_paths`; `NAME.partial.png`, `NAME-k.partial.png`),
    marked partial; outputs stay untouched."""
    for index, path in enumerate(paths):
        save_png(images[index:index + 1], partial_path(path), {"command": command, "step": step, "partial": True})


def finish_cli(result: PipelineOutput, paths: Sequence[Path], command: str, video: str | None,
               own: Sequence[dict[str, Any]] = (), running: Sequence[Path] = ()) -> int:
    """The end of every pipeline CLI: save each image with its recipe (`result.recipe_of`, plus its `own` entries)
    over its output (`output_paths`), atomically, remove its partial file (and those of the `running` outputs
    that --keep-best dropped), write the video and a status line; returns the exit code (130 when interrupted)."""
    replaced = [path for path in paths if path.exists()]
    try:
        for index, (image, path) in enumerate(zip(result.images, paths)):
            save_png(image, path, {**result.recipe_of(index), **(own[index] if own else {}), "command": command})
            partial_path(path).unlink(missing_ok=True)
        for path in running:
            partial_path(path).unlink(missing_ok=True)
        if video:
            write_video(result.frames, video)
    except OSError as error:  # checked up front, yet the disk can fill or the folder go during the run
        raise ToolkitError(f"cannot write {error.filename or 'the output'} ({error.strerror or type(error).__name__})"
                           "; free some space or choose another -o / --video (the previous file, if any, is intact)"
                           ) from None
    state = "interrupted after" if result.interrupted else "done in"
    names = ", ".join(str(path) for path in paths)
    note = f" (replaced the previous {', '.join(str(path) for path in replaced)})" if replaced else ""
    print(f"{state} {result.recipe['steps_done']} steps ({result.recipe['seconds']} s): {names}{note}", file=sys.stderr)
    return 130 if result.interrupted else 0


def clean_recipe(recipe: dict[str, Any]) -> dict[str, Any]:
    """Drop unset values from a recipe so the PNG chunks list only what was used."""
    return {key: value for key, value in recipe.items() if value is not None and value != []}
