"""The web app: text-to-image and text-guided editing in the browser, on the toolkit's pipelines (Gradio).

Run:  python -m apps.gradio_app [--host 127.0.0.1] [--port 7860] [--share] [--device auto] [--max-size 512]

Models load once and are reused; requests queue one at a time (one GPU); intermediate images stream into the
page; Stop ends a run and keeps its last image; every result is a PNG carrying its recipe in the text chunks.
"""

from __future__ import annotations

import argparse
import html
import inspect
import logging
import os
import queue
import re
import sys
import tempfile
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402  (after the analytics switch above)
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from guidance.cutouts import AUGMENT_PRESETS  # noqa: E402
from guidance.errors import InvalidInputError, ToolkitError  # noqa: E402
from guidance.images import load_image, save_png, tensor_to_pil  # noqa: E402
from guidance.prompts import parse_prompts  # noqa: E402
from guidance.runtime import PRECISIONS, pick_device, resolve_seed  # noqa: E402
from pipelines.common import call_defaults, command_line, parse_size, round_size, run_cli  # noqa: E402
from pipelines.registry import PipelineSpec, get_pipeline_spec, load_pipeline, pipeline_names  # noqa: E402

log = logging.getLogger(__name__)

MASKED_EDIT, DIRECTIONAL_EDIT, INIT_IMAGE_EDIT = "masked edit", "directional edit", "init-image edit"
EDIT_METHODS = (MASKED_EDIT, DIRECTIONAL_EDIT, INIT_IMAGE_EDIT)
OFFLINE_CLIP = "shapes-tiny"  # the packaged CLIP, so the app works without a download
CLIP_CHOICES = (OFFLINE_CLIP, "ViT-B-32:openai", "ViT-B-16:openai", "ViT-L-14:openai", "RN50:openai")
# The advanced settings: a pipeline call option each, by its label; empty fields are not sent.
ADVANCED_OPTIONS = {"lr": "Learning rate", "cut_pow": "Cutout size power", "augment": "Cutout augmentation",
                    "clip_scale": "CLIP scale", "tv_scale": "TV scale", "range_scale": "Range scale"}
RUNS = "pipeline-runs"  # generate and edit share one queue slot (default_concurrency_limit=1): one GPU
PREVIEWS_PER_RUN = 25  # intermediate images streamed per run; Stop is noticed at the next one
Pipeline = Any  # a loaded pipeline: pipeline(prompt, **options) -> PipelineOutput, with a `size_factor`
Outputs = tuple[Any, ...]


@dataclass(frozen=True)
class AppConfig:
    """Where the app runs and what it accepts."""

    device: str = "auto"
    max_size: int = 512  # largest output side in pixels; bigger photos are scaled down to fit
    max_upload_pixels: int = 50_000_000  # uploads above this are refused
    max_upload_bytes: str = "50mb"  # Gradio refuses larger files before they reach the app
    output_dir: Path = Path(tempfile.gettempdir()) / "clip-guidance-app"


# --- inputs ---------------------------------------------------------------------------------------------------


def merge_negative_prompt(prompt: str, negative: str) -> str:
    """The prompt with each `|`-separated negative appended as `|text:-weight` (a push away from it)."""
    if not negative or not negative.strip():
        return prompt
    parts = [prompt]
    for item in parse_prompts(negative):
        separator = " :" if item.text[-1].isdigit() else ":"  # `10:30:-1` would read as text
        stop = f":{item.stop:g}" if np.isfinite(item.stop) else ""
        parts.append(f"{item.text}{separator}{-abs(item.weight):g}{stop}")
    return "|".join(parts)


def check_prompt(prompt: str | None, what: str = "prompt") -> str:
    """The stripped prompt, or a readable error when it is empty."""
    if not prompt or not prompt.strip():
        raise InvalidInputError(f"the {what} is empty; describe the image, e.g. 'a red circle'")
    return prompt.strip()


def check_size(text: str | None, max_size: int) -> tuple[int, int] | None:
    """The requested (width, height), None for the pipeline's default, refused above the app's limit."""
    if not text or not str(text).strip():
        return None
    width, height = parse_size(str(text).strip())
    if max(width, height) > max_size:
        raise InvalidInputError(f"size {width}x{height} is larger than this app allows ({max_size} pixels a side); "
                                f"use a smaller size or start the app with --max-size {max(width, height)}")
    return width, height


def fit_within(size: tuple[int, int], max_side: int) -> tuple[int, int]:
    """(width, height) scaled down, keeping the aspect ratio, so that neither side exceeds `max_side`."""
    scale = min(1.0, max_side / max(size))
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


def as_pil(image: Image.Image | np.ndarray) -> Image.Image:
    """A PIL image from the editor's PIL or numpy value."""
    return image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))


def editor_photo(editor: dict[str, Any] | None, max_pixels: int) -> Image.Image:
    """The uploaded photo (the editor's background) as RGB, refused when missing or too large."""
    background = (editor or {}).get("background")
    if background is None:
        raise InvalidInputError("no image to edit; upload a photo into the image editor first")
    photo = as_pil(background)
    if photo.width * photo.height > max_pixels:
        raise InvalidInputError(f"the uploaded image is {photo.width}x{photo.height}, more than the {max_pixels:,} "
                                "pixels this app accepts; upload a smaller image")
    if photo.mode in ("RGBA", "LA", "PA") or "transparency" in photo.info:
        photo = Image.alpha_composite(Image.new("RGBA", photo.size, "white"), photo.convert("RGBA"))
    return photo.convert("RGB")


def editor_mask(editor: dict[str, Any] | None) -> Image.Image | None:
    """The region painted on the editor's layers as an 'L' mask (255 = change), or None when nothing is painted."""
    editor = editor or {}
    background = editor.get("background")
    layers = [as_pil(layer) for layer in editor.get("layers") or [] if layer is not None]
    if background is None or not layers:
        return None
    size = as_pil(background).size
    painted = np.zeros(size[::-1], dtype=bool)
    for layer in layers:
        alpha = layer.convert("RGBA").getchannel("A")
        if alpha.size != size:
            alpha = alpha.resize(size, Image.Resampling.NEAREST)
        painted |= np.asarray(alpha) > 0
    return Image.fromarray(painted.astype(np.uint8) * 255) if painted.any() else None


def uploaded_mask(path: str | Path) -> Image.Image:
    """An uploaded mask file (white = change) as an 'L' image."""
    return tensor_to_pil(load_image(path, mode="L"))  # readable errors for unreadable files and unsupported types


# --- the methods: the pipeline registry -----------------------------------------------------------------------


def method_choices() -> list[tuple[str, str]]:
    """The registered pipelines as (title, name) menu choices, in the registry's order."""
    return [(get_pipeline_spec(name).title, name) for name in pipeline_names()]


def pipeline_class(spec: PipelineSpec) -> type | None:
    """The class a spec's loader builds (a classmethod, or the class a loader function names), None if unclear.

    Only for what the page shows before any model loads (which options a method takes, their defaults); runs
    check the loaded pipeline itself."""
    load = spec.load
    if inspect.ismethod(load) and isinstance(load.__self__, type):
        return load.__self__
    try:
        names = inspect.getclosurevars(load)
    except TypeError:  # a builtin or other non-Python callable
        return None
    classes = {value for value in (*names.globals.values(), *names.nonlocals.values())
               if isinstance(value, type) and hasattr(value, "size_factor")}
    return classes.pop() if len(classes) == 1 else None


def option_default(cls: type, option: str) -> Any:
    """What a pipeline class uses for an option left empty: its call's default, else its `default_<option>`
    attribute, else its module's `DEFAULT_<OPTION>` (None when it decides by itself)."""
    value = call_defaults(cls.__call__).get(option)
    if value is None:
        value = getattr(cls, f"default_{option}", None)
    if value is None:
        value = getattr(sys.modules.get(cls.__module__), f"DEFAULT_{option.upper()}", None)
    return value


def methods_taking(option: str) -> dict[str, Any]:
    """The registered methods whose call takes the option: title -> the default it uses when left empty."""
    taking = {}
    for name in pipeline_names():
        spec = get_pipeline_spec(name)
        cls = pipeline_class(spec)
        if cls is not None and option in spec.call_options(cls):
            taking[spec.title] = option_default(cls, option)
    return taking


def option_info(option: str) -> str:
    """An advanced field's hint: which methods use it and what an empty field means for each."""
    taking = methods_taking(option)
    if not taking:
        return "no registered method uses it"
    by_default: dict[str, list[str]] = {}
    for title, default in taking.items():
        shown = "automatic" if default is None else f"{default:g}" if isinstance(default, float) else str(default)
        by_default.setdefault(shown, []).append(title)
    only = f"{' and '.join(taking)} only; " if len(taking) < len(pipeline_names()) else ""
    if len(by_default) == 1:
        return f"{only}empty: {next(iter(by_default))}"
    return only + "empty: " + ", ".join(f"{shown} ({', '.join(titles)})" for shown, titles in by_default.items())


def option_label(option: str) -> str:
    """How a call option reads in a message, e.g. 'clip scale'."""
    return ADVANCED_OPTIONS.get(option, option.replace("_", " ")).lower()


def check_options(spec: PipelineSpec, accepted: set[str], options: dict[str, Any]) -> None:
    """Refuse, in one line, set options the pipeline's call does not take (naming the methods that do)."""
    refused = [option for option in options if option not in accepted]
    if not refused:
        return
    others = [title for title in methods_taking(refused[0])
              if title != spec.title and all(title in methods_taking(option) for option in refused[1:])]
    what = " and ".join(option_label(option) for option in refused)
    verb, it = ("does", "it") if len(refused) == 1 else ("do", "them")
    advice = f"clear {it} or pick {' or '.join(others)}" if others else f"clear {it}"
    raise InvalidInputError(f"{what} {verb} not apply to {spec.title}; {advice}")


def model_picker_settings(spec: PipelineSpec) -> dict[str, Any]:
    """The model picker for a method: its choices (the packaged model first), that model, and its label."""
    return {"choices": list(dict.fromkeys([spec.offline_model, *spec.model_choices()])), "value": spec.offline_model,
            "label": spec.model_label, "info": f"a listed name or any value the CLI's {spec.model_flag} accepts"}


def model_picker_update(method: str) -> dict[str, Any]:
    """The model picker's new choices and value when the method changes."""
    return gr.update(**model_picker_settings(get_pipeline_spec(method)))


def cli_command(spec: PipelineSpec, model: str, clip_models: Sequence[str], prompt: str, options: dict[str, Any],
                output: str) -> str:
    """The pipeline CLI command that reproduces a run (file options by their names in the result's folder)."""
    argv = [prompt, spec.model_flag, model]
    for clip in clip_models:
        argv += ["--clip-model", clip]
    for key, value in options.items():
        if isinstance(value, tuple):
            value = f"{value[0]}x{value[1]}"
        argv += [f"--{key.replace('_', '-')}", Path(value).name if isinstance(value, Path) else str(value)]
    return command_line(spec.module, [*argv, "--output", output])


# --- running pipelines ----------------------------------------------------------------------------------------


class PipelineCache:
    """Pipelines loaded once, keyed by (pipeline name, model, CLIP models, device); keeps the most recent few."""

    def __init__(self, capacity: int = 2,
                 loader: Callable[[str, str, Sequence[str], torch.device], Pipeline] = load_pipeline):
        self.capacity = capacity
        self.loader = loader
        self._pipelines: OrderedDict[tuple[str, str, tuple[str, ...], str], Pipeline] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, name: str, model: str, clip_models: Sequence[str], device: torch.device) -> Pipeline:
        """The cached pipeline, or a freshly loaded one (evicting the oldest first, to free its memory)."""
        key = (name, model, tuple(clip_models), str(device))
        with self._lock:
            if key in self._pipelines:
                self._pipelines.move_to_end(key)
                return self._pipelines[key]
            while len(self._pipelines) >= self.capacity:
                self._pipelines.popitem(last=False)
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
            pipeline = self.loader(name, model, clip_models, device)
            self._pipelines[key] = pipeline
            return pipeline

    def __len__(self) -> int:
        """How many pipelines are loaded."""
        return len(self._pipelines)


class StopSignals:
    """One stop event per browser session, for the run that session has going."""

    def __init__(self) -> None:
        self._events: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    def start(self, session: str) -> threading.Event:
        """A fresh event for a new run of the session."""
        with self._lock:
            event = self._events[session] = threading.Event()
            return event

    def stop(self, session: str) -> bool:
        """Ask the session's run to stop; False when it has none."""
        with self._lock:
            event = self._events.get(session)
        if event is None:
            return False
        event.set()
        return True

    def finish(self, session: str, event: threading.Event) -> None:
        """Forget the run's event (unless a newer run replaced it)."""
        with self._lock:
            if self._events.get(session) is event:
                del self._events[session]


@dataclass(frozen=True)
class Preview:
    """An intermediate image of a running pipeline."""

    step: int
    image: Image.Image


def stream_pipeline(run: Callable[[Callable[[int, torch.Tensor], bool]], Any],
                    stop: threading.Event) -> Iterator[Preview | Any]:
    """Run `run(callback)` in a worker thread; yield the latest Preview as images arrive, then the run's output.

    The callback returns whether `stop` is set, so the pipeline ends early and keeps its last image. Errors of
    the run are raised here. If the consumer goes away, the run is stopped and waited for, so it never overlaps
    the next request."""
    events: queue.Queue[tuple[str, Any]] = queue.Queue()

    def callback(step: int, images: torch.Tensor) -> bool:
        events.put(("preview", Preview(step, tensor_to_pil(images))))
        return stop.is_set()

    def work() -> None:
        try:
            events.put(("done", run(callback)))
        except BaseException as error:  # handed to the consumer, which reports it
            events.put(("error", error))

    worker = threading.Thread(target=work, name="pipeline-run", daemon=True)
    worker.start()
    finished = False
    try:
        while True:
            kind, value = events.get()
            while kind == "preview" and not events.empty():  # skip to the newest image
                kind, value = events.get()
            finished = kind != "preview"
            if kind == "error":
                raise value
            yield value
            if finished:
                return
    finally:
        if not finished:
            stop.set()
        worker.join()


def slug(text: str, limit: int = 40) -> str:
    """A file-name-safe short form of a prompt."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit].strip("-") or "image"


@dataclass
class Job:
    """One request: the loaded pipeline and its spec, the arguments of its call, and files saved beside the result."""

    spec: PipelineSpec
    pipeline: Pipeline
    model: str
    clip_models: tuple[str, ...]
    prompt: str
    options: dict[str, Any]
    folder: Path
    inputs: list[Path] = field(default_factory=list)

    @property
    def accepted(self) -> set[str]:
        """The options the pipeline's call takes."""
        return self.spec.call_options(self.pipeline)

    @property
    def steps_expected(self) -> int:
        """Steps the run will take: all of them, or for diffusion edits the share redone."""
        steps = self.options["steps"]
        strength = self.options.get("edit_strength")
        return max(1, round(steps * strength)) if strength is not None else steps


def error_message(error: BaseException) -> str:
    """One readable line for any failure of a request (the traceback goes to the server log only)."""
    if isinstance(error, ToolkitError):
        return str(error)
    if isinstance(error, torch.OutOfMemoryError):
        return "out of memory; use a smaller size, fewer cutouts, smaller models or --precision bf16"
    log.error("unexpected error in a request", exc_info=error)
    first = (str(error).strip().splitlines() or [""])[0][:200]
    return f"unexpected error ({type(error).__name__}: {first}); details are in the server log"


# --- the handlers ---------------------------------------------------------------------------------------------


class WebApp:
    """The handlers behind the page: validate the inputs, run a cached pipeline with previews, save the PNG."""

    def __init__(self, config: AppConfig, cache: PipelineCache | None = None):
        self.config = config
        self.device = pick_device(config.device)
        self.cache = cache or PipelineCache()
        self.stops = StopSignals()

    def generate(self, prompt: str, negative: str, method: str, model: str, clip_models: list[str], size: str,
                 steps: float, cutn: float, seed: float | None, random_seed: bool, lr: float | None,
                 cut_pow: float | None, augment: str | None, clip_scale: float | None, tv_scale: float | None,
                 range_scale: float | None, precision: str, results: list[str] | None,
                 request: gr.Request | None = None, progress: gr.Progress = gr.Progress()) -> Iterator[Outputs]:
        """Text to image: stream previews, then the result in the gallery and as a download."""
        def job() -> Job:
            text = merge_negative_prompt(check_prompt(prompt), negative)
            options = {"size": check_size(size, self.config.max_size), "steps": int(steps), "cutn": int(cutn),
                       "seed": seed_of(seed, random_seed), "lr": lr, "cut_pow": cut_pow, "augment": augment,
                       "clip_scale": clip_scale, "tv_scale": tv_scale, "range_scale": range_scale,
                       "precision": precision}
            return self._job(method, model, clip_models, text, options)

        yield from self._serve(job, results, request, progress)

    def edit(self, editor: dict[str, Any] | None, mask_file: str | None, target: str, source: str, edit_method: str,
             method: str, model: str, clip_models: list[str], steps: float, cutn: float, edit_strength: float,
             seed: float | None, random_seed: bool, lr: float | None, cut_pow: float | None, augment: str | None,
             clip_scale: float | None, tv_scale: float | None, range_scale: float | None, precision: str,
             results: list[str] | None, request: gr.Request | None = None,
             progress: gr.Progress = gr.Progress()) -> Iterator[Outputs]:
        """Edit an uploaded photo: the painted (or uploaded) mask, a directional edit, or an init-image edit."""
        def job() -> Job:
            if edit_method not in EDIT_METHODS:
                raise InvalidInputError(f"unknown edit method {edit_method!r}; choose one of {', '.join(EDIT_METHODS)}")
            text = check_prompt(target, "target text")
            photo = editor_photo(editor, self.config.max_upload_pixels)
            mask = None
            if edit_method == MASKED_EDIT:
                mask = uploaded_mask(mask_file) if mask_file else editor_mask(editor)
                if mask is None:
                    raise InvalidInputError("a masked edit changes the painted region; paint it with the brush "
                                            "or upload a mask (white = change)")
            if edit_method == DIRECTIONAL_EDIT and not (source and source.strip()):
                raise InvalidInputError("a directional edit needs a source text describing the photo, "
                                        "e.g. 'a red circle'")
            options = {"steps": int(steps), "cutn": int(cutn), "seed": seed_of(seed, random_seed), "lr": lr,
                       "cut_pow": cut_pow, "augment": augment, "clip_scale": clip_scale, "tv_scale": tv_scale,
                       "range_scale": range_scale, "precision": precision,
                       "source_text": source.strip() if edit_method == DIRECTIONAL_EDIT else None,
                       "init_image": photo, "mask": mask}  # the images become files once the size is known
            built = self._job(method, model, clip_models, text, options)
            if "edit_strength" in built.accepted:
                built.options["edit_strength"] = edit_strength
            size = round_size(fit_within(photo.size, self.config.max_size), built.pipeline.size_factor, built.model)
            built.options["size"] = size
            built.options["init_image"] = self._save_input(built, photo.resize(size, Image.Resampling.LANCZOS), "init")
            if mask is not None:
                built.options["mask"] = self._save_input(built, mask.resize(size, Image.Resampling.NEAREST), "mask")
            return built

        yield from self._serve(job, results, request, progress)

    def stop(self, request: gr.Request | None = None) -> None:
        """Stop this session's running request; it ends at its next preview and keeps its last image."""
        self.stops.stop(session_of(request))

    # --- internals --------------------------------------------------------------------------------------------

    def _job(self, method: str, model: str | None, clip_models: list[str] | None, prompt: str,
             options: dict[str, Any]) -> Job:
        """A job on the method's loaded pipeline with the options that are set; refuses any its call does not take."""
        spec = get_pipeline_spec(method)
        model = (model or "").strip()
        if not model:
            raise InvalidInputError(f"no {spec.model_label} chosen; pick one, e.g. {spec.offline_model}")
        clips = tuple(clip.strip() for clip in clip_models or [] if clip and clip.strip())
        if not clips:
            raise InvalidInputError(f"no CLIP model chosen; pick at least one, e.g. {OFFLINE_CLIP}")
        pipeline = self.cache.get(method, model, clips, self.device)
        chosen = {key: value for key, value in options.items() if value is not None and value != ""}
        folder = self.config.output_dir / f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        job = Job(spec, pipeline, model, clips, prompt, chosen, folder)
        check_options(spec, job.accepted, chosen)
        return job

    def _save_input(self, job: Job, image: Image.Image, name: str) -> Path:
        """Save an edit's input beside the result (so the recipe's command finds it) and return its path."""
        path = job.folder / f"{name}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path)
        job.inputs.append(path)
        return path

    def _serve(self, make_job: Callable[[], Job], results: list[str] | None, request: gr.Request | None,
               progress: gr.Progress) -> Iterator[Outputs]:
        """Run a request with readable errors: a failure shows one line in the page and the app keeps serving."""
        session = session_of(request)
        stop = self.stops.start(session)
        try:
            yield outputs(status="Loading the models…")
            job = make_job()
            yield from self._execute(job, list(results or []), stop, progress)
        except Exception as error:
            message = error_message(error)
            yield outputs(status=f"**Error:** {html.escape(message, quote=False)}")
            raise gr.Error(html.escape(message, quote=False), print_exception=False) from None
        finally:
            self.stops.finish(session, stop)

    def _execute(self, job: Job, results: list[str], stop: threading.Event, progress: gr.Progress) -> Iterator[Outputs]:
        """Run the job, streaming previews; save the result (also when stopped) with its recipe."""
        pipeline = job.pipeline
        total = job.steps_expected
        save_every = max(1, job.options["steps"] // PREVIEWS_PER_RUN)
        seed = job.options["seed"]
        yield outputs(status=f"Running {job.spec.title} on {self.device} (seed {seed})…", seed=seed)
        output = None
        for event in stream_pipeline(lambda callback: pipeline(job.prompt, **job.options, save_every=save_every,
                                                               callback=callback, progress=False), stop):
            if isinstance(event, Preview):
                progress((min(event.step, total), total), desc="steps")
                yield outputs(preview=event.image, status=f"Step {event.step} of {total}…")
            else:
                output = event
        path = self._save_result(job, output)
        results.insert(0, str(path))
        recipe = output.recipe
        state = (f"Stopped after {recipe['steps_done']} steps; the last image is kept." if stop.is_set()
                 else f"Done: {recipe['steps_done']} steps.")
        status = (f"{state} {recipe['size']}, seed {recipe['seed']}, {recipe['seconds']} s. "
                  f"The download is the PNG with its recipe: `{path.name}`")
        files = [str(path), *map(str, job.inputs)]
        yield outputs(preview=output.images[0], status=status, gallery=results, files=files, results=results)

    def _save_result(self, job: Job, output: Any) -> Path:
        """Save the result PNG with the pipeline's recipe and the CLI command that reproduces it."""
        name = f"{slug(parse_prompts(job.prompt)[0].text)}-{output.recipe['seed']}.png"
        command = cli_command(job.spec, job.model, job.clip_models, job.prompt, job.options, name)
        return save_png(output.images[0], job.folder / name, {**output.recipe, "command": command})


def seed_of(seed: float | None, random_seed: bool) -> int:
    """The seed to use: a fresh one when 'random' is ticked or no seed is given."""
    return resolve_seed(None if random_seed or seed is None else int(seed))


def session_of(request: gr.Request | None) -> str:
    """The browser session a request comes from ('' outside Gradio)."""
    return getattr(request, "session_hash", None) or ""


def outputs(preview: Any = None, status: Any = None, gallery: Any = None, files: Any = None, seed: Any = None,
            results: Any = None) -> Outputs:
    """The handlers' outputs in the page's order; those not given stay as they are."""
    values = (preview, status, gallery, files, seed, results)
    return tuple(gr.skip() if value is None else value for value in values)


# --- the page -------------------------------------------------------------------------------------------------


def advanced_settings(tab: str) -> list[gr.components.Component]:
    """The folded advanced settings (`ADVANCED_OPTIONS`, empty by default: each method's own), then precision."""
    fields = []
    options = list(ADVANCED_OPTIONS.items())
    with gr.Accordion("Advanced settings", open=False):
        for row in (options[:3], options[3:]):
            with gr.Row():
                for option, label in row:
                    settings = {"label": label, "info": option_info(option),
                                "elem_id": f"{tab}-{option.replace('_', '-')}"}
                    fields.append(gr.Dropdown(list(AUGMENT_PRESETS), value=None, **settings) if option == "augment"
                                  else gr.Number(None, minimum=0 if option == "lr" else None, **settings))
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


def clip_picker() -> gr.Dropdown:
    """The CLIP models, shared by both tabs (any spec the CLIs accept may be typed)."""
    return gr.Dropdown(list(CLIP_CHOICES), value=[OFFLINE_CLIP], multiselect=True, label="CLIP models",
                       allow_custom_value=True, info="NAME[:PRETRAINED][:WEIGHT]", elem_id="clip-models")


def method_picker(tab: str, label: str) -> list[gr.components.Component]:
    """The method (the registered pipelines) and one model picker whose choices follow it."""
    choices = method_choices()
    with gr.Row():
        method = gr.Radio(choices, value=choices[0][1], label=label, elem_id=f"{tab}-method")
        model = gr.Dropdown(**model_picker_settings(get_pipeline_spec(choices[0][1])), allow_custom_value=True,
                            elem_id=f"{tab}-model")
    method.change(model_picker_update, method, model, queue=False)
    return [method, model]


def text_to_image_tab(app: WebApp, clip_models: gr.Dropdown) -> None:
    """The text-to-image tab."""
    with gr.Tab("Text to image"), gr.Row():
        with gr.Column():
            prompt = gr.Textbox(label="Prompt", lines=2, elem_id="prompt",
                                placeholder="a red circle | a grey background:0.5",
                                info="'text:weight' items joined by '|'; a negative weight pushes away")
            negative = gr.Textbox(label="Negative prompt", elem_id="negative", placeholder="blurry | text",
                                  info="what to avoid; each '|' item is added with weight -1")
            method = method_picker("generate", "Method")
            with gr.Row():
                size = gr.Textbox("64", label="Size", info="WIDTH or WIDTHxHEIGHT; empty: the default", elem_id="size")
                steps = gr.Slider(1, 1000, value=60, step=1, label="Steps", elem_id="steps")
                cutn = gr.Slider(1, 128, value=16, step=1, label="Cutouts", elem_id="cutn")
            seed = seed_controls("generate")
            advanced = advanced_settings("generate")
            panel = RunPanel("generate", "Generate")
        with gr.Column():
            panel.place_outputs()
    panel.connect(app, app.generate, [prompt, negative, *method, clip_models, size, steps, cutn, *seed, *advanced],
                  seed[0])


def edit_tab(app: WebApp, clip_models: gr.Dropdown) -> None:
    """The edit tab: a photo with a brush for the mask (or an uploaded mask), texts, method and generator."""
    with gr.Tab("Edit an image"), gr.Row():
        with gr.Column():
            editor = gr.ImageEditor(label="Photo: paint the region to change", type="pil", image_mode="RGBA",
                                    sources=["upload", "clipboard"], transforms=["crop"], layers=False,
                                    brush=gr.Brush(colors=[("#ff00ff", 0.55)], color_mode="fixed"),
                                    elem_id="editor", height=420)
            mask_file = gr.File(label="Or upload a mask (white = change)", file_types=["image"], type="filepath",
                                elem_id="mask-file")
            target = gr.Textbox(label="Target text", elem_id="target", placeholder="a blue circle")
            source = gr.Textbox(label="Source text (directional edit)", elem_id="source", placeholder="a red circle")
            edit_method = gr.Radio(list(EDIT_METHODS), value=MASKED_EDIT, label="Edit",
                                   info="masked: only the painted region changes; directional: from the source "
                                        "text to the target; init-image: start from the photo")
            method = method_picker("edit", "Generator")
            strength_users = methods_taking("edit_strength")
            with gr.Row():
                steps = gr.Slider(1, 1000, value=40, step=1, label="Steps", elem_id="edit-steps")
                cutn = gr.Slider(1, 128, value=16, step=1, label="Cutouts", elem_id="edit-cutn")
                strength = gr.Slider(0.05, 1.0, value=next(iter(strength_users.values()), None), step=0.05,
                                     label=f"Edit strength ({', '.join(strength_users)})", elem_id="edit-strength",
                                     visible=bool(strength_users))
            seed = seed_controls("edit")
            advanced = advanced_settings("edit")
            panel = RunPanel("edit", "Edit")
        with gr.Column():
            panel.place_outputs()
    panel.connect(app, app.edit, [editor, mask_file, target, source, edit_method, *method, clip_models, steps, cutn,
                                  strength, *seed, *advanced], seed[0])


def build_app(config: AppConfig | None = None, cache: PipelineCache | None = None) -> gr.Blocks:
    """The page: the shared CLIP picker, a text-to-image tab and an edit tab, queued one request at a time."""
    app = WebApp(config or AppConfig(), cache)
    with gr.Blocks(title="CLIP guidance toolkit") as blocks:
        gr.Markdown("# CLIP guidance toolkit\nGenerate and edit images guided by CLIP. Each method's first model "
                    f"and the `{OFFLINE_CLIP}` CLIP ship with the package and work offline; others download once.")
        clip_models = clip_picker()
        text_to_image_tab(app, clip_models)
        edit_tab(app, clip_models)
    return blocks.queue(default_concurrency_limit=1)


def build_parser() -> argparse.ArgumentParser:
    """The command-line options."""
    parser = argparse.ArgumentParser(prog="python -m apps.gradio_app", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    defaults = AppConfig()
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    parser.add_argument("--port", type=int, default=7860, help="port to listen on")
    parser.add_argument("--share", action="store_true", help="also serve through a public gradio.live link")
    parser.add_argument("--device", default=defaults.device, help="cpu, cuda, cuda:N, mps or auto")
    parser.add_argument("--max-size", type=int, default=defaults.max_size,
                        help="largest output side in pixels; bigger photos are scaled down to fit")
    parser.add_argument("--output-dir", type=Path, default=defaults.output_dir, help="where results are saved")
    return parser


def main(argv: list[str]) -> int:
    """Start the web app; returns the exit code when it stops."""
    args = build_parser().parse_args(argv)
    if args.max_size < 16:
        raise InvalidInputError(f"--max-size must be at least 16, got {args.max_size}")
    config = AppConfig(device=args.device, max_size=args.max_size, output_dir=args.output_dir.expanduser().resolve())
    app = build_app(config)
    try:
        app.launch(server_name=args.host, server_port=args.port, share=args.share,
                   max_file_size=config.max_upload_bytes, allowed_paths=[str(config.output_dir)])
    except OSError as error:  # port taken, address not available
        raise ToolkitError(f"cannot serve on {args.host}:{args.port} ({str(error).splitlines()[0]}); "
                           "pick another --port or --host") from None
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
