"""Train a small taming-architecture VQ autoencoder (a VQGAN without the adversarial term) on the shapes world.

Loss: L1 + MSE reconstruction, plus the VQ-VAE codebook loss and beta * commitment loss; codes left unused for
`restart_every` steps are restarted from encoder outputs, so the whole codebook stays in use. Batches depend only
on (seed, step) and every random state is checkpointed, so a resumed run equals an uninterrupted one. The result
is exported with `save_vqgan`, so `load_vqgan(path)` (and `--vqgan path`) load it.

CLI: python -m pipelines.train_vqgan --out outputs/shapes-tiny-vqgan --steps 3600 --seed 0 --threads 1
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import torch
import torch.nn.functional as F
from tqdm import tqdm

from generators.vqgan import VQGAN, nearest_codes, parse_config, save_vqgan, tiny_vqgan_config
from generators.vqgan.loading import CONFIG_METADATA_KEY
from guidance.checkpoints import load_state_dict
from guidance.errors import InvalidInputError
from pipelines import shapes_world as world
from pipelines import training
from pipelines.training import (CHECKPOINTS, WEIGHTS_FILE, add_run_arguments, batch_at, check_run, due,
                                learning_rate, optimizer_step, progress_bar, read_state, resume_step, torch_threads,
                                train_or_exit)

EVAL_SEED = 20240601
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
class TrainConfig:
    """Everything a training run depends on; the CLI flags map one-to-one onto these fields."""

    out: str | None = None
    model_config: str | dict | None = None
    steps: int = 3600
    batch_size: int = 4
    lr: float = 1e-3
    warmup_steps: int = 100
    l1_weight: float = 1.0
    mse_weight: float = 1.0
    beta: float = 0.25
    restart_every: int = 50
    grad_clip: float = 1.0
    seed: int = 0
    image_size: int = 64
    eval_every: int = 600
    eval_count: int = 256
    checkpoint_every: int = 600
    resume: bool = False
    threads: int | None = None
    progress: bool = True


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


def train_step(model: VQGAN, optimizer: torch.optim.Optimizer, images: torch.Tensor, step: int,
               counts: torch.Tensor, generator: torch.Generator, config: TrainConfig) -> dict[str, float]:
    """One optimiser step (restarting dead codes every `restart_every` steps first); returns the loss terms."""
    if config.restart_every and step % config.restart_every == 0:
        with torch.no_grad():
            restart_dead_codes(model.codebook, counts, model.encode(images), generator)
    recon, quantized = reconstruct(model, images)
    counts += torch.bincount(quantized.indices.flatten(), minlength=counts.numel())
    terms = loss_terms(images, recon, quantized, config)
    optimizer_step(optimizer, terms["loss"], learning_rate(step, config.lr, config.warmup_steps, config.steps),
                   config.grad_clip)
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
    training = model.training
    model.eval()
    scores, counts = [], torch.zeros(model.n_embed)
    for chunk in images.split(batch_size):
        z = model.encode(chunk)
        scores.append(psnr(model.decode(z), chunk))
        counts += torch.bincount(nearest_codes(z, model.codebook).flatten(), minlength=model.n_embed)
    model.train(training)
    probabilities = counts / counts.sum()
    entropy = -(probabilities * probabilities.clamp_min(1e-12).log()).sum()
    return {"psnr": float(torch.cat(scores).mean()), "codes_used": int((counts > 0).sum()),
            "perplexity": float(entropy.exp())}


# --- checkpoints --------------------------------------------------------------------------------------


def save_checkpoint(directory: Path, model: VQGAN, optimizer: torch.optim.Optimizer, step: int,
                    counts: torch.Tensor, generator: torch.Generator) -> Path:
    """Write `directory/step-N`: the model as an exported VQGAN, optimiser, code counts and random states."""
    return training.save_checkpoint(directory, step, lambda path: save_vqgan(model, path),
                                    {"optimizer": optimizer.state_dict(), "code_counts": counts,
                                     "generator": generator.get_state()})


def load_checkpoint(path: Path, model: VQGAN, optimizer: torch.optim.Optimizer, counts: torch.Tensor,
                    generator: torch.Generator) -> int:
    """Restore model, optimiser, code counts and random states from a checkpoint; return its step."""
    weights, metadata = load_state_dict(path / WEIGHTS_FILE)
    if json.loads(metadata.get(CONFIG_METADATA_KEY, "null")) != json.loads(json.dumps(model.config.to_taming())):
        raise InvalidInputError(f"checkpoint {path} holds another architecture; resume with its model config")
    model.load_state_dict(weights)
    state = read_state(path)
    optimizer.load_state_dict(state["optimizer"])
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
    out = Path(config.out)
    save_vqgan(model, out / EXPORT_NAME)
    summary = {**metrics, "seconds": round(seconds, 1), "bytes": (out / EXPORT_NAME).stat().st_size,
               "eval_images": config.eval_count, "config": asdict(config)}
    (out / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")


def _run(config: TrainConfig) -> VQGAN:
    """The training loop of `train`, on the current thread settings."""
    started = time.perf_counter()
    model = build_model(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, betas=(0.9, 0.99))
    counts = torch.zeros(model.n_embed, dtype=torch.long)
    generator = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)
    start = resume_step(config.out, config.resume,
                        lambda path: load_checkpoint(path, model, optimizer, counts, generator))
    dataset = world.ShapesDataset(config.steps * config.batch_size, config.seed, "train", config.image_size)
    eval_images = held_out_images(config.eval_count, config.image_size) if config.eval_count else None
    bar = progress_bar(start, config.steps, "train-vqgan", config.progress)
    for step in bar:
        terms = train_step(model, optimizer, batch_at(dataset, step, config.batch_size), step, counts, generator,
                           config)
        bar.set_postfix(loss=f"{terms['loss']:.4f}", rec=f"{terms['rec']:.4f}", commit=f"{terms['commit']:.4f}")
        if eval_images is not None and due(step, config.eval_every):
            _report(step + 1, evaluate(model, eval_images))
        if config.out and due(step, config.checkpoint_every):
            save_checkpoint(Path(config.out) / CHECKPOINTS, model, optimizer, step + 1, counts, generator)
    model.eval().requires_grad_(False)
    if config.out:
        _finish(config, model, evaluate(model, eval_images) if eval_images is not None else {},
                time.perf_counter() - started)
    return model


def train(config: TrainConfig) -> VQGAN:
    """Train a VQGAN as `config` says; export it to `config.out/vqgan.safetensors` when `out` is set."""
    check_run(config.steps, config.batch_size, config.resume, config.out)
    with torch_threads(config.threads):
        return _run(config)


# --- CLI ----------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> TrainConfig:
    """Read the command line into a `TrainConfig`."""
    defaults = TrainConfig()
    parser = argparse.ArgumentParser(prog="python -m pipelines.train_vqgan", description=__doc__.split("\n\n")[0])
    add_run_arguments(parser, defaults, "run folder: checkpoints/, vqgan.safetensors, metrics.json")
    parser.add_argument("--model-config", default=None,
                        help="taming model.yaml (or JSON) of the architecture; default: the shapes-tiny f4 config")
    parser.add_argument("--l1-weight", type=float, default=defaults.l1_weight, help="weight of the L1 loss")
    parser.add_argument("--mse-weight", type=float, default=defaults.mse_weight, help="weight of the MSE loss")
    parser.add_argument("--beta", type=float, default=defaults.beta, help="weight of the commitment loss")
    parser.add_argument("--restart-every", type=int, default=defaults.restart_every,
                        help="restart codes unused for this many steps (0: never)")
    parser.add_argument("--eval-every", type=int, default=defaults.eval_every,
                        help="report held-out PSNR every this many steps (0: only at the end)")
    parser.add_argument("--eval-count", type=int, default=defaults.eval_count, help="held-out images to evaluate")
    return TrainConfig(**vars(parser.parse_args(argv)))


def main(argv: Sequence[str] | None = None) -> None:
    """CLI entry point: train, export, and print the final held-out evaluation."""
    config = parse_args(argv)
    train_or_exit(train, config)
    summary = json.loads((Path(config.out) / "metrics.json").read_text(encoding="utf-8"))
    print(f"wrote {Path(config.out) / EXPORT_NAME} ({summary['bytes']} bytes) in {summary['seconds']:.0f} s")
    if "psnr" in summary:
        _report(config.steps, summary)


if __name__ == "__main__":
    main()
