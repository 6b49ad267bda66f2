"""Train a small DDPM (a diffusers UNet2DModel predicting noise) on the shapes world, unconditional or following
a CLIP's text embedding of each image's caption (`--condition-clip`).

Each step noises a batch of shapes-world images (scaled to [-1, 1]) to uniformly drawn timesteps of a 1000-step
cosine schedule and regresses the noise with min-SNR-gamma weighted MSE (AdamW, warm-up then cosine decay,
gradient clipping; training/core.py's shared schedule, decaying to a tenth of the peak). An exponential moving
average of the weights (diffusers' EMAModel), its decay warmed up as (1 + step) / (10 + step), is what is evaluated
and exported. Batches, noise and timesteps depend only on (seed, step), and the optimiser, schedule and EMA are
checkpointed, so a resumed run equals an uninterrupted one. With `--condition-clip NAME` the UNet also takes the
CLIP's unit text embedding of the caption (times CONDITIONING_SCALE), added to its timestep embedding, and a share
`--condition-dropout` of the captions is replaced by the zero vector, the unconditional input of classifier-free
guidance; evaluations then also sample the 32 colour-shape prompts and count the samples in the asked colour. Evaluations sample with DDIM, save a grid
PNG and count the samples that show one clear single-coloured shape (pixel statistics, no CLIP). The result,
`out/model`, is a diffusers folder for `load_diffusion`; shipped as generators/weights/shapes-tiny-ddpm
(the built-in model 'shapes-tiny').

CLI (the shipped model's recipe; about 55 minutes on one CPU core, see docs/shapes_models.md):
    python -m training.train_diffusion --out outputs/shapes-tiny-ddpm --steps 6000 --batch-size 32 --seed 0 --threads 1 \
        --eval-every 1500 --eval-count 16
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, UNet2DModel
from torchvision.utils import save_image
from tqdm import tqdm

from generators.diffusion import (ClipConditionedDiffusion, PixelDiffusion, TextCondition, load_diffusion,
                                  make_scheduler, save_diffusion, scheduler_step)
from generators.diffusion.models import conditioning_vectors, downsampling_factor
from guidance.checkpoints import load_state_dict, save_state_dict
from guidance.clip_models import load_clip
from guidance.encoder import CLIPEncoder
from guidance.errors import InvalidInputError
from training import core
from training import shapes_world as world
from training.colour_stats import single_shape_colour
from training.core import (CHECKPOINTS, EMA, EVAL_SEED, WEIGHTS_FILE, Flag, Optimisation, RunConfig,
                           captioned_batch_at, check_run, on_threads, parse_run_config, restore, resume_step, run_steps,
                           train_and_summarise, write_metrics)

EVAL_LOSS_IMAGES = 64
EXPORT_DIR = "model"
MODEL_NAME = "shapes-tiny"
CONFIG_METADATA_KEY = "unet_config"
CONDITIONING_SCALE = 4.0  # norm of the condition vector: about that of shapes-tiny's timestep embedding (3.9-5.0)
EVAL_CFG_SCALE = 3.0  # classifier-free guidance of the evaluation's prompted samples
GRID_SCALE = 4  # sample grids are upscaled (nearest) so that 32 px images can be looked at
SCHEDULER_CONFIG: dict[str, Any] = {
    "_class_name": "DDPMScheduler", "num_train_timesteps": 1000, "beta_schedule": "squaredcos_cap_v2",
    "clip_sample": True, "prediction_type": "epsilon", "variance_type": "fixed_small",
}


def shapes_tiny_config(sample_size: int = 32) -> dict[str, Any]:
    """The shipped `shapes-tiny` UNet2DModel: 32/64/64 channels at 32/16/8 px, one res block per level and one
    attention block (the middle block's, at the lowest resolution); 1.1M parameters, 4.2 MB as float32."""
    return {"sample_size": sample_size, "in_channels": 3, "out_channels": 3, "layers_per_block": 1,
            "block_out_channels": [32, 64, 64], "down_block_types": ["DownBlock2D"] * 3,
            "up_block_types": ["UpBlock2D"] * 3, "attention_head_dim": 32, "norm_num_groups": 8}


@dataclass
class TrainConfig(RunConfig):
    """Everything a training run depends on (core's run settings, with this trainer's defaults, and its own); the
    CLI flags map one-to-one onto these fields."""

    steps: int = 6000
    lr: float = 5e-4
    image_size: int = 32
    model_config: str | dict | None = None
    split: str = "train"
    ema_decay: float = 0.999
    snr_gamma: float = 5.0
    sample_steps: int = 50
    named_only: bool = False
    sizes: tuple[str, ...] = tuple(world.SIZES)
    init: str | None = None
    condition_clip: str | None = None
    condition_dropout: float = 0.1


# The command-line flags of the fields particular to this trainer (the shared ones are core's); each
# defaults to its field.
FLAGS: tuple[Flag, ...] = (
    ("--model-config", {"help": "UNet2DModel config (JSON, e.g. a unet/config.json); default: the shapes-tiny config"}),
    ("--split", {"choices": world.SPLITS,
                 "help": "shapes-world pairs to train on ('all' includes the held-out pairs)"}),
    ("--ema-decay", {"type": float, "help": "decay of the weights' EMA"}),
    ("--snr-gamma", {"type": float, "help": "min-SNR loss weighting gamma (0: plain noise MSE)"}),
    ("--eval-every", {"type": int, "help": "sample and evaluate every this many steps (0: only at the end)"}),
    ("--eval-count", {"type": int, "help": "samples per evaluation"}),
    ("--sample-steps", {"type": int, "help": "DDIM steps per sample"}),
    ("--named-only", {"action": "store_true",
                      "help": "train only on the world's named colours and shapes (no unnamed hues or shapes)"}),
    ("--sizes", {"nargs": "+", "choices": list(world.SIZES), "help": "the shape sizes to train on"}),
    ("--init", {"help": "start from this diffusion model's weights (a built-in name or a diffusers folder) and "
                        "its UNet config; not with --model-config"}),
    ("--condition-clip", {"help": "condition the UNet on this CLIP's text embeddings of the captions (a CLIP name, "
                                  "e.g. shapes-tiny, whose embedding width is the UNet's timestep-embedding width)"}),
    ("--condition-dropout", {"type": float, "help": "share of captions replaced by the unconditional input (for "
                                                    "classifier-free guidance)"}),
)


def parse_args(argv: Sequence[str] | None = None) -> TrainConfig:
    """Read the command line into a `TrainConfig`."""
    return parse_run_config(TrainConfig, "python -m training.train_diffusion", __doc__, "run folder: checkpoints/, "
                            "model/ (the diffusers folder), sample grids, metrics.json", FLAGS, argv)


# --- model, noise and loss ----------------------------------------------------------------------------


def unet_config(config: TrainConfig) -> dict[str, Any]:
    """The UNet2DModel config of a run (`model_config`, a dict or JSON file, default `shapes_tiny_config()`), its
    sample size set to the run's image size."""
    source = config.model_config or shapes_tiny_config()
    if not isinstance(source, dict):
        try:
            source = json.loads(Path(source).expanduser().read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as error:
            raise InvalidInputError(f"cannot read the model config {source}: {str(error).splitlines()[0]}") from None
    return {**source, "sample_size": config.image_size}


def initial_unet(name: str) -> UNet2DModel:
    """The UNet2DModel of a pixel diffusion model to fine-tune (a built-in name or a diffusers folder)."""
    model = load_diffusion(name, "cpu")
    if not isinstance(model, PixelDiffusion):
        raise InvalidInputError(f"--init {name} is not a pixel-space UNet2DModel DDPM; give one like shapes-tiny")
    return model.unet


def with_condition_input(unet: UNet2DModel, width: int) -> UNet2DModel:
    """The same UNet, weights kept, with an input for a `width`-wide condition vector added to its timestep
    embedding (`class_embed_type='identity'`)."""
    time_width = unet.config.block_out_channels[0] * 4
    if width != time_width:
        raise InvalidInputError(f"the conditioning CLIP embeds texts in {width} dimensions, the UNet's timestep "
                                f"embedding has {time_width}; use a UNet with block_out_channels[0] = {width // 4}")
    conditioned = UNet2DModel.from_config(unet.config, class_embed_type="identity")
    conditioned.load_state_dict(unet.state_dict())
    return conditioned


def build_model(config: TrainConfig, condition_width: int | None = None) -> UNet2DModel:
    """A trainable RGB UNet2DModel of the run's config, initialised from `config.seed` (or from `config.init`),
    with an input for a condition vector when `condition_width` is given."""
    try:
        if config.init:
            unet = initial_unet(config.init)
            if unet.config.sample_size != config.image_size:
                raise InvalidInputError(f"--init {config.init} samples {unet.config.sample_size} px; "
                                        f"use --image-size {unet.config.sample_size}")
        else:
            with torch.random.fork_rng():
                torch.manual_seed(config.seed)
                unet = UNet2DModel.from_config(unet_config(config))
    except (TypeError, ValueError, KeyError) as error:
        reason = str(error).splitlines()[0]
        raise InvalidInputError(f"the model config does not build a UNet2DModel: {reason}") from None
    if unet.config.in_channels != 3 or unet.config.out_channels != 3:
        raise InvalidInputError("the model config must have in_channels and out_channels 3 (RGB pixels)")
    if condition_width is not None:
        unet = with_condition_input(unet, condition_width)
    factor = downsampling_factor(unet.config.block_out_channels)
    if config.image_size < 16 or config.image_size % factor:
        raise InvalidInputError(f"--image-size {config.image_size} must be at least 16 and a multiple of {factor} "
                                "(the UNet's downsampling), e.g. 32")
    return unet.requires_grad_(True).train()


def noise_schedule() -> torch.Tensor:
    """alpha_bar(t) of the training schedule, float32, one per timestep."""
    settings = {key: value for key, value in SCHEDULER_CONFIG.items() if not key.startswith("_")}
    return DDPMScheduler.from_config(settings).alphas_cumprod.float()


def step_noise(shape: Sequence[int], seed: int, step: int, timesteps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The noise and the timesteps (one per image) of one step, drawn from a generator seeded by (seed, step)."""
    generator = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, step]).generate_state(1)[0]))
    t = torch.randint(0, timesteps, (shape[0],), generator=generator)
    return torch.randn(tuple(shape), generator=generator), t


def diffusion_loss(unet: UNet2DModel, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor,
                   alphas_cumprod: torch.Tensor, snr_gamma: float = 0.0,
                   vectors: torch.Tensor | None = None) -> torch.Tensor:
    """Noise-prediction MSE of samples x0 (in [-1, 1]) noised to timesteps t (under condition `vectors`, for a
    conditioned UNet), each image weighted by min(1, snr_gamma / SNR(t)) when `snr_gamma` is set (min-SNR
    weighting), else plainly averaged."""
    alpha = alphas_cumprod[t].view(-1, 1, 1, 1)
    noisy = alpha.sqrt() * x0 + (1 - alpha).sqrt() * noise
    per_image = F.mse_loss(unet(noisy, t, class_labels=vectors).sample, noise, reduction="none").mean((1, 2, 3))
    if snr_gamma:
        per_image = per_image * (snr_gamma * (1 - alpha.flatten()) / alpha.flatten()).clamp(max=1.0)
    return per_image.mean()


def build_optimisation(unet: UNet2DModel, config: TrainConfig) -> Optimisation:
    """AdamW on the shared warm-up + cosine schedule, decaying to a tenth of the peak."""
    return Optimisation(torch.optim.AdamW(unet.parameters(), lr=config.lr), config.warmup_steps, config.steps,
                        config.grad_clip, final_lr_share=0.1)


def caption_vectors(encoder: CLIPEncoder, captions: list[str], seed: int, step: int, dropout: float) -> torch.Tensor:
    """The condition vectors of one step's captions, a share `dropout` of them (drawn from (seed, step)) replaced
    by the unconditional zero vector."""
    generator = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, step, 1]).generate_state(1)[0]))
    dropped = (torch.rand(len(captions), generator=generator) < dropout).tolist()
    texts = ["" if drop else caption for caption, drop in zip(captions, dropped)]
    return conditioning_vectors(encoder, texts, CONDITIONING_SCALE)


def train_step(unet: UNet2DModel, ema: EMA, optimisation: Optimisation, images: torch.Tensor, step: int,
               alphas_cumprod: torch.Tensor, config: TrainConfig, vectors: torch.Tensor | None = None) -> float:
    """One optimiser step on images in [0, 1] (under condition `vectors`, for a conditioned UNet), then the EMA
    update; returns the step's loss."""
    noise, t = step_noise(images.shape, config.seed, step, len(alphas_cumprod))
    loss = diffusion_loss(unet, images * 2 - 1, noise, t, alphas_cumprod, config.snr_gamma, vectors)
    optimisation.step(loss)
    ema.step(unet.parameters())
    return float(loss.detach())


# --- sampling and evaluation --------------------------------------------------------------------------


@torch.no_grad()
def sample(model: PixelDiffusion, count: int, steps: int = 50, seed: int = EVAL_SEED,
           condition: TextCondition | None = None) -> torch.Tensor:
    """`count` deterministic DDIM samples (eta 0, `steps` steps) at the model's size, in [0, 1]: unguided, or
    following `condition` (one vector per sample) for a conditioned model."""
    sampler = make_scheduler("ddim", model.scheduler_config, steps)
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn((count, *model.sample_shape(*model.native_size)), generator=generator)
    for t in sampler.timesteps.tolist():
        x, _ = scheduler_step(sampler, model.predict_eps(x, t, condition), t, x, 0.0, generator)
    return model.to_image(x).clamp(0, 1)


def prompted_samples(model: ClipConditionedDiffusion, count: int, steps: int) -> tuple[torch.Tensor, list[str]]:
    """`count` samples of a conditioned model, prompted in turn with the world's colour-shape pairs (classifier-free
    guidance at EVAL_CFG_SCALE), and the colour each was asked for."""
    pairs = [(colour, shape) for colour in world.COLOURS for shape in world.SHAPES]
    asked = [pairs[(index * 5) % len(pairs)] for index in range(count)]  # 5 is coprime with 32: every pair in turn
    vectors = conditioning_vectors(model.encoder, [world.with_articles(f"a {c} {s}") for c, s in asked],
                                   model.embedding_scale)
    images = sample(model, count, steps, condition=TextCondition(vectors, torch.zeros_like(vectors), EVAL_CFG_SCALE))
    return images, [colour for colour, _ in asked]


def as_arrays(images: torch.Tensor) -> list[np.ndarray]:
    """BCHW images in [0, 1] as HxWx3 uint8 arrays."""
    return list((images.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy())


def shape_statistics(images: torch.Tensor) -> dict[str, Any]:
    """The share of images showing one clear single-coloured shape, and how many of them have each colour."""
    colours = [single_shape_colour(image) for image in as_arrays(images)]
    found = [colour for colour in colours if colour is not None]
    return {"clear_shapes": len(found) / max(len(colours), 1),
            "colours": {name: found.count(name) for name in sorted(set(found))}}


def eval_batch(config: TrainConfig, timesteps: int, encoder: CLIPEncoder | None) -> tuple[torch.Tensor, ...]:
    """Fixed data for the evaluation loss: images of the run's split in [-1, 1], noise, evenly spread timesteps,
    and for a conditioned run its captions' condition vectors (none dropped)."""
    dataset = world.ShapesDataset(EVAL_LOSS_IMAGES, EVAL_SEED, config.split, config.image_size,
                                  unnamed=not config.named_only, sizes=config.sizes)
    images, captions = captioned_batch_at(dataset, 0, EVAL_LOSS_IMAGES)
    noise, _ = step_noise(images.shape, EVAL_SEED, 0, timesteps)
    vectors = None if encoder is None else caption_vectors(encoder, captions, EVAL_SEED, 0, 0.0)
    return images * 2 - 1, noise, torch.linspace(0, timesteps - 1, EVAL_LOSS_IMAGES).round().long(), vectors


@torch.no_grad()
def evaluate(model: PixelDiffusion, fixed: tuple[torch.Tensor, torch.Tensor, torch.Tensor], config: TrainConfig,
             grid: Path | None) -> dict[str, Any]:
    """Plain noise-prediction MSE on the fixed batch, and the shape statistics of `eval_count` DDIM samples
    (saved as a grid PNG at `grid` when given); a conditioned model's samples are prompted with the colour-shape
    pairs, and the share showing a clear shape of the asked colour is added."""
    x0, noise, t, vectors = fixed
    metrics: dict[str, Any] = {"eval_loss": float(diffusion_loss(model.unet, x0, noise, t, model.alphas_cumprod.float(),
                                                                 vectors=vectors))}
    if config.eval_count:
        if isinstance(model, ClipConditionedDiffusion):
            images, asked = prompted_samples(model, config.eval_count, config.sample_steps)
            colours = [single_shape_colour(image) for image in as_arrays(images)]
            metrics["asked_colour"] = sum(c == a for c, a in zip(colours, asked)) / len(asked)
        else:
            images = sample(model, config.eval_count, config.sample_steps)
        metrics.update(shape_statistics(images))
        if grid is not None:
            grid.parent.mkdir(parents=True, exist_ok=True)
            save_image(F.interpolate(images, scale_factor=GRID_SCALE, mode="nearest"), grid,
                       nrow=math.ceil(math.sqrt(len(images))), padding=GRID_SCALE, pad_value=1.0)
    return metrics


# --- checkpoints --------------------------------------------------------------------------------------


def _config_json(unet: UNet2DModel) -> str:
    """The UNet's architecture as canonical JSON, to recognise it in checkpoints."""
    return json.dumps(dict(unet.config), sort_keys=True)


def save_checkpoint(directory: Path, unet: UNet2DModel, ema: EMA, optimisation: Optimisation, step: int) -> Path:
    """Write `directory/step-N`: the weights and their EMA (safetensors, with the architecture), the optimisation
    and the EMA's step count."""
    weights = {**{f"model.{k}": v for k, v in unet.state_dict().items()},
               **{f"ema.{k}": v for k, v in ema.copy_to_module().state_dict().items()}}
    return core.save_checkpoint(
        directory, step, lambda path: save_state_dict(weights, path, {CONFIG_METADATA_KEY: _config_json(unet)}),
        optimisation, {"ema": ema.hyper_state()})


def load_checkpoint(path: Path, unet: UNet2DModel, ema: EMA, optimisation: Optimisation) -> int:
    """Restore the weights, their EMA, the optimisation and torch's random state from a checkpoint; return its
    step."""
    weights, metadata = load_state_dict(path / WEIGHTS_FILE)
    if metadata.get(CONFIG_METADATA_KEY) != _config_json(unet):
        raise InvalidInputError(f"checkpoint {path} holds another architecture; resume with its model config")
    for prefix, module in (("model.", unet), ("ema.", ema.module)):
        module.load_state_dict({k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)})
    state = restore(path, optimisation)
    ema.load_state_dict({**state["ema"], "shadow_params": [p.detach().clone() for p in ema.module.parameters()]})
    return int(state["step"])


# --- training -----------------------------------------------------------------------------------------


def _check(config: TrainConfig) -> None:
    """Refuse settings that cannot train, with the fix in the message."""
    check_run(config.steps, config.batch_size, config.resume, config.out)
    if config.seed < 0:
        raise InvalidInputError(f"--seed {config.seed} must be 0 or more")
    if not 0 <= config.ema_decay < 1 or config.snr_gamma < 0:
        raise InvalidInputError("--ema-decay must be in [0, 1) and --snr-gamma 0 or more")
    if config.eval_count < 0 or config.sample_steps < 1:
        raise InvalidInputError("--eval-count must be 0 or more and --sample-steps at least 1")
    if not 0 <= config.condition_dropout < 1:
        raise InvalidInputError(f"--condition-dropout {config.condition_dropout} must be in [0, 1)")
    if config.init and config.model_config:
        raise InvalidInputError("--init fine-tunes a model with its own UNet config and --model-config builds a new "
                                "one; give one of them")
    world.pairs_for_split(config.split)


def _report(step: int, metrics: dict[str, Any], count: int) -> None:
    """Print one evaluation line."""
    line = f"step {step}: eval loss {metrics['eval_loss']:.4f}"
    if "clear_shapes" in metrics:
        line += (f", {round(metrics['clear_shapes'] * count)}/{count} samples show one clear single-colour shape "
                 f"{metrics['colours']}")
    if "asked_colour" in metrics:
        line += f"; {round(metrics['asked_colour'] * count)}/{count} in the asked colour"
    tqdm.write(line)


def _finish(config: TrainConfig, model: PixelDiffusion, metrics: dict[str, Any], data: torch.Tensor,
            losses: list[float], seconds: float) -> None:
    """Export the EMA model as a diffusers folder and write `metrics.json` next to it (with the share of clear
    single-colour shapes among the training images `data`, in [-1, 1], to compare the samples' with)."""
    folder = save_diffusion(model, Path(config.out) / EXPORT_DIR)
    summary = {"steps": config.steps, "train_loss": float(np.mean(losses[-100:])) if losses else None, **metrics,
               "data_clear_shapes": shape_statistics((data + 1) / 2)["clear_shapes"],
               "parameters": sum(p.numel() for p in model.unet.parameters())}
    write_metrics(config, folder, summary, seconds)


@on_threads
def train(config: TrainConfig) -> PixelDiffusion:
    """Train a DDPM as `config` says; returns the EMA model, exported to `config.out/model` when `out` is set."""
    _check(config)
    started = time.perf_counter()
    encoder = load_clip(config.condition_clip).requires_grad_(False) if config.condition_clip else None
    unet = build_model(config, None if encoder is None else encoder.embed_dim)
    ema = EMA(unet, config.ema_decay)
    info: dict[str, Any] = {"training": {key: value for key, value in asdict(config).items()
                                         if key not in ("out", "resume", "threads", "progress")}}
    if encoder is None:
        model = PixelDiffusion(ema.module, SCHEDULER_CONFIG, MODEL_NAME, info)
    else:
        info["conditioning"] = {"clip": config.condition_clip, "scale": CONDITIONING_SCALE}
        info["cfg_scale"] = EVAL_CFG_SCALE  # the pipelines' default for this model
        model = ClipConditionedDiffusion(ema.module, encoder, SCHEDULER_CONFIG, MODEL_NAME, info)
    optimisation = build_optimisation(unet, config)
    alphas_cumprod = noise_schedule()
    torch.manual_seed(config.seed)  # only dropout (off in shapes_tiny_config) draws from the global generator
    checkpoints = Path(config.out) / CHECKPOINTS if config.out else None
    start = resume_step(checkpoints if config.resume else None,
                        lambda path: load_checkpoint(path, unet, ema, optimisation))
    dataset = world.ShapesDataset(config.steps * config.batch_size, config.seed, config.split, config.image_size,
                                  unnamed=not config.named_only, sizes=config.sizes)
    fixed = eval_batch(config, len(alphas_cumprod), encoder)
    losses: list[float] = []

    def step(index: int) -> dict[str, str]:
        """One training step; what the progress bar shows."""
        images, captions = captioned_batch_at(dataset, index, config.batch_size)
        vectors = None if encoder is None else caption_vectors(encoder, captions, config.seed, index,
                                                               config.condition_dropout)
        losses.append(train_step(unet, ema, optimisation, images, index, alphas_cumprod, config, vectors))
        return {"loss": f"{np.mean(losses[-50:]):.4f}"}

    def report(done: int) -> None:
        """Evaluate the EMA model, saving its samples' grid in the run folder."""
        grid = Path(config.out) / f"samples-step-{done:08d}.png" if config.out else None
        ema.copy_to_module()
        _report(done, evaluate(model, fixed, config, grid), config.eval_count)

    run_steps(step, start, config, "train-diffusion", evaluate=report,
              checkpoint=(lambda done: save_checkpoint(checkpoints, unet, ema, optimisation, done))
              if checkpoints else None)
    ema.copy_to_module()
    if config.out:
        _finish(config, model, evaluate(model, fixed, config, Path(config.out) / "samples.png"), fixed[0], losses,
                time.perf_counter() - started)
    return model


# --- CLI ----------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> None:
    """CLI entry point: train, export, and print the final evaluation."""
    config = parse_args(argv)
    _report(config.steps, train_and_summarise(train, config, EXPORT_DIR), config.eval_count)


if __name__ == "__main__":
    main()
