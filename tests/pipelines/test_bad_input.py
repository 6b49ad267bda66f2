"""The bad-input catalogue: each bad argument or file gives one line and exit 2, before any model loads, on every
pipeline CLI; outputs are checked up front and never lost (atomic writes, progress beside the output)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from generators.diffusion import random_pixel_model, save_diffusion
from generators.vqgan import VQGAN, parse_config, save_vqgan, tiny_vqgan_config
from guidance import InvalidInputError, ToolkitError, read_recipe, save_clip, save_png
from guidance.validation import MAX_CUTN, MAX_STEPS
from pipelines import clip_guided_diffusion, pixels_clip, vqgan_clip
from pipelines.common import PipelineOutput, run_cli
from pipelines.latent_optimization import build_parser
from pipelines.pixels_clip import PixelsCLIPPipeline

REPO = Path(__file__).resolve().parents[2]
MODULES = {"vqgan_clip": vqgan_clip, "pixels_clip": pixels_clip, "clip_guided_diffusion": clip_guided_diffusion}
ALL = tuple(MODULES)
LATENT = ("vqgan_clip", "pixels_clip")


@pytest.fixture(scope="module")
def model_files(tmp_path_factory, tiny_clip) -> dict[str, str]:
    """The tiny CLIP, a tiny VQGAN and a tiny pixel diffusion model, saved as a user would pass them."""
    folder = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    save_clip(tiny_clip, folder / "clip.safetensors")
    save_vqgan(VQGAN(parse_config(tiny_vqgan_config())), folder / "vqgan.safetensors")
    save_diffusion(random_pixel_model(seed=0), folder / "pixel")
    return {"clip": str(folder / "clip.safetensors"), "vqgan": str(folder / "vqgan.safetensors"),
            "pixel": str(folder / "pixel")}


def model_args(name: str, files: dict[str, str]) -> list[str]:
    """The options that point a CLI at the tiny models, on CPU, with few cutouts."""
    models = {"vqgan_clip": ["--vqgan", files["vqgan"]], "pixels_clip": [],
              "clip_guided_diffusion": ["--model", files["pixel"]]}[name]
    return ["--clip-model", files["clip"], "--device", "cpu", *models]


def bomb_png(side: int) -> bytes:
    """A PNG header declaring side x side greyscale pixels, with an empty image-data chunk (a few dozen bytes)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", b"") + chunk(b"IEND", b""))


@pytest.fixture()
def places(tmp_path) -> dict[str, str]:
    """Bad files and paths the catalogue names by placeholder."""
    (tmp_path / "adir.png").mkdir()
    (tmp_path / "afile").write_text("a file, not a folder")
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "notes.png").write_text("plain text")
    (tmp_path / "bomb.png").write_bytes(bomb_png(60000))
    (tmp_path / "dir-input").mkdir()
    Image.new("RGB", (32, 32), (200, 30, 30)).save(tmp_path / "photo.png")
    return {"ADIR": str(tmp_path / "adir.png"), "UNDER_FILE": str(tmp_path / "afile" / "out.png"),
            "UNDER_FILE_VIDEO": str(tmp_path / "afile" / "progress.mp4"), "AFILE": str(tmp_path / "afile"),
            "EMPTY": str(tmp_path / "empty.png"), "TEXT": str(tmp_path / "notes.png"),
            "BOMB": str(tmp_path / "bomb.png"), "DIR": str(tmp_path / "dir-input"),
            "AVI": str(tmp_path / "progress.avi"), "PHOTO": str(tmp_path / "photo.png"), "OUT": str(tmp_path / "out.png")}


# (CLIs, extra arguments, expected exit code, a fragment of the one-line message)
CATALOGUE = [
    (ALL, ["a cat", "--steps", "1e9"], 2, "argument --steps: invalid int value: '1e9'; see"),
    (ALL, ["a cat", "--seed", "1.5"], 2, "argument --seed: invalid int value"),
    (ALL, ["a cat", "--no-such-option"], 2, "unrecognized arguments: --no-such-option"),
    (ALL, ["a cat", "--seed", str(2**70)], 2, "out of range; use a whole number from 0 to 2**63 - 1"),
    (ALL, ["a cat", "--seed", "-1"], 2, "out of range"),
    (LATENT, ["a cat", "--steps", str(MAX_STEPS + 1)], 2, f"--steps must be between 1 and {MAX_STEPS}"),
    (("clip_guided_diffusion",), ["a cat", "--steps", "100000"], 2, "--steps must be between 1 and 1000"),
    (ALL, ["a cat", "--steps", "0"], 2, "--steps must be between 1"),
    (ALL, ["a cat", "--cutn", "10000"], 2, f"--cutn must be between 1 and {MAX_CUTN}"),
    (ALL, ["a cat", "--cut-pow", "nan"], 2, "--cut-pow must be a finite number"),
    (ALL, ["a cat", "--cut-pow", "inf"], 2, "--cut-pow must be a finite number"),
    (ALL, ["a cat:1e999"], 2, "is not a finite number"),
    (ALL, ["a cat:0"], 2, "every prompt weight is 0"),
    (ALL, ["a cat:0 | a dog:0"], 2, "every prompt weight is 0"),
    (LATENT, ["a cat", "--lr", "inf"], 2, "--lr must be a finite number"),
    (LATENT, ["a cat", "--lr", "nan"], 2, "--lr must be a finite number"),
    (LATENT, ["a cat", "--lr", "0"], 2, "--lr must be greater than 0"),
    (("clip_guided_diffusion",), ["a cat", "--clip-scale", "inf"], 2, "--clip-scale"),
    (("clip_guided_diffusion",), ["a cat", "--tv-scale", "nan"], 2, "--tv-scale"),
    (ALL, ["a cat", "--save-every", "-1"], 2, "--save-every must be between 0"),
    (ALL, ["a cat", "-o", "ADIR"], 2, "is an existing directory"),
    (ALL, ["a cat", "-o", "UNDER_FILE"], 2, "is a file, not a folder"),
    (ALL, ["a cat", "-o", "out.jpg"], 2, "must end in .png"),
    (ALL, ["a cat", "--video", "AVI"], 2, "must end in .mp4 or .webm or .mkv or .gif"),
    (ALL, ["a cat", "--video", "UNDER_FILE_VIDEO"], 2, "is a file, not a folder"),
    (ALL, ["a cat", "--video", "ADIR"], 2, "must end in"),
    (ALL, ["a cat", "--init-image", "DIR"], 2, "is a directory, not an image file"),
    (ALL, ["a cat", "--init-image", "EMPTY"], 2, "is an empty file (0 bytes)"),
    (ALL, ["a cat", "--init-image", "TEXT"], 2, "not an image format PIL knows"),
    (ALL, ["a cat", "--init-image", "BOMB"], 2, "(3600 Mpx), over the limit of 50 Mpx; downscale it first"),
    (("vqgan_clip", "clip_guided_diffusion"), ["a cat", "--size", "4096", "--cutn", "1024"], 2,
     "lower --cutn"),
    (("clip_guided_diffusion",), ["a cat", "--save-model", "AFILE", "--finetune-steps", "1"], 2,
     "is a file, not a folder"),
    (("clip_guided_diffusion",), ["a dog", "--init-image", "PHOTO", "--source-text", "a cat", "--inversion-refine",
                                  "1000"], 2, "--inversion-refine must be between 0 and 100"),
    (("clip_guided_diffusion",), ["a dog", "--init-image", "PHOTO", "--source-text", "a cat", "--inversion-steps",
                                  str(10**9)], 2, f"--inversion-steps must be between 1 and {MAX_STEPS}"),
]
CASES = [pytest.param(name, extra, code, fragment, id=f"{name}:{' '.join(extra)}")
         for names, extra, code, fragment in CATALOGUE for name in names]


def run(name: str, args: list[str], capsys) -> tuple[int, str]:
    """Run a CLI in-process like `python -m`: (exit code, stderr)."""
    try:
        code = run_cli(MODULES[name].main, args)
    except SystemExit as exit_:  # argparse's own errors
        code = exit_.code
    return code, capsys.readouterr().err.strip()


@pytest.mark.parametrize("name, extra, code, fragment", CASES)
def test_bad_input_catalogue(model_files, places, capsys, name, extra, code, fragment):
    args = [places.get(a, a) for a in extra]
    args += [] if "-o" in args else ["-o", places["OUT"]]
    returned, err = run(name, [*model_args(name, model_files), "--steps", "2", *args] if "--steps" not in args
                        else [*model_args(name, model_files), *args], capsys)
    assert returned == code, err
    assert err.startswith("error:") and fragment in err, err
    assert "\n" not in err and "Traceback" not in err
    assert not Path(places["OUT"]).exists()


@pytest.mark.parametrize("name", LATENT)
def test_the_image_pixel_limit_is_set_by_the_environment(model_files, places, capsys, monkeypatch, name):
    monkeypatch.setenv("CLIP_GUIDANCE_MAX_PIXELS", "1000")  # the 32x32 photo has 1024
    code, err = run(name, [*model_args(name, model_files), "a cat", "--steps", "1", "--size", "32",
                           "--init-image", places["PHOTO"], "-o", places["OUT"]], capsys)
    assert code == 2 and err == (f"error: image {places['PHOTO']} is 32x32 (0 Mpx), over the limit of 0.001 Mpx; "
                                 "downscale it first (or raise the limit with CLIP_GUIDANCE_MAX_PIXELS)")
    monkeypatch.setenv("CLIP_GUIDANCE_MAX_PIXELS", "1024")
    code, err = run(name, [*model_args(name, model_files), "a cat", "--steps", "1", "--size", "32", "--cutn", "2",
                           "--init-image", places["PHOTO"], "-o", places["OUT"], "--save-every", "0"], capsys)
    assert code == 0, err


@pytest.mark.parametrize("name", ALL)
def test_an_unwritable_output_is_refused_before_any_model_loads(name, places, capsys, monkeypatch):
    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded before the output was checked")

    pipeline = {"vqgan_clip": vqgan_clip.VQGANCLIPPipeline, "pixels_clip": pixels_clip.PixelsCLIPPipeline,
                "clip_guided_diffusion": clip_guided_diffusion.CLIPGuidedDiffusionPipeline}[name]
    monkeypatch.setattr(pipeline, "from_pretrained", no_loading)
    for output in (places["UNDER_FILE"], places["ADIR"], "/proc/clip-guidance-out.png"):
        code, err = run(name, ["a red circle", "-o", output], capsys)
        assert code == 2 and err.startswith("error:") and "\n" not in err, err


@pytest.mark.slow
def test_argparse_errors_are_one_line_in_a_subprocess(tmp_path):
    result = subprocess.run([sys.executable, "-m", "pipelines.pixels_clip", "a cat", "--steps", "1e9"],
                            capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: argument --steps: invalid int value: '1e9'; see python -m pipelines.pixels_clip --help"]


@pytest.mark.parametrize("name", ALL)
def test_help_has_text_for_every_option_and_no_repeated_defaults(name, capsys):
    pipelines = {"vqgan_clip": vqgan_clip.VQGANCLIPPipeline, "pixels_clip": PixelsCLIPPipeline}
    parser = (clip_guided_diffusion.build_parser() if name == "clip_guided_diffusion"
              else build_parser(pipelines[name], f"pipelines.{name}"))
    missing = [action.dest for action in parser._actions if not action.help]
    assert not missing, f"options without help: {missing}"
    text = parser.format_help()
    assert text.count("(default: output.png)") == 1 and "(default: None)" not in text


@pytest.mark.slow
def test_sigkill_mid_run_leaves_the_previous_output_intact(model_files, tmp_path):
    output = tmp_path / "out.png"
    save_png(torch.full((1, 3, 8, 8), 0.5), output, {"prompt": "the previous result"})
    previous = output.read_bytes()
    partial = tmp_path / "out.partial.png"
    process = subprocess.Popen([sys.executable, "-m", "pipelines.vqgan_clip", "a red circle",
                                *model_args("vqgan_clip", model_files), "--cutn", "2", "--size", "32",
                                "--steps", "100000", "--save-every", "1", "-o", str(output)],
                               cwd="/", stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not partial.exists() and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.1)
        assert partial.exists(), "no progress was saved"
        time.sleep(0.3)  # a few more partial saves, perhaps one under way
    finally:
        process.send_signal(signal.SIGKILL)
        process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL
    assert output.read_bytes() == previous
    assert read_recipe(output) == {"prompt": "the previous result"}
    assert read_recipe(partial)["partial"] is True  # the progress file is whole: it was written atomically


def test_api_refuses_bad_settings_in_one_line(tiny_clip):
    pipe = PixelsCLIPPipeline(pixels_clip.load_pixels("fft", torch.device("cpu")), [(tiny_clip, 1.0)], "fft")
    cases = [(dict(lr=float("inf")), "--lr must be a finite"), (dict(cut_pow=float("nan")), "--cut-pow"),
             (dict(seed=2**70), "out of range"), (dict(seed=1.5), "whole number"),
             (dict(steps=10**9), "--steps"), (dict(cutn=10**4), "--cutn"), (dict(init_weight=float("nan")), "--init-weight"),
             (dict(prompt="a cat:0"), "every prompt weight is 0")]
    for kwargs, fragment in cases:
        kwargs = {"prompt": "a cat", **kwargs}
        with pytest.raises(InvalidInputError, match=fragment.replace("*", r"\*")) as error:
            pipe(kwargs.pop("prompt"), size=16, steps=kwargs.pop("steps", 1), progress=False, **kwargs)
        assert "\n" not in str(error.value)


def test_a_run_that_will_not_fit_in_memory_is_refused_naming_what_to_lower(tiny_clip, monkeypatch):
    import guidance.memory

    pipe = PixelsCLIPPipeline(pixels_clip.load_pixels("fft", torch.device("cpu")), [(tiny_clip, 1.0)], "fft")
    monkeypatch.setattr(guidance.memory, "available_bytes", lambda device: 50 * 2**20)
    with pytest.raises(ToolkitError, match=r"would need about .* GiB but only 0\.0 GiB of RAM is available; "
                                           r"lower --cutn \(--cutn-batches keeps memory flat\), --num-images or --size"):
        pipe("a cat", size=256, cutn=512, steps=1, progress=False)


def test_api_images_and_output_save_carry_the_recipe(tiny_clip, tmp_path):
    pipe = PixelsCLIPPipeline(pixels_clip.load_pixels("fft", torch.device("cpu")), [(tiny_clip, 1.0)], "fft")
    result = pipe("a red circle", size=16, steps=1, cutn=2, seed=3, progress=False, save_every=0)
    result.images[0].save(tmp_path / "plain.png")
    assert read_recipe(tmp_path / "plain.png") == read_recipe(result.save(tmp_path / "saved.png")) == \
        {**result.recipe, "interrupted": False}
    assert read_recipe(tmp_path / "plain.png")["seed"] == 3
    assert isinstance(result, PipelineOutput)


def test_an_init_image_of_another_size_is_noticed_in_one_line(tiny_clip, tmp_path):
    pipe = PixelsCLIPPipeline(pixels_clip.load_pixels("fft", torch.device("cpu")), [(tiny_clip, 1.0)], "fft")
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "photo.png")
    with pytest.warns(UserWarning, match="is 64x64; the run works at 32x32") as record:
        result = pipe("a red circle", size=32, steps=1, cutn=2, init_image=tmp_path / "photo.png", progress=False)
    assert result.images[0].size == (32, 32) and "\n" not in str(record[0].message)


def test_a_write_that_fails_at_the_end_is_one_line_and_keeps_the_previous_output(model_files, tmp_path, capsys,
                                                                                 monkeypatch):
    import guidance.images

    output = tmp_path / "out.png"
    save_png(torch.full((1, 3, 8, 8), 0.5), output, {"prompt": "the previous result"})
    previous = output.read_bytes()

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device", str(output))

    monkeypatch.setattr(guidance.images.Image.Image, "save", disk_full)
    code, err = run("pixels_clip", [*model_args("pixels_clip", model_files), "a red circle", "--size", "16",
                                    "--steps", "1", "--cutn", "2", "--save-every", "0", "-o", str(output)], capsys)
    last = err.splitlines()[-1]  # after the progress bar
    assert code == 2 and "Traceback" not in err and [line for line in err.splitlines() if "error" in line] == [last]
    assert last.startswith(f"error: cannot write {output} (No space left on device)")
    assert output.read_bytes() == previous
