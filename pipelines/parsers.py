"""The CLIs' parsers, light to import (no torch): each pipeline module parses its command line with these before
its heavy imports, so that `--help` and usage errors answer at once. Defaults stay where they are defined, in the
pipelines' calls and classes, and are read from their source (`pipelines.cli.source_literals`).
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any, Callable

from generators.names import (DEFAULT_CFG_SCALE, DEFAULT_NOISE_STEPS, DEFAULT_SPECTRUM_DECAY, GENERATORS,
                              PARAMETERIZATIONS, SCHEDULER_NAMES)
from guidance.validation import MAX_STEPS
from pipelines.cli import (DEFAULT_CLIP, CLIParser, add_guidance_arguments, add_runtime_arguments, module_summary,
                           source_literals)
from pipelines.registry import PIPELINES

if TYPE_CHECKING:
    from pipelines.batch import Option
    from pipelines.registry import PipelineSpec

ModelArguments = Callable[[argparse.ArgumentParser], None]  # adds a pipeline's options choosing its model

OPTIMIZER_NAMES = ("adam", "adamw", "radam", "sgd", "nesterov")  # pipelines.latent_optimization.OPTIMIZERS
MAX_IMAGES = 64  # images made together in one run (--num-images)
MAX_CUTN_BATCHES = 64  # cutout batches per step (--cutn-batches)
MAX_CANDIDATES = 256  # random starting latents tried per image (--candidates)
HUE_TURNS = 7  # a masked edit's recoloured starts: its region's hue turned by k/8 of the wheel, k = 1..7
TINTS = HUE_TURNS + 1  # then the region tinted to the hues halfway between those, (k + 1/2)/8 of the wheel
RECOLOURINGS = HUE_TURNS + 1 + TINTS  # all a region's recolourings: the hue turns, the lightness flip, the tints
REGION_CANDIDATES = 1 + RECOLOURINGS  # a masked edit's starts by default (docs/shapes_models.md); the sampler's most
DEFAULT_VQGAN = "vqgan_imagenet_f16_16384"
# CLIP-guided diffusion (pipelines.clip_guided_diffusion)
DEFAULT_MODEL = "google/ddpm-celebahq-256"
DEFAULT_CLIP_SCALE = 1000.0  # Disco Diffusion's order of magnitude: clip 1000, tv 150, range 50
MAX_INVERSION_REFINE = 100  # fixed-point refinements per inversion step (each one more UNet pass)
METHODS = ("sampler", "noise")
# Backward-guidance steps of masked and --source-text edits when not given (0 when generating): without them the
# shapes benchmark's edits kept the source colour (0% target colour; the inversion edit's raw guidance gradient, RMS
# 3-180, is clamped to 0.05 and the sample barely moves); with 5 steps at lr 0.1 they change the edited region.
DEFAULT_EDIT_BACKWARD_STEPS = 5
DEFAULT_BACKWARD_LR = 0.1
GUIDANCE_SCHEDULE_NAMES = ("constant", "cosine", "linear")  # generators.diffusion.GUIDANCE_SCHEDULES
MASK_HELP = ("edit only the white region of this mask (same size as the output); 'auto' with --source-text: the "
             "region CLIP relates to the source -> prompt change")


# --- latent optimisation: pipelines.latent_optimization, pipelines.vqgan_clip, pipelines.pixels_clip -------------

def latent_parser(module: str, pipeline: str, add_model_arguments: ModelArguments) -> CLIParser:
    """The command-line options of a latent-optimisation pipeline: the class `pipeline` of `module` (its defaults
    read from the source), with its generator's own options from `add_model_arguments`."""
    attributes = source_literals(module, pipeline)
    defaults = {**source_literals("pipelines.latent_optimization", "LatentOptimizationPipeline.__call__"),
                **attributes.get("call_settings", {})}
    parser = CLIParser(prog=f"python -m {module}", description=module_summary(module))
    parser.add_argument("prompt", nargs="?", default="",
                        help="text prompt; 'text:weight:stop' items joined by '|' (negative weights push away)")
    size = attributes["default_size"]
    parser.add_argument("--size", default=size and f"{size[0]}x{size[1]}",
                        help="WIDTH or WIDTHxHEIGHT, rounded down to the generator's factor"
                             + ("" if size else " (default: the model's native size)"))
    parser.add_argument("--steps", type=int, default=defaults["steps"], help=f"optimisation steps, 1 to {MAX_STEPS}")
    parser.add_argument("--lr", type=float, default=attributes["default_lr"], help="learning rate, a finite number > 0")
    parser.add_argument("--optimizer", choices=sorted(OPTIMIZER_NAMES), default=defaults["optimizer"],
                        help="optimiser of the latent")
    add_guidance_arguments(parser, defaults, "step")
    add_model_arguments(parser)
    parser.add_argument("--image-prompt", action="append", default=[], metavar="PATH[:WEIGHT[:STOP]]",
                        help="an image as a target like a text prompt; repeatable")
    parser.add_argument("--init-image", default=None, help="start from this image (and edit it)")
    parser.add_argument("--init-weight", type=float, default=None,
                        help="fidelity to the init image (default 0; for --source-text edits 1 inside a --mask, "
                        "0.3 without)")
    parser.add_argument("--mask", default=None, help=MASK_HELP)
    parser.add_argument("--source-text", default=None, help="describe the init image; the prompt is the target")
    add_many_images_arguments(parser)
    parser.add_argument("--cutn-batches", type=int, default=defaults["cutn_batches"],
                        help=f"average the CLIP loss over this many batches of --cutn cutouts per step, 1 to "
                             f"{MAX_CUTN_BATCHES} (Disco Diffusion's; memory stays that of one batch)")
    parser.add_argument("--grad-clip", type=float, default=defaults["grad_clip"],
                        help="clip each image's latent gradient to this norm (not given: no clipping)")
    parser.add_argument("--best-step", action=argparse.BooleanOptionalAction, default=defaults["best_step"],
                        help="return each image at its lowest-loss step rather than the last (ReNO's keep-best)")
    add_start_arguments(parser, defaults)
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=defaults["compile"],
                        help="run the generator's decode and the CLIP loss through torch.compile (slow first step)")
    add_runtime_arguments(parser)
    return parser


def add_start_arguments(parser: argparse.ArgumentParser, defaults: dict[str, Any], scope: str = "",
                        also: str = "") -> None:
    """--candidates and --contrast: a latent loop's best-of-N start and its CLIP loss's contrast to the empty text
    (`also`: what --candidates does besides, for another method)."""
    parser.add_argument("--candidates", type=int, default=defaults["candidates"],
                        help=f"{scope}draw this many random starts per image and begin from the one CLIP likes best, "
                             f"1 to {MAX_CANDIDATES}; an edit inside a --mask or with --source-text draws its region "
                             f"(the whole image without a mask) as it is, recoloured "
                             f"through {HUE_TURNS} hues, with its lightness flipped and tinted to {TINTS} more hues, "
                             "then random ones"
                             + ("" if defaults["candidates"] else
                                f" (default: {REGION_CANDIDATES} for an edit inside a --mask or with --source-text, else 1)")
                             + also)
    parser.add_argument("--contrast", type=float, default=defaults["contrast"],
                        help=f"{scope}subtract this times the CLIP distance to the empty text, so that blanks and "
                             "plain fields stop scoring well (0: off)")


def add_many_images_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of a batch of images in one run: how many, and keeping the best by CLIP score."""
    parser.add_argument("--num-images", type=int, default=1,
                        help=f"images made together in one run, 1 to {MAX_IMAGES}: NAME-1.png ... NAME-N.png (image k "
                             "starts from the k-th latent drawn from --seed; the recorded command remakes them all)")
    add_ranking_arguments(parser)


def add_ranking_arguments(parser: argparse.ArgumentParser) -> None:
    """--keep-best and its judge: keeping the best images of a batch by CLIP score (pipelines.ranking)."""
    parser.add_argument("--keep-best", type=int, default=None, metavar="K",
                        help="keep the K images of highest CLIP score against the prompt, best first "
                             "(NAME-1.png is the best; NAME.png if K is 1)")
    parser.add_argument("--judge-model", default=None, metavar="NAME[:PRETRAINED]",
                        help="the CLIP model that ranks --keep-best (default: the guiding models, which is optimistic)")


def generator_arguments(parser: argparse.ArgumentParser) -> None:
    """The CLI options that choose the generator (pipelines.latent_optimization)."""
    parser.add_argument("--generator", choices=sorted(GENERATORS), default="pixels", help="generator kind")
    parser.add_argument("--model", default="fft", help="the generator's model (name, file or parameterization)")


def noise_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The diffusion model and short sampler of noise optimisation (pipelines.noise_optimization)."""
    parser.add_argument("--model", default=DEFAULT_MODEL, help="diffusers model: hub id, local folder or built-in name")
    parser.add_argument("--sampler-steps", type=int, default=None,
                        help=f"DDIM steps from the noise to the image (default {DEFAULT_NOISE_STEPS}, 1 for one- and "
                             "few-step models)")
    parser.add_argument("--cfg-scale", type=float, default=None,
                        help="classifier-free guidance of text-conditioned models (default: the scale the model's folder "
                             f"recommends, else {DEFAULT_CFG_SCALE:g})")


def noise_settings() -> dict[str, Any]:
    """Noise optimisation's own call defaults (pipelines.noise_optimization), read from its source."""
    return {**source_literals("pipelines.latent_optimization", "LatentOptimizationPipeline.__call__"),
            **source_literals("pipelines.noise_optimization", "NoiseOptimizationPipeline")["call_settings"]}


def vqgan_arguments(parser: argparse.ArgumentParser) -> None:
    """The VQGAN options (pipelines.vqgan_clip)."""
    parser.add_argument("--vqgan", default=DEFAULT_VQGAN, help="VQGAN name, checkpoint file, folder or hf:// repo")
    parser.add_argument("--vqgan-config", default=None, help="taming .yaml config for a local VQGAN checkpoint")
    parser.add_argument("--allow-pickle", action="store_true",
                        help="allow full unpickling of checkpoints (runs code from the file; only for files you trust)")


def pixels_arguments(parser: argparse.ArgumentParser) -> None:
    """The pixel generator's option (pipelines.pixels_clip)."""
    parser.add_argument("--parameterization", choices=PARAMETERIZATIONS, default="fft",
                        help="fft: decorrelated-colour Fourier image, colour axes at equal scale (optimises "
                             "best); lucid: the same with Lucid's ImageNet-scaled colour axes (paler); rgb: raw pixels")
    parser.add_argument("--spectrum-decay", type=float, default=DEFAULT_SPECTRUM_DECAY,
                        help="fft, lucid: amplitudes fall as 1/f^D, larger is smoother (default Lucid's "
                             f"{DEFAULT_SPECTRUM_DECAY:g}; with lucid's map, 1.5 drew the asked colour more often "
                             "with the shapes CLIP)")


# --- CLIP-guided diffusion ---------------------------------------------------------------------------------------


def clip_guided_diffusion_parser() -> CLIParser:
    """The CLI of CLIP-guided diffusion; its defaults are those of the pipeline's call (and of `finetune`)."""
    defaults = source_literals("pipelines.clip_guided_diffusion", "CLIPGuidedDiffusionPipeline.__call__")
    tuning = source_literals("pipelines.diffusionclip", "finetune")
    parser = CLIParser(prog="python -m pipelines.clip_guided_diffusion",
                       description=module_summary("pipelines.clip_guided_diffusion"))
    parser.add_argument("prompt", nargs="?", default=defaults["prompt"],
                        help="text prompt; 'text:weight:stop' items joined by '|' (negative weights push away); with "
                             "--source-text, the target text; may be empty to apply a fine-tuned model's edit")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="diffusers model: hub id, local folder or built-in name")
    parser.add_argument("--size", default=defaults["size"],
                        help="WIDTH or WIDTHxHEIGHT (default: the model's native size)")
    parser.add_argument("--method", choices=METHODS, default=None,
                        help="sampler: CLIP guidance at every sampler step; noise: optimise the starting noise through "
                             "a short deterministic sampler (ReNO). Default: the method the model's folder recommends "
                             "(noise for the shipped shapes DDPMs, measured by bench/meaning.py), else sampler; "
                             "edits (--init-image, --mask, --source-text) and sampler-only options use the sampler")
    parser.add_argument("--steps", type=int, default=defaults["steps"],
                        help="scheduler steps over the whole noise schedule (at most the model's training steps); "
                             f"with --method noise, the short sampler's (if not given: {DEFAULT_NOISE_STEPS}, 1 for "
                             "few-step models)")
    noise = noise_settings()
    parser.add_argument("--iterations", type=int, default=noise["steps"],
                        help="with --method noise: optimisation steps of the starting noise")
    add_start_arguments(parser, noise, "with --method noise: ",
                        f"; with --method sampler, an edit inside a --mask or with --source-text starts from the best "
                        f"of its region as it is and its {RECOLOURINGS} recolourings (1 to {REGION_CANDIDATES}, default "
                        f"{REGION_CANDIDATES})")
    parser.add_argument("--scheduler", choices=sorted(SCHEDULER_NAMES), default=defaults["scheduler"],
                        help="diffusers sampler")
    parser.add_argument("--eta", type=float, default=defaults["eta"],
                        help="DDIM noise (0: deterministic, 1: like DDPM)")
    parser.add_argument("--skip-steps", type=int, default=defaults["skip_steps"],
                        help="with --init-image: skip this many of the first steps (default: half of them)")
    parser.add_argument("--edit-strength", type=float, default=defaults["edit_strength"],
                        help="with --init-image: the share of the steps redone, in (0, 1] (DiffusionCLIP's t0 / T)")
    parser.add_argument("--clip-scale", type=float, default=defaults["clip_scale"],
                        help=f"CLIP guidance strength (default {DEFAULT_CLIP_SCALE:g}; 0 for a fine-tuned model's edit; "
                             "0 turns guidance off)")
    parser.add_argument("--tv-scale", type=float, default=defaults["tv_scale"],
                        help="smoothness (total variation) guidance")
    parser.add_argument("--range-scale", type=float, default=defaults["range_scale"],
                        help="guidance keeping pixels in range")
    parser.add_argument("--clamp-grad", type=float, default=defaults["clamp_grad"],
                        help="clamp the guidance gradient's RMS to this (0: no clamp)")
    parser.add_argument("--guide-from", type=float, default=defaults["guide_from"],
                        help="guide from this fraction of the steps on")
    parser.add_argument("--guide-until", type=float, default=defaults["guide_until"],
                        help="guide until this fraction of the steps")
    parser.add_argument("--guide-every", type=int, default=defaults["guide_every"],
                        help="guide every K-th step (faster)")
    parser.add_argument("--guidance-schedule", choices=GUIDANCE_SCHEDULE_NAMES,
                        default=defaults["guidance_schedule"],
                        help="the CLIP guidance's weight over the steps: constant, or fading from full at the first "
                             "step to 0 at the last (linear, cosine)")
    parser.add_argument("--recurrence", type=int, default=defaults["recurrence"],
                        help="self-recurrence (Universal Guidance / FreeDoM time travel): do each guided step K times "
                             "in --recurrence-range, re-noising its result back to its timestep in between (1: off)")
    parser.add_argument("--recurrence-range", default=defaults["recurrence_range"],
                        help="A:B, the part of the steps (fractions, 0 <= A < B <= 1) that --recurrence applies to")
    parser.add_argument("--backward-steps", type=int, default=defaults.get("backward_steps"),
                        help="backward guidance (Universal Guidance): at each guided step, optimise the clean estimate "
                             "for M Adam steps and re-derive the noise from it (0: off; default "
                             f"{DEFAULT_EDIT_BACKWARD_STEPS} for --mask and --source-text edits, else 0)")
    parser.add_argument("--backward-lr", type=float, default=DEFAULT_BACKWARD_LR,
                        help="backward guidance's Adam learning rate (in [-1, 1] pixel units for pixel models)")
    parser.add_argument("--cfg-scale", type=float, default=defaults["cfg_scale"],
                        help="classifier-free guidance of text-conditioned models (default: the scale the model's folder "
                             f"recommends, else {DEFAULT_CFG_SCALE:g})")
    add_guidance_arguments(parser, defaults, "guided step", f" (with --method noise: {noise['augment']} if not given)")
    parser.add_argument("--num-images", type=int, default=defaults["num_images"],
                        help="sample N images together as one batch (NAME-1.png ... NAME-N.png; not with --init-image)")
    add_ranking_arguments(parser)
    parser.add_argument("--init-image", action="append", default=defaults["init_image"],
                        help="start from this image and edit it; repeat to edit several (NAME-1.png, NAME-2.png, ...)")
    parser.add_argument("--init-weight", type=float, default=defaults["init_weight"],
                        help="fidelity to the init image (default 0; L1 weight 1 for --source-text edits)")
    parser.add_argument("--mask", default=defaults["mask"], help=MASK_HELP)
    parser.add_argument("--source-text", default=defaults["source_text"],
                        help="describe the init image; DDIM-invert it and edit towards the prompt (DiffusionCLIP)")
    parser.add_argument("--inversion-steps", type=int, default=defaults["inversion_steps"],
                        help=f"DDIM inversion steps, 1 to {MAX_STEPS} (default: mirror the edit's own steps)")
    parser.add_argument("--inversion-refine", type=int, default=defaults["inversion_refine"],
                        help="fixed-point refinements per inversion step, 0 to "
                             f"{MAX_INVERSION_REFINE}: exacter inversion, one more UNet pass each")
    parser.add_argument("--finetune-steps", type=int, default=0,
                        help="first fine-tune the UNet for this --source-text edit for N steps (DiffusionCLIP)")
    parser.add_argument("--finetune-lr", type=float, default=tuning["lr"], help="fine-tuning learning rate")
    parser.add_argument("--finetune-ddim-steps", type=int, default=tuning["ddim_steps"],
                        help="DDIM steps generated with gradients in each fine-tuning step")
    parser.add_argument("--save-model", default=None,
                        help="save the fine-tuned model to this folder (use it as --model); checked before the run")
    add_runtime_arguments(parser)
    return parser


# --- CLIP's own jobs: pipelines.zero_shot, pipelines.clip_score --------------------------------------------------


def zero_shot_parser() -> CLIParser:
    """The zero-shot CLI's options."""
    parser = CLIParser(prog="python -m pipelines.zero_shot", description=module_summary("pipelines.zero_shot"))
    parser.add_argument("images", nargs="*", help="image files or folders (walked)")
    job = parser.add_mutually_exclusive_group(required=True)
    job.add_argument("--labels", help="comma-separated class labels, e.g. 'a cat,a dog' or '猫,狗'")
    job.add_argument("--labels-file", help="a text file with one class label per line")
    job.add_argument("--query", help="rank the images by similarity to this text")
    job.add_argument("--eval", metavar="FOLDER_OR_CSV",
                     help="evaluate: a folder with one subfolder of images per class, or a CSV of images and labels")
    parser.add_argument("--templates", default="auto",
                        help="prompt templates: auto (zh for Chinese labels, else imagenet), imagenet, zh, none, or a "
                             "file with one template such as 'a photo of a {}.' per line")
    parser.add_argument("--clip-model", default=DEFAULT_CLIP, metavar="NAME[:PRETRAINED]",
                        help="the CLIP model: any name load_clip takes (shapes-tiny, hf:OWNER/NAME, a folder, ...)")
    parser.add_argument("--label-column", default="label", help="--eval with a CSV: the column holding the labels")
    parser.add_argument("--image-column", default="filepath", help="--eval with a CSV: the column holding image paths")
    parser.add_argument("--csv", default=None, help="also write the table to this CSV file")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N, mps (default: best available)")
    return parser


def clip_score_parser() -> CLIParser:
    """The CLIP score CLI's options."""
    parser = CLIParser(prog="python -m pipelines.clip_score", description=module_summary("pipelines.clip_score"))
    parser.add_argument("images", nargs="+", help="image files or folders (walked)")
    parser.add_argument("--prompt", default=None, help="score against this prompt (default: each PNG's recipe prompt)")
    parser.add_argument("--clip-model", default=DEFAULT_CLIP, metavar="NAME[:PRETRAINED]",
                        help="the judge: any name load_clip takes; best one that did not guide the images")
    parser.add_argument("--csv", default=None, help="also write the table to this CSV file")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N, mps (default: best available)")
    return parser


# --- batch jobs --------------------------------------------------------------------------------------------------


def batch_parser(spec: PipelineSpec | None, options: dict[str, Option],
                 load_options: dict[str, Option] | None = None) -> CLIParser:
    """The batch options, plus the pipeline's model option, load options and call options once the pipeline is
    known."""
    parser = CLIParser(prog="python -m pipelines.batch", description=module_summary("pipelines.batch"))
    parser.add_argument("jobs", help="a text file (one prompt per line) or a .jsonl file (one object of settings per line)")
    parser.add_argument("--pipeline", required=True, help=f"the pipeline: {', '.join(PIPELINES)}")
    parser.add_argument("--output-dir", required=True, help="folder of the images and manifest.jsonl")
    parser.add_argument("--seed", type=int, default=0,
                        help="base seed: a job without a seed gets derive_seed(BASE, job id)")
    parser.add_argument("--device", default=None,
                        help="cpu, cuda, cuda:N, mps (default: each process's own device, else the best available)")
    parser.add_argument("--clip-model", action="append", default=None, metavar="NAME[:PRETRAINED][:WEIGHT]",
                        help=f"CLIP model, repeatable for an ensemble (default: {DEFAULT_CLIP})")
    if spec is not None:
        parser.add_argument(spec.model_flag, dest="model", required=True, help=f"the {spec.model_label} to load")
        for option in (load_options or {}).values():
            parser.add_argument(option.flag, dest=option.name, type=option.convert, default=None,
                                help=f"{option.name} of the pipeline, set once when it loads, for every job "
                                     "(default: the pipeline's own)")
        for option in options.values():
            help_text = f"the default {option.name} of every job (default: the pipeline's own)"
            if option.switch:
                parser.add_argument(option.flag, dest=option.name, action=argparse.BooleanOptionalAction, default=None,
                                    help=help_text)
            else:
                parser.add_argument(option.flag, dest=option.name, type=option.convert, default=None,
                                    action="append" if option.repeatable else "store", help=help_text)
    return parser


def batch_pipeline_name(argv: list[str]) -> str:
    """The `--pipeline` of a batch command line; without one, the batch options answer (--help, or the one-line
    error that --pipeline is missing)."""
    first = argparse.ArgumentParser(add_help=False)
    first.add_argument("--pipeline")
    name = first.parse_known_args(argv)[0].pipeline
    if name is None:
        batch_parser(None, {}).parse_args(argv)
    return name
