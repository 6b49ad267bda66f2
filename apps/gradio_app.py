"""The web app: text-to-image and text-guided editing in the browser, on the toolkit's pipelines (Gradio).

Run:  python -m apps.gradio_app [--host 127.0.0.1] [--port 7860] [--auth USER:PASS] [--models FILE] [--max-queue 8]
      (python -m apps.gradio_app --help lists every option; the README's "Serving on a network" has a safe setup)

Models load once and are reused; one run goes at a time (one GPU) with a bounded line of waiting runs;
intermediate images stream into the page; Stop ends its own session's run and keeps its last image; every
result is a PNG carrying its recipe in the text chunks. Visitors pick the operator's models, within the
operator's limits, whatever a client sends. This module is the page and the command line; the handlers are
in `apps.handlers`.
"""

from __future__ import annotations

import argparse
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from apps.cli import build_parser

if __name__ == "__main__":  # parse first: --help and usage errors answer before the heavy imports below
    build_parser().parse_args()

import gradio as gr

from apps.access import exposure_warning, read_credentials
from apps.handlers import (ADVANCED_OPTIONS, EDIT_METHODS, MASKED_EDIT, RUNS, AppConfig, Outputs, PipelineCache,
                           WebApp, method_choices, methods_taking, model_picker_settings, option_info)
from apps.model_policy import CLIP_KIND, ModelPolicy, read_model_lists
from apps.uploads import upload_editor
from guidance.cutouts import AUGMENT_PRESETS
from guidance.errors import InvalidInputError, ToolkitError
from guidance.runtime import PRECISIONS
from pipelines.common import run_cli
from pipelines.registry import get_pipeline_spec

CACHE_CLEANUP_S = 3600  # Gradio's uploads and streamed previews are deleted after an hour
GRADIO_CACHE = "gradio-cache"  # where the served app keeps Gradio's cache, inside its output folder
SPARE_THREADS = 16  # worker threads beyond the runs in line, for Stop, health and the pickers


# --- the page -------------------------------------------------------------------------------------------------


def advanced_settings(tab: str) -> list[gr.components.Component]:
    """The folded advanced settings (`ADVANCED_OPTIONS`, empty by default: each method's own), then precision."""
    fields = []
    options = list(ADVANCED_OPTIONS.items())
    with gr.Accordion("Advanced settings", open=False):
        for row in (options[:3], options[3:6], options[6:]):
            with gr.Row():
                for option, label in row:
                    settings = {"label": label, "info": option_info(option),
                                "elem_id": f"{tab}-{option.replace('_', '-')}"}
                    fields.append(gr.Dropdown(list(AUGMENT_PRESETS), value=None, **settings) if option == "augment"
                                  else gr.Number(None, minimum=0 if option == "lr" else None,
                                                 precision=0 if option == "sampler_steps" else None, **settings))
        precision = gr.Radio(list(PRECISIONS), value="fp32", label="Precision", info="bf16/fp16 save GPU memory")
    return [*fields, precision]


def seed_controls(tab: str) -> list[gr.components.Component]:
    """The seed and its 'random' tick box (a random run shows the seed it used)."""
    with gr.Row():
        seed = gr.Number(0, label="Seed", precision=0, minimum=0, elem_id=f"{tab}-seed")
        random_seed = gr.Checkbox(True, label="Random seed", info="the seed used appears in the Seed box")
    return [seed, random_seed]


class RunPanel:
    """A tab's Run and Stop buttons and its outputs: live preview, progress, status, gallery, PNG download."""

    def __init__(self, tab: str, label: str):
        self.tab = tab
        with gr.Row():
            self.run = gr.Button(label, variant="primary", elem_id=tab)
            self.stop = gr.Button("Stop", variant="stop", elem_id=f"{tab}-stop")

    def place_outputs(self) -> None:
        """Place the output components (in the current column)."""
        tab = self.tab
        self.preview = gr.Image(label="Preview", type="pil", format="png", interactive=False,
                                elem_id=f"{tab}-preview", height=320)
        self.progress_bar = gr.Markdown("", min_height=44, elem_id=f"{tab}-progress")
        self.status = gr.Markdown("", elem_id=f"{tab}-status")
        self.gallery = gr.Gallery(label="Results", columns=4, height=260, format="png", fit_columns=False,
                                  elem_id=f"{tab}-gallery")
        self.files = gr.File(label="Download (PNG with its recipe)", file_count="multiple", interactive=False,
                             elem_id=f"{tab}-download")
        self.results = gr.State([])

    def connect(self, app: WebApp, handler: Callable[..., Iterator[Outputs]],
                inputs: list[gr.components.Component], seed: gr.Number) -> None:
        """Run the handler on the button (one run at a time, across tabs); Stop skips the queue."""
        self.run.click(handler, [*inputs, self.results],
                       [self.preview, self.status, self.gallery, self.files, seed, self.results],
                       show_progress_on=[self.progress_bar], concurrency_id=RUNS)
        self.stop.click(app.stop, None, None, queue=False)


def model_picker(**settings: Any) -> gr.Dropdown:
    """A dropdown whose value reaches the handler as sent; the handler checks it against the server's model list
    (Gradio's own check knows only the first method's choices until the method changes, so it would refuse an
    API client's valid pick). Replaced on the instance: Gradio writes a `.pyi` copy of a module that subclasses a
    component."""
    dropdown = gr.Dropdown(**settings)
    dropdown.preprocess = lambda payload: payload  # type: ignore[method-assign]
    return dropdown


def clip_picker(policy: ModelPolicy) -> gr.Dropdown:
    """The CLIP models this server offers, shared by both tabs (free specs only with --allow-custom-models)."""
    choices = policy.choices(CLIP_KIND)
    typed = "; or type NAME[:PRETRAINED][:WEIGHT]" if policy.allow_custom else ""
    return model_picker(choices=choices, value=choices[:1], multiselect=True, label="CLIP models",
                        allow_custom_value=policy.allow_custom, info=f"the CLIP models this server offers{typed}",
                        elem_id="clip-models")


def method_picker(app: WebApp, tab: str, label: str) -> list[gr.components.Component]:
    """The method (the registered pipelines) and one model picker whose choices follow it."""
    choices = method_choices()
    policy = app.config.models
    with gr.Row():
        method = gr.Radio(choices, value=choices[0][1], label=label, elem_id=f"{tab}-method")
        model = model_picker(**model_picker_settings(get_pipeline_spec(choices[0][1]), policy),
                             allow_custom_value=policy.allow_custom, elem_id=f"{tab}-model")
    method.change(app.model_picker_update, method, model, queue=False)
    return [method, model]


def count_sliders(config: AppConfig, tab: str, steps: int) -> list[gr.Slider]:
    """Steps and cutouts, up to the server's limits (which the handlers enforce whatever a client sends)."""
    prefix = "" if tab == "generate" else f"{tab}-"
    return [gr.Slider(1, config.max_steps, value=min(steps, config.max_steps), step=1, label="Steps",
                      elem_id=f"{prefix}steps"),
            gr.Slider(1, config.max_cutn, value=min(16, config.max_cutn), step=1, label="Cutouts",
                      elem_id=f"{prefix}cutn")]


def text_to_image_tab(app: WebApp, clip_models: gr.Dropdown) -> None:
    """The text-to-image tab."""
    with gr.Tab("Text to image"), gr.Row():
        with gr.Column():
            prompt = gr.Textbox(label="Prompt", lines=2, elem_id="prompt",
                                placeholder="a red circle | a grey background:0.5",
                                info="'text:weight' items joined by '|'; a negative weight pushes away")
            negative = gr.Textbox(label="Negative prompt", elem_id="negative", placeholder="blurry | text",
                                  info="what to avoid; each '|' item is added with weight -1")
            method = method_picker(app, "generate", "Method")
            with gr.Row():
                size = gr.Textbox("64", label="Size", info="WIDTH or WIDTHxHEIGHT; empty: the default", elem_id="size")
                counts = count_sliders(app.config, "generate", 60)
                num_images = gr.Slider(1, app.config.max_num_images, value=1, step=1, label="Images",
                                       info="one run each, on consecutive seeds", elem_id="num-images",
                                       visible=app.config.max_num_images > 1)
            seed = seed_controls("generate")
            advanced = advanced_settings("generate")
            panel = RunPanel("generate", "Generate")
        with gr.Column():
            panel.place_outputs()
    panel.connect(app, app.generate, [prompt, negative, *method, clip_models, size, *counts, num_images, *seed,
                                      *advanced], seed[0])


def edit_tab(app: WebApp, clip_models: gr.Dropdown) -> None:
    """The edit tab: a photo with a brush for the mask (or an uploaded mask), texts, method and generator."""
    with gr.Tab("Edit an image"), gr.Row():
        with gr.Column():
            editor = upload_editor(label="Photo: paint the region to change", image_mode="RGBA",
                                   sources=["upload", "clipboard"], transforms=["crop"], layers=False,
                                   brush=gr.Brush(colors=[("#ff00ff", 0.55)], color_mode="fixed"),
                                   elem_id="editor", height=420)
            mask_file = gr.File(label="Or upload a mask (white = change, the photo's size)", file_types=["image"],
                                type="filepath", elem_id="mask-file")
            target = gr.Textbox(label="Target text", elem_id="target", placeholder="a blue circle")
            source = gr.Textbox(label="Source text (directional edit)", elem_id="source", placeholder="a red circle")
            edit_method = gr.Radio(list(EDIT_METHODS), value=MASKED_EDIT, label="Edit",
                                   info="masked: only the painted region changes; directional: from the source "
                                        "text to the target; region found: the same, only where CLIP relates the "
                                        "photo to the texts; init-image: start from the photo")
            method = method_picker(app, "edit", "Generator")
            strength_users = methods_taking("edit_strength")
            with gr.Row():
                counts = count_sliders(app.config, "edit", 40)
                strength = gr.Slider(0.05, 1.0, value=next(iter(strength_users.values()), None), step=0.05,
                                     label=f"Edit strength ({', '.join(strength_users)})", elem_id="edit-strength",
                                     visible=bool(strength_users))
            seed = seed_controls("edit")
            advanced = advanced_settings("edit")
            panel = RunPanel("edit", "Edit")
        with gr.Column():
            panel.place_outputs()
    panel.connect(app, app.edit, [editor, mask_file, target, source, edit_method, *method, clip_models, *counts,
                                  strength, *seed, *advanced], seed[0])


def build_app(config: AppConfig | None = None, cache: PipelineCache | None = None) -> gr.Blocks:
    """The page: a server status line, the shared CLIP picker, a text-to-image tab and an edit tab; one run at a
    time with a bounded line behind it; a `health` API endpoint."""
    app = WebApp(config or AppConfig(), cache)
    with gr.Blocks(title="CLIP guidance toolkit", delete_cache=(CACHE_CLEANUP_S, CACHE_CLEANUP_S)) as blocks:
        gr.Markdown("# CLIP guidance toolkit\nGenerate and edit images guided by CLIP with the models this server "
                    "offers.")
        with gr.Row():
            status = gr.Markdown("", elem_id="server-status")
            refresh = gr.Button("Refresh", size="sm", scale=0, elem_id="server-status-refresh")
        clip_models = clip_picker(app.config.models)
        text_to_image_tab(app, clip_models)
        edit_tab(app, clip_models)
        blocks.load(app.status_line, None, status, queue=False)
        refresh.click(app.status_line, None, status, queue=False)
        gr.api(app.health, api_name="health", queue=False)
    # Runs that reach the handlers: the running one, the waiting line, and one more to hear "busy" at once.
    return blocks.queue(default_concurrency_limit=app.config.max_queue + 2)


def config_from(args: argparse.Namespace) -> AppConfig:
    """The app's settings from the command line, refused in one line when they make no sense."""
    if args.max_size < 16:
        raise InvalidInputError(f"--max-size must be at least 16, got {args.max_size}")
    if args.max_queue < 0:
        raise InvalidInputError(f"--max-queue must be 0 or more, got {args.max_queue}")
    if args.keep_results_mb is not None and not args.keep_results_mb > 0:
        raise InvalidInputError(f"--keep-results-mb must be more than 0, got {args.keep_results_mb}")
    policy = ModelPolicy.build(read_model_lists(args.models), args.allow_custom_models, args.model_dir)
    output_dir = args.output_dir.expanduser().resolve()
    model_dir = policy.model_dir
    if model_dir and (output_dir.is_relative_to(model_dir) or model_dir.is_relative_to(output_dir)):
        raise InvalidInputError(f"--model-dir {model_dir} and --output-dir {output_dir} overlap, so uploads "
                                "could be loaded as models; keep them apart")
    return AppConfig(device=args.device, max_size=args.max_size, max_steps=args.max_steps, max_cutn=args.max_cutn,
                     max_num_images=args.max_num_images, max_queue=args.max_queue,
                     max_upload_pixels=args.max_upload_pixels, keep_results=args.keep_results,
                     keep_results_mb=args.keep_results_mb, output_dir=output_dir,
                     models=policy)


def worker_threads(config: AppConfig) -> int:
    """Gradio's worker threads: each run in line holds one while it waits, and Stop, the health check and the
    model pickers need free ones besides (Gradio's default is 40)."""
    return max(40, config.max_queue + 2 + SPARE_THREADS)


@contextmanager
def gradio_cache_in(folder: Path) -> Iterator[None]:
    """Gradio's cache (uploads, the copies it serves) in `folder` while the app is built and served, so that with
    `allowed_paths=[output folder]` the file routes serve nothing outside the output folder."""
    previous = os.environ.get("GRADIO_TEMP_DIR")
    os.environ["GRADIO_TEMP_DIR"] = str(folder)
    try:
        yield
    finally:
        if previous is None:
            del os.environ["GRADIO_TEMP_DIR"]
        else:
            os.environ["GRADIO_TEMP_DIR"] = previous


def main(argv: list[str]) -> int:
    """Start the web app; returns the exit code when it stops."""
    args = build_parser().parse_args(argv)
    config = config_from(args)
    credentials = read_credentials(args.auth, args.auth_file)
    warning = exposure_warning(args.host, args.share, credentials)
    if warning:
        print(warning, file=sys.stderr)
    try:
        with gradio_cache_in(config.output_dir / GRADIO_CACHE):
            build_app(config).launch(server_name=args.host, server_port=args.port, share=args.share,
                                     auth=credentials or None, max_file_size=config.max_upload_bytes,
                                     allowed_paths=[str(config.output_dir)], max_threads=worker_threads(config))
    except OSError as error:  # port taken, address not available
        raise ToolkitError(f"cannot serve on {args.host}:{args.port} ({str(error).splitlines()[0]}); "
                           "pick another --port or --host") from None
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
