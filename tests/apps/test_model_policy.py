"""Which models visitors may pick: the operator's lists, free names only when allowed, never a path outside
--model-dir, and a refused name loads and reads nothing."""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import pytest

from apps.handlers import AppConfig, PipelineCache, WebApp
from apps.model_policy import ModelPolicy, model_kinds, read_model_lists, shipped_models
from guidance.errors import InvalidInputError
from pipelines.registry import get_pipeline_spec, pipeline_names

SECRET = "/etc/passwd"


class OpenedFiles:
    """The files this process opens while `recording` (an audit hook; hooks cannot be removed, so it stays idle)."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        self.recording = threading.Event()
        sys.addaudithook(self._hook)

    def _hook(self, event: str, args: tuple) -> None:
        if self.recording.is_set() and event == "open" and isinstance(args[0], (str, bytes, Path)):
            self.paths.append(str(args[0]))


OPENED = OpenedFiles()


class SpyLoader:
    """A pipeline loader that records what it was asked to load and loads nothing."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def __call__(self, name, model, clip_models, device, **load_options):
        self.calls.append((name, model, tuple(clip_models)))
        raise InvalidInputError(f"spy: not loading {model}")


def run_generate(app: WebApp, model: str, clip_models: list[str], method: str = "vqgan_clip") -> str:
    """The one-line error a generate request ends with."""
    handler = app.generate("a red circle", "", method, model, clip_models, "32", 2, 2, 1, 1, False, None, None,
                           None, None, None, None, None, None, None, "fp32", [],
                           request=SimpleNamespace(session_hash="policy"))
    with pytest.raises(gr.Error) as caught:
        for _ in handler:
            pass
    return caught.value.message


def spy_app(tmp_path: Path, policy: ModelPolicy) -> tuple[WebApp, SpyLoader]:
    """The handlers with a loader that only records."""
    spy = SpyLoader()
    return WebApp(AppConfig(device="cpu", output_dir=tmp_path, models=policy), PipelineCache(loader=spy)), spy


def test_by_default_only_the_shipped_models_are_offered():
    policy = ModelPolicy.build()
    assert policy.allowed == shipped_models()
    for name in pipeline_names():
        assert policy.choices(name) == list(get_pipeline_spec(name).offline_models)
    assert policy.choices("clip_guided_diffusion") == ["shapes-tiny-text", "shapes-tiny"]
    assert policy.choices("clip") == ["shapes-tiny", "shapes-tiny-zh"]  # the bilingual one for Chinese prompts


@pytest.mark.parametrize("model, clips", [(SECRET, ["shapes-tiny"]), ("shapes-tiny", [SECRET]),
                                          ("ViT-L-14", ["shapes-tiny"]), ("shapes-tiny", ["ViT-L-14"]),
                                          ("shapes-tiny", [f"RN50:{SECRET}"])])
def test_a_typed_model_or_path_is_refused_by_default_and_nothing_is_read_or_loaded(tmp_path, model, clips):
    app, spy = spy_app(tmp_path, ModelPolicy.build())
    OPENED.recording.set()
    try:
        error = run_generate(app, model, clips)
    finally:
        OPENED.recording.clear()
    offered = "shapes-tiny" if model != "shapes-tiny" else "shapes-tiny, shapes-tiny-zh"  # the VQGAN's or the CLIPs
    assert f"is not offered by this server; pick one of {offered}, or ask its operator to add it" in error
    assert spy.calls == [] and not any(SECRET in path for path in OPENED.paths)


def test_an_existing_and_a_missing_path_read_the_same_so_files_cannot_be_probed(tmp_path):
    for allow_custom in (False, True):
        app, _ = spy_app(tmp_path, ModelPolicy.build(allow_custom=allow_custom))
        existing = run_generate(app, SECRET, ["shapes-tiny"])
        missing = run_generate(app, "/etc/no-such-file", ["shapes-tiny"])
        assert existing.replace(SECRET, "X") == missing.replace("/etc/no-such-file", "X")


def test_allow_custom_models_lets_a_hub_style_name_through_to_the_loader(tmp_path):
    app, spy = spy_app(tmp_path, ModelPolicy.build(allow_custom=True))
    error = run_generate(app, "google/ddpm-celebahq-256", ["hf:openai/clip-vit-base-patch32", "ViT-B-32:openai:0.5"],
                         method="clip_guided_diffusion")
    assert error == "spy: not loading google/ddpm-celebahq-256"
    assert spy.calls == [("clip_guided_diffusion", "google/ddpm-celebahq-256",
                          ("hf:openai/clip-vit-base-patch32", "ViT-B-32:openai:0.5"))]


@pytest.mark.parametrize("name", [SECRET, "../secrets/model.ckpt", "~/model", "weights.ckpt", "a/b/c", "./x",
                                  "tests", "README.md", "owner/../name", ""])
def test_free_names_never_name_a_path_outside_the_model_dir(tmp_path, name):
    policy = ModelPolicy.build(allow_custom=True, model_dir=tmp_path)
    with pytest.raises(InvalidInputError, match="is refused: type a hub-style name such as owner/name or "
                                                "ViT-B-32:openai, or a name inside"):
        policy.check_model("vqgan_clip", name, "VQGAN")


def test_a_typed_clip_must_name_its_weights():
    policy = ModelPolicy.build(allow_custom=True)
    with pytest.raises(InvalidInputError, match="^CLIP model 'ViT-L-14' names no weights, so it would be built with "
                                                "random ones that guide nothing; name them, e.g. ViT-L-14:openai$"):
        policy.check_clip("ViT-L-14")
    hub = "hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K"
    assert policy.check_clip(hub) == hub


def test_names_inside_the_model_dir_load_by_their_absolute_path(tmp_path):
    models = tmp_path / "models"
    (models / "my-ddpm").mkdir(parents=True)
    (models / "clip.pt").write_bytes(b"")
    (tmp_path / "outside.ckpt").write_bytes(b"")
    (models / "link.ckpt").symlink_to(tmp_path / "outside.ckpt")
    policy = ModelPolicy.build(allow_custom=True, model_dir=models)
    assert policy.check_model("clip_guided_diffusion", "my-ddpm", "diffusion model") == str(models / "my-ddpm")
    assert policy.check_clip("RN50:clip.pt:0.5") == f"RN50:{models / 'clip.pt'}:0.5"
    for escaping in ("link.ckpt", "../outside.ckpt", str(tmp_path / "outside.ckpt")):
        with pytest.raises(InvalidInputError, match="is refused"):
            policy.check_model("vqgan_clip", escaping, "VQGAN")
    with pytest.raises(InvalidInputError, match="not a folder"):
        ModelPolicy.build(model_dir=tmp_path / "missing")


def test_listed_models_are_offered_and_a_clip_weight_does_not_matter():
    policy = ModelPolicy.build({"clip": ["ViT-B-32:openai"], "vqgan_clip": ["vqgan_imagenet_f16_16384"]})
    assert policy.choices("clip") == ["shapes-tiny", "shapes-tiny-zh", "ViT-B-32:openai"]
    assert policy.check_clip("ViT-B-32:openai:0.5") == "ViT-B-32:openai:0.5"
    assert policy.check_model("vqgan_clip", "vqgan_imagenet_f16_16384", "VQGAN") == "vqgan_imagenet_f16_16384"
    with pytest.raises(InvalidInputError, match="not offered"):
        policy.check_clip("ViT-B-16:openai")


def test_model_lists_come_from_files_and_inline_entries(tmp_path):
    listing = tmp_path / "models.txt"
    listing.write_text("# what visitors may pick\nvqgan_clip = vqgan_imagenet_f16_16384  # 1 GB\n\n"
                       "clip=ViT-B-32:openai, ViT-B-16:openai\n")
    lists = read_model_lists([str(listing), "pixels_clip=rgb"])
    assert lists == {"vqgan_clip": ["vqgan_imagenet_f16_16384"], "clip": ["ViT-B-32:openai", "ViT-B-16:openai"],
                     "pixels_clip": ["rgb"]}
    assert "clip" in model_kinds()


@pytest.mark.parametrize("text, message", [
    ("vqgan=foo", "models.txt line 1: unknown model kind 'vqgan'; use one of vqgan_clip"),
    ("vqgan_clip", "models.txt line 1: 'vqgan_clip' is not KIND=NAME[,NAME...]"),
    ("clip = ,", "models.txt line 1: 'clip = ,' is not KIND=NAME[,NAME...]"),
])
def test_bad_model_lists_are_refused_in_one_line(tmp_path, text, message):
    (tmp_path / "models.txt").write_text(text)
    with pytest.raises(InvalidInputError) as caught:
        read_model_lists([str(tmp_path / "models.txt")])
    assert message in str(caught.value)
    with pytest.raises(InvalidInputError, match="cannot read the model list"):
        read_model_lists([str(tmp_path / "missing.txt")])
