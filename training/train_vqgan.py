"""Train a small taming-architecture VQ autoencoder (a VQGAN without the adversarial term) on the shapes world.

Loss: L1 + MSE reconstruction, plus the VQ-VAE codebook loss and beta * commitment loss; codes left unused for
`restart_every` steps are restarted from encoder outputs, so the whole codebook stays in use. Batches depend only
on (seed, step) and every random state is checkpointed, so a resumed run equals an uninterrupted one. The result
is exported with `save_vqgan`, so `load_vqgan(path)` (and `--vqgan path`) load it.

CLI: python -m training.train_vqgan --out outputs/shapes-tiny-vqgan --steps 3600 --seed 0 --threads 1
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import torch
import torch.nn.functional as F
from tqdm import tqdm

from generators.vqgan import VQGAN, nearest_codes, parse_config, save_vqgan, tiny_vqgan_config
from generators.vqgan.loading import CONFIG_METADATA_KEY
from guidance.checkpoints import load_state_dict
from guidance.errors import InvalidInputError
from training import core
from training import shapes_world as world
from training.core import (CHECKPOINTS, EVAL_SEED, WEIGHTS_FILE, Flag, Optimisation, RunConfig, batch_at,
                           check_run, evaluating, on_threads, parse_run_config, restore, resume_step, run_steps,
                           train_and_summarise, write_metrics)

EXPORT_NAME = "vqgan.safetensors"


def shapes_tiny_config() -> dict[str, Any]:
    """The shipped `shapes-tiny` architecture: f4 (64x64 images -> 16x16 latents), 512 codes of 16 dims.

    Taming's GroupNorm has 32 groups; at 32 channels it normalises every channel alone over the image, which
    leaves the decoder's last layer unable to reproduce an image's colours, so the full-resolution width is 64.
    No encoder res blocks and average-pool / nearest resampling (`resamp_with_conv: false`) keep it CPU-cheap."""
    config = tiny_vqgan_config(ch=64, ch_mult=(1, 1, 1), num_res_blocks=0, z_channels=32, embed_dim=16,
                               n_embed=512, resolution=64)
    config["model"]["params"]["ddconfig"]["resamp_with_conv"] = False
    return config


@dataclass
class TrainConfig(RunConfig):
    """Everything a training run depends on (core's run settings, with this trainer's defaults, and its own); the
    CLI flags map one-to-one onto these fields."""

    steps: int = 3600
    batch_size: int = 4
    eval_count: int = 256
    model_config: str | dict | None = None
    l1_weight: float = 1.0
    mse_weight: float = 1.0
    beta: float = 0.25
    restart_every: int = 50


# The command-line flags of the fields particular to this trainer (the shared ones are core's); each
# defaults to its field.
FLAGS: tuple[Flag, ...] = (
    ("--model-config", {"help": "taming model.yaml (or JSON) of the architecture; default: the shapes-tiny f4 config"}),
    ("--l1-weight", {"type": float, "help": "weight of the L1 loss"}),
    ("--mse-weight", {"type": float, "help": "weight of the MSE loss"}),
    ("--beta", {"type": float, "help": "weight of the commitment loss"}),
    ("--restart-every", {"type": int, "help": "restart codes unused for this many steps (0: never)"}),
    ("--eval-every", {"type": int, "help": "report held-out PSNR every this many steps (0: only at the end)"}),
    ("--eval-count", {"type": int, "help": "held-out images to evaluate"}),
)


def parse_args(argv: Sequence[str] | None = None) -> TrainConfig:
    """Read the command line into a `TrainConfig`."""
    return parse_run_config(TrainConfig, "python -m training.train_vqgan", __doc__,
                            "run folder: checkpoints/, vqgan.safetensors, metrics.json", FLAGS, argv)


class Quantized(NamedTuple):
    """Nearest-code quantisation of a latent: straight-through output, code indices and the two VQ-VAE losses."""

    latent: torch.Tensor
    indices: torch.Tensor
    codebook_loss: torch.Tensor
    commitment_loss: torch.Tensor


# --- model and losses ---------------------------------------------------------------------------------


def build_model(config: TrainConfig) -> VQGAN:
    """A trainable VQGAN of `config.model_config` (default `shapes_tiny_config()`), initialised from `config.seed`."""
    with torch.random.fork_rng():
        torch.manual_seed(config.seed)
        model = VQGAN(parse_config(config.model_config or shapes_tiny_config()))
    if model.config.gumbel:
        raise InvalidInputError("train_vqgan trains nearest-code VQGANs (VQModel); pass a config without GumbelVQ")
    return model.requires_grad_(True).train()


def quantize(z: torch.Tensor, codebook: torch.Tensor) -> Quantized:
    """Quantise `z` to its nearest codes: codebook loss moves codes to `z`, commitment loss moves `z` to codes."""
    indices = nearest_codes(z, codebook)
    codes = F.embedding(indices, codebook).movedim(-1, 1)
    return Quantized(latent=z + (codes - z).detach(), indices=indices,
                     codebook_loss=F.mse_loss(codes, z.detach()), commitment_loss=F.mse_loss(z, codes.detach()))


def reconstruct(model: VQGAN, images: torch.Tensor) -> tuple[torch.Tensor, Quantized]:
    """Unclamped reconstruction (about [0, 1]) of images in [0, 1], and the quantisation it went through."""
    quantized = quantize(model.encode(images), model.codebook)
    return (model.decoder(model.post_quant_conv(quantized.latent)) + 1) / 2, quantized


def loss_terms(images: torch.Tensor, recon: torch.Tensor, quantized: Quantized,
               config: TrainConfig) -> dict[str, torch.Tensor]:
    """The weighted total loss and its parts (reconstruction, codebook, commitment)."""
    rec = config.l1_weight * F.l1_loss(recon, images) + config.mse_weight * F.mse_loss(recon, images)
    total = rec + quantized.codebook_loss + config.beta * quantized.commitment_loss
    return {"loss": total, "rec": rec, "codebook": quantized.codebook_loss, "commit": quantized.commitment_loss}


@torch.no_grad()
def restart_dead_codes(codebook: torch.Tensor, counts: torch.Tensor, z: torch.Tensor,
                       generator: torch.Generator) -> int:
    """Move codes with a zero count onto randomly chosen latent vectors of `z`, reset the counts; return how many."""
    dead = (counts == 0).nonzero().squeeze(1)
    vectors = z.detach().movedim(1, -1).reshape(-1, z.shape[1])
    codebook[dead] = vectors[torch.randint(vectors.shape[0], (dead.numel(),), generator=generator)]
    counts.zero_()
    return dead.numel()


def build_optimisation(model: VQGAN, config: TrainConfig) -> Optimisation:
    """Adam (betas 0.9, 0.99) on the shared warm-up + cosine schedule, decaying to a tenth of the peak."""
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, betas=(0.9, 0.99))
    return Optimisation(optimizer, config.warmup_steps, config.steps, config.grad_clip, final_lr_share=0.1)


def train_step(model: VQGAN, optimisation: Optimisation, images: torch.Tensor, step: int,
               counts: torch.Tensor, generator: torch.Generator, config: TrainConfig) -> dict[str, float]:
    """One optimiser step (restarting dead codes every `restart_every` steps first); returns the loss terms."""
    if config.restart_every and step % config.restart_every == 0:
        with torch.no_grad():
            restart_dead_codes(model.codebook, counts, model.encode(images), generator)
    recon, quantized = reconstruct(model, images)
    counts += torch.bincount(quantized.indices.flatten(), minlength=counts.numel())
    terms = loss_terms(images, recon, quantized, config)
    optimisation.step(terms["loss"])
    return {name: float(value.detach()) for name, value in terms.items()}


# --- data and evaluation ------------------------------------------------------------------------------


def held_out_images(count: int, image_size: int = 64, seed: int = EVAL_SEED) -> torch.Tensor:
    """`count` images (BCHW in [0, 1]) of the held-out (colour, shape) pairs, never seen in training."""
    dataset = world.ShapesDataset(count, seed, "held_out", image_size)
    return torch.stack([dataset[index][0] for index in range(count)])


def psnr(images: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of images in [0, 1] against `reference`."""
    mse = (images.float() - reference.float()).square().flatten(1).mean(1)
    return -10 * torch.log10(mse.clamp_min(1e-10))


@torch.no_grad()
def evaluate(model: VQGAN, images: torch.Tensor, batch_size: int = 64) -> dict[str, float]:
    """Mean PSNR of `model.decode(model.encode(images))`, codes used and codebook perplexity over `images`."""
    scores, counts = [], torch.zeros(model.n_embed)
    with evaluating(model):
        for chunk in images.split(batch_size):
            z = model.encode(chunk)
            scores.append(psnr(model.decode(z), chunk))
            counts += torch.bincount(nearest_codes(z, model.codebook).flatten(), minlength=model.n_embed)
    probabilities = counts / counts.sum()
    entropy = -(probabilities * probabilities.clamp_min(1e-12).log()).sum()
    return {"psnr": float(torch.cat(scores).mean()), "codes_used": int((counts > 0).sum()),
            "perplexity": float(entropy.exp())}


# --- checkpoints --------------------------------------------------------------------------------------


def save_checkpoint(directory: Path, model: VQGAN, optimisation: Optimisation, step: int,
                    counts: torch.Tensor, generator: torch.Generator) -> Path:
    """Write `directory/step-N`: the model as an exported VQGAN, the optimisation, code counts and random states."""
    return core.save_checkpoint(directory, step, lambda path: save_vqgan(model, path), optimisation,
                                {"code_counts": counts, "generator": generator.get_state()})


def load_checkpoint(path: Path, model: VQGAN, optimisation: Optimisation, counts: torch.Tensor,
                    generator: torch.Generator) -> int:
    """Restore model, optimisation, code counts and random states from a checkpoint; return its step."""
    weights, metadata = load_state_dict(path / WEIGHTS_FILE)
    if json.loads(metadata.get(CONFIG_METADATA_KEY, "null")) != json.loads(json.dumps(model.config.to_taming())):
        raise InvalidInputError(f"checkpoint {path} holds another architecture; resume with its model config")
    model.load_state_dict(weights)
    state = restore(path, optimisation)
    counts.copy_(state["code_counts"])
    generator.set_state(state["generator"])
    return int(state["step"])


# --- training -----------------------------------------------------------------------------------------


def _report(step: int, metrics: dict[str, float]) -> None:
    """Print one evaluation line."""
    tqdm.write(f"step {step}: held-out PSNR {metrics['psnr']:.2f} dB, {metrics['codes_used']} codes used, "
               f"perplexity {metrics['perplexity']:.1f}")


def _finish(config: TrainConfig, model: VQGAN, metrics: dict[str, float], seconds: float) -> None:
    """Export the trained model and write `metrics.json` next to it."""
    export = Path(config.out) / EXPORT_NAME
    save_vqgan(model, export)
    write_metrics(config, export, {**metrics, "eval_images": config.eval_count}, seconds)


@on_threads
def train(config: TrainConfig) -> VQGAN:
    """Train a VQGAN as `config` says; export it to `config.out/vqgan.safetensors` when `out` is set."""
    check_run(config.steps, config.batch_size, config.resume, config.out)
    started = time.perf_counter()
    model = build_model(config)
    optimisation = build_optimisation(model, config)
    counts = torch.zeros(model.n_embed, dtype=torch.long)
    generator = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)
    checkpoints = Path(config.out) / CHECKPOINTS if config.out else None
    start = resume_step(checkpoints if config.resume else None,
                        lambda path: load_checkpoint(path, model, optimisation, counts, generator))
    dataset = world.ShapesDataset(config.steps * config.batch_size, config.seed, "train", config.image_size)
    eval_images = held_out_images(config.eval_count, config.image_size) if config.eval_count else None

    def step(index: int) -> dict[str, str]:
        """One training step; what the progress bar shows."""
        terms = train_step(model, optimisation, batch_at(dataset, index, config.batch_size), index, counts,
                           generator, config)
        return {key: f"{terms[key]:.4f}" for key in ("loss", "rec", "commit")}

    run_steps(step, start, config, "train-vqgan",
              evaluate=(lambda done: _report(done, evaluate(model, eval_images))) if eval_images is not None else None,
              checkpoint=(lambda done: save_checkpoint(checkpoints, model, optimisation, done, counts, generator))
              if checkpoints else None)
    model.eval().requires_grad_(False)
    if config.out:
        _finish(config, model, evaluate(model, eval_images) if eval_images is not None else {},
                time.perf_counter() - started)
    return model


# --- CLI ----------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> None:
    """CLI entry point: train, export, and print the final held-out evaluation."""
    config = parse_args(argv)
    if "psnr" in (summary := train_and_summarise(train, config, EXPORT_NAME)):
        _report(config.steps, summary)


if __name__ == "__main__":
    main()
