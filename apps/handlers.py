"""The web app's handlers: check a request against the operator's limits and models, wait for its turn, run the
cached pipeline with streamed previews, and save each result as a PNG carrying its recipe.

The page (`apps.gradio_app`) wires them to its components; tests call them directly.
"""

from __future__ import annotations

import html
import inspect
import logging
import math
import queue
import re
import sys
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import gradio as gr
import numpy as np
import torch
from PIL import Image

from apps.cli import DEFAULT_OUTPUT_DIR
from apps.model_policy import CLIP_KIND, ModelPolicy
from apps.results import new_run_folder, prune_results
from apps.run_queue import RunQueue, StopSignals
from apps.uploads import editor_mask, editor_photo, uploaded_mask
from guidance.errors import InvalidInputError, ToolkitError
from guidance.images import save_png, tensor_to_pil
from guidance.prompts import parse_prompts
from guidance.runtime import pick_device, resolve_seed
from pipelines.common import AUTO_MASK, call_defaults, command_line, parse_size, round_size
from pipelines.registry import PipelineSpec, get_pipeline_spec, load_pipeline, pipeline_names

log = logging.getLogger(__name__)

MASKED_EDIT, DIRECTIONAL_EDIT, INIT_IMAGE_EDIT = "masked edit", "directional edit", "init-image edit"
LOCALISED_EDIT = "directional edit, region found"  # --source-text with --mask auto
EDIT_METHODS = (MASKED_EDIT, DIRECTIONAL_EDIT, LOCALISED_EDIT, INIT_IMAGE_EDIT)
# The advanced settings: a pipeline call option each, by its label; empty fields are not sent.
# Options a method takes when it loads (its spec's `load_options`) load it anew, once per value.
ADVANCED_OPTIONS = {"lr": "Learning rate", "cut_pow": "Cutout size power", "augment": "Cutout augmentation",
                    "clip_scale": "CLIP scale", "tv_scale": "TV scale", "range_scale": "Range scale",
                    "cfg_scale": "CFG scale", "sampler_steps": "Sampler steps", "spectrum_decay": "Spectrum decay"}
RUNS = "pipeline-runs"  # generate and edit share one concurrency group; RunQueue lets one of them run at a time
PREVIEWS_PER_RUN = 25  # intermediate images streamed per run; Stop is noticed at the next one
WAIT_POLL_S = 1.0  # how often a waiting run updates its place in line and notices Stop
Pipeline = Any  # a loaded pipeline: pipeline(prompt, **options) -> PipelineOutput, with a `size_factor`
Outputs = tuple[Any, ...]


@dataclass(frozen=True)
class AppConfig:
    """Where the app runs, what it accepts and which models it offers: the operator's settings."""

    device: str = "auto"
    max_size: int = 512  # largest output side in pixels; bigger photos are scaled down to fit
    max_steps: int = 1000
    max_cutn: int = 128
    max_num_images: int = 4  # images per text-to-image run
    max_queue: int = 8  # runs waiting behind the running one; more get a "busy" line
    max_upload_pixels: int = 50_000_000  # uploads above this are refused before they are decoded
    max_upload_bytes: str = "50mb"  # Gradio refuses larger files before they reach the app
    keep_results: int | None = None  # run folders kept in output_dir (the oldest are removed); None: all
    keep_results_mb: float | None = None  # and at most this many MB of them
    output_dir: Path = DEFAULT_OUTPUT_DIR
    models: ModelPolicy = field(default_factory=ModelPolicy.build)

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
        raise InvalidInputError(f"size {width}x{height} is larger than this server allows ({max_size} pixels a side); "
                                "use a smaller size (its operator sets --max-size)")
    return width, height


def fit_within(size: tuple[int, int], max_side: int) -> tuple[int, int]:
    """(width, height) scaled down, keeping the aspect ratio, so that neither side exceeds `max_side`."""
    scale = min(1.0, max_side / max(size))
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


def check_count(value: float | None, what: str, maximum: int, flag: str) -> int:
    """A whole number from 1 to the server's `maximum` (steps, cutouts, images), whatever the client sent."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number) or number != int(number) or number < 1:
        raise InvalidInputError(f"{what} must be a whole number from 1 to {maximum}, got {value!r}")
    if number > maximum:
        raise InvalidInputError(f"{int(number)} {what} is over this server's limit of {maximum}; use at most "
                                f"{maximum} (its operator sets {flag})")
    return int(number)


def check_numbers(options: dict[str, Any]) -> None:
    """Refuse, in one line, a number option that is not finite (NaN or infinity from an API client)."""
    for option, value in options.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isfinite(value):
            raise InvalidInputError(f"{option_label(option)} must be a finite number, got {value!r}")


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
    """What a pipeline class uses for an option left empty: its call's (or loader's) default, else its
    `default_<option>` attribute, else its module's `DEFAULT_<OPTION>` (None when it decides by itself)."""
    value = call_defaults(cls.__call__).get(option)
    if value is None:
        value = call_defaults(cls.from_pretrained).get(option)
    if value is None:
        value = getattr(cls, f"default_{option}", None)
    if value is None:
        value = getattr(sys.modules.get(cls.__module__), f"DEFAULT_{option.upper()}", None)
    return value


def methods_taking(option: str) -> dict[str, Any]:
    """The registered methods whose call (or loader) takes the option: title -> the default it uses when left
    empty."""
    taking = {}
    for name in pipeline_names():
        spec = get_pipeline_spec(name)
        cls = pipeline_class(spec)
        if cls is not None and (option in spec.call_options(cls) or option in spec.load_options):
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


def model_picker_settings(spec: PipelineSpec, policy: ModelPolicy) -> dict[str, Any]:
    """The model picker for a method: the models this server offers for it (the shipped one first), and its label."""
    typed = "; or type a hub-style name" + (" or a model in the operator's folder" if policy.model_dir else "")
    return {"choices": policy.choices(spec.name), "value": spec.offline_models[0], "label": spec.model_label,
            "info": f"the models this server offers{typed if policy.allow_custom else ''}"}


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
    return command_line(spec.module, [*argv, *spec.cli_flags, "--output", output])


# --- running pipelines ----------------------------------------------------------------------------------------


class PipelineCache:
    """Pipelines loaded once, keyed by (pipeline name, model, CLIP models, device); keeps the most recent few."""

    def __init__(self, capacity: int = 2,
                 loader: Callable[..., Pipeline] = load_pipeline):
        self.capacity = capacity
        self.loader = loader
        self._pipelines: OrderedDict[tuple[Any, ...], Pipeline] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, name: str, model: str, clip_models: Sequence[str], device: torch.device,
            load_options: dict[str, Any] | None = None) -> Pipeline:
        """The cached pipeline, or a freshly loaded one (evicting the oldest first, to free its memory); options
        set when it loads are part of its key."""
        load_options = load_options or {}
        key = (name, model, tuple(clip_models), str(device), *sorted(load_options.items()))
        with self._lock:
            if key in self._pipelines:
                self._pipelines.move_to_end(key)
                return self._pipelines[key]
            while len(self._pipelines) >= self.capacity:
                self._pipelines.popitem(last=False)
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
            pipeline = self.loader(name, model, clip_models, device, **load_options)
            self._pipelines[key] = pipeline
            return pipeline

    def __len__(self) -> int:
        """How many pipelines are loaded."""
        return len(self._pipelines)

    def loaded(self) -> list[str]:
        """The loaded pipelines in words, oldest first, e.g. 'vqgan_clip shapes-tiny (CLIP shapes-tiny) on cpu'."""
        with self._lock:
            keys = list(self._pipelines)
        return [f"{name} {model} (CLIP {', '.join(clips)}) on {device}" for name, model, clips, device in keys]


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
    """One request: its spec and checked arguments, then (once its turn comes) its loaded pipeline."""

    spec: PipelineSpec
    model: str
    clip_models: tuple[str, ...]
    prompt: str
    options: dict[str, Any]
    folder: Path
    num_images: int = 1
    prepare: Callable[[Job], None] | None = None  # finishes the options once the pipeline is loaded
    pipeline: Pipeline = None
    inputs: list[Path] = field(default_factory=list)

    @property
    def accepted(self) -> set[str]:
        """The options the pipeline's call takes."""
        return self.spec.call_options(self.pipeline)

    @property
    def load_settings(self) -> dict[str, Any]:
        """The options set when the pipeline loads."""
        return {key: value for key, value in self.options.items() if key in self.spec.load_options}

    def call_settings(self, seed: int) -> dict[str, Any]:
        """The options of one call, with its seed."""
        return {key: value for key, value in {**self.options, "seed": seed}.items()
                if key not in self.spec.load_options}

    @property
    def steps_expected(self) -> int:
        """Steps one image takes: all of them, or for diffusion edits the share redone."""
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
    """The handlers behind the page: check the inputs against the operator's limits and models, wait for the
    turn, run a cached pipeline with previews, save the PNG."""

    def __init__(self, config: AppConfig, cache: PipelineCache | None = None):
        self.config = config
        self.device = pick_device(config.device)
        self.cache = cache if cache is not None else PipelineCache()  # an empty cache is falsy
        self.stops = StopSignals()
        self.line = RunQueue(config.max_queue)

    def generate(self, prompt: str, negative: str, method: str, model: str, clip_models: list[str], size: str,
                 steps: float, cutn: float, num_images: float, seed: float | None, random_seed: bool,
                 lr: float | None, cut_pow: float | None, augment: str | None, clip_scale: float | None,
                 tv_scale: float | None, range_scale: float | None, cfg_scale: float | None,
                 sampler_steps: float | None, spectrum_decay: float | None, precision: str, results: list[str] | None,
                 request: gr.Request | None = None, progress: gr.Progress = gr.Progress()) -> Iterator[Outputs]:
        """Text to image: stream previews, then the results in the gallery and as downloads."""
        def job() -> Job:
            text = merge_negative_prompt(check_prompt(prompt), negative)
            options = {"size": check_size(size, self.config.max_size), **self._counts(steps, cutn),
                       "seed": seed_of(seed, random_seed), "lr": lr, "cut_pow": cut_pow, "augment": augment,
                       "clip_scale": clip_scale, "tv_scale": tv_scale, "range_scale": range_scale,
                       **load_time_fields(cfg_scale, sampler_steps, spectrum_decay), "precision": precision}
            built = self._job(method, model, clip_models, text, options)
            built.num_images = check_count(num_images, "images", self.config.max_num_images, "--max-num-images")
            return built

        yield from self._serve(job, results, request, progress)

    def edit(self, editor: dict[str, Any] | None, mask_file: str | None, target: str, source: str, edit_method: str,
             method: str, model: str, clip_models: list[str], steps: float, cutn: float, edit_strength: float,
             seed: float | None, random_seed: bool, lr: float | None, cut_pow: float | None, augment: str | None,
             clip_scale: float | None, tv_scale: float | None, range_scale: float | None, cfg_scale: float | None,
             sampler_steps: float | None, spectrum_decay: float | None, precision: str,
             results: list[str] | None, request: gr.Request | None = None,
             progress: gr.Progress = gr.Progress()) -> Iterator[Outputs]:
        """Edit an uploaded photo: the painted (or uploaded) mask, a directional edit, or an init-image edit."""
        max_pixels = self.config.max_upload_pixels

        def job() -> Job:
            if edit_method not in EDIT_METHODS:
                raise InvalidInputError(f"unknown edit method {edit_method!r}; choose one of {', '.join(EDIT_METHODS)}")
            text = check_prompt(target, "target text")
            counts = self._counts(steps, cutn)
            check_numbers({"edit_strength": edit_strength})
            photo = editor_photo(editor, max_pixels)
            mask = None
            if edit_method == MASKED_EDIT:
                mask = (uploaded_mask(mask_file, photo.size, max_pixels) if mask_file
                        else editor_mask(editor, photo.size, max_pixels))
                if mask is None:
                    raise InvalidInputError("a masked edit changes the painted region; paint it with the brush "
                                            "or upload a mask (white = change)")
            directional = edit_method in (DIRECTIONAL_EDIT, LOCALISED_EDIT)
            if directional and not (source and source.strip()):
                raise InvalidInputError("a directional edit needs a source text describing the photo, "
                                        "e.g. 'a red circle'")
            options = {**counts, "seed": seed_of(seed, random_seed), "lr": lr, "cut_pow": cut_pow,
                       "augment": augment, "clip_scale": clip_scale, "tv_scale": tv_scale,
                       "range_scale": range_scale, **load_time_fields(cfg_scale, sampler_steps, spectrum_decay),
                       "precision": precision, "source_text": source.strip() if directional else None,
                       "init_image": photo,
                       "mask": AUTO_MASK if edit_method == LOCALISED_EDIT else mask}  # images: files once sized

            def prepare(built: Job) -> None:
                if "edit_strength" in built.accepted:
                    built.options["edit_strength"] = edit_strength
                size = round_size(fit_within(photo.size, self.config.max_size), built.pipeline.size_factor,
                                  built.model)
                built.options["size"] = size
                built.options["init_image"] = self._save_input(built, photo.resize(size, Image.Resampling.LANCZOS),
                                                               "init")
                if mask is not None:
                    built.options["mask"] = self._save_input(built, mask.resize(size, Image.Resampling.NEAREST),
                                                             "mask")

            built = self._job(method, model, clip_models, text, options)
            built.prepare = prepare
            return built

        yield from self._serve(job, results, request, progress)

    def stop(self, request: gr.Request | None = None) -> None:
        """Stop this session's request (running or waiting); a run ends at its next preview, keeping its image."""
        self.stops.stop(session_of(request))

    def model_picker_update(self, method: str) -> dict[str, Any]:
        """The model picker's new choices and value when the method changes."""
        return gr.update(**model_picker_settings(get_pipeline_spec(method), self.config.models))

    def health(self) -> dict[str, Any]:
        """For operators and monitors: the device, the run going, the line behind it, and the models loaded."""
        return {"status": "ok", "device": str(self.device), "running": self.line.running,
                "waiting": self.line.waiting, "max_queue": self.config.max_queue, "models_loaded": self.cache.loaded()}

    def status_line(self) -> str:
        """The health in one line for the page."""
        state = self.health()
        running = "a run going" if state["running"] else "idle"
        models = "; ".join(state["models_loaded"]) or "none yet"
        return (f"Server: {state['device']}, {running}, {state['waiting']} of at most {state['max_queue']} runs "
                f"waiting. Models loaded: {models}.")

    # --- internals --------------------------------------------------------------------------------------------

    def _counts(self, steps: float, cutn: float) -> dict[str, int]:
        """Steps and cutouts, within the server's limits."""
        return {"steps": check_count(steps, "steps", self.config.max_steps, "--max-steps"),
                "cutn": check_count(cutn, "cutouts", self.config.max_cutn, "--max-cutn")}

    def _job(self, method: str, model: str | None, clip_models: list[str] | None, prompt: str,
             options: dict[str, Any]) -> Job:
        """A job for the method with the options that are set, its models checked against the server's list
        (nothing is loaded yet)."""
        spec = get_pipeline_spec(method)
        policy = self.config.models
        model = (model or "").strip()
        if not model:
            raise InvalidInputError(f"no {spec.model_label} chosen; pick one, e.g. {spec.offline_models[0]}")
        clips = tuple(clip.strip() for clip in clip_models or [] if clip and clip.strip())
        if not clips:
            raise InvalidInputError(f"no CLIP model chosen; pick at least one, e.g. {policy.choices(CLIP_KIND)[0]}")
        model = policy.check_model(spec.name, model, spec.model_label)
        clips = tuple(policy.check_clip(clip) for clip in clips)
        chosen = {key: value for key, value in options.items() if value is not None and value != ""}
        check_numbers(chosen)
        return Job(spec, model, clips, prompt, chosen, new_run_folder(self.config.output_dir))

    def _load(self, job: Job) -> None:
        """Load the job's pipeline (cached); refuse options its call does not take; finish the options."""
        job.pipeline = self.cache.get(job.spec.name, job.model, job.clip_models, self.device, job.load_settings)
        check_options(job.spec, job.accepted | set(job.spec.load_options), job.options)
        if job.prepare is not None:
            job.prepare(job)

    def _save_input(self, job: Job, image: Image.Image, name: str) -> Path:
        """Save an edit's input beside the result (so the recipe's command finds it) and return its path."""
        path = job.folder / f"{name}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path)
        job.inputs.append(path)
        return path

    def _serve(self, make_job: Callable[[], Job], results: list[str] | None, request: gr.Request | None,
               progress: gr.Progress) -> Iterator[Outputs]:
        """Run a request with readable errors: inputs are checked before it joins the line; a failure shows one
        line in the page and the app keeps serving."""
        session = session_of(request)
        stop = self.stops.start(session)
        ticket = None
        try:
            job = make_job()
            ticket = self.line.join()
            yield from self._wait_turn(ticket, stop)
            if stop.is_set():
                yield outputs(status="Stopped before it started.")
                return
            yield outputs(status="Loading the models…")
            self._load(job)
            yield from self._execute(job, list(results or []), stop, progress)
        except Exception as error:  # one line, naming the results folder without where the server keeps it
            message = error_message(error).replace(str(self.config.output_dir), self.config.output_dir.name)
            yield outputs(status=f"**Error:** {html.escape(message, quote=False)}")
            raise gr.Error(html.escape(message, quote=False), print_exception=False) from None
        finally:
            if ticket is not None:
                self.line.leave(ticket)
            self.stops.finish(session, stop)

    def _wait_turn(self, ticket: object, stop: threading.Event) -> Iterator[Outputs]:
        """Wait for the ticket's turn (or Stop), showing how many runs are ahead; the status is sent again each
        poll, so a visitor who left is noticed and gives up the place."""
        ahead = self.line.wait(ticket, 0)
        while ahead and not stop.is_set():
            yield outputs(status=f"Waiting for the server: {ahead} run{'s' if ahead > 1 else ''} ahead…")
            ahead = self.line.wait(ticket, WAIT_POLL_S)

    def _execute(self, job: Job, results: list[str], stop: threading.Event, progress: gr.Progress) -> Iterator[Outputs]:
        """Run the job once per image (consecutive seeds), streaming previews; save each result (also when
        stopped) with its recipe."""
        pipeline, per_image = job.pipeline, job.steps_expected
        total = per_image * job.num_images
        save_every = max(1, job.options["steps"] // PREVIEWS_PER_RUN)
        yield outputs(status=f"Running {job.spec.title} on {self.device} (seed {job.options['seed']})…",
                      seed=job.options["seed"])
        files: list[str] = []
        for index in range(job.num_images):
            seed = job.options["seed"] + index
            options, call = {**job.options, "seed": seed}, job.call_settings(seed)
            output, done = None, index * per_image
            for event in stream_pipeline(lambda callback: pipeline(job.prompt, **call, save_every=save_every,
                                                                   callback=callback, progress=False), stop):
                if isinstance(event, Preview):
                    progress((min(done + event.step, total), total), desc="steps")
                    yield outputs(preview=event.image, status=f"Step {done + min(event.step, per_image)} of {total}…")
                else:
                    output = event
            path = self._save_result(job, options, output)
            results.insert(0, str(path))
            files.append(str(path))
            if stop.is_set():
                break
        results[:] = [result for result in results if Path(result).is_file()]  # older ones may have been removed
        recipe = output.recipe
        count = f"{len(files)} images, {recipe['steps_done']} steps each" if len(files) > 1 else \
            f"{recipe['steps_done']} steps"
        state = (f"Stopped after {recipe['steps_done']} steps; the last image is kept." if stop.is_set()
                 else f"Done: {count}.")
        status = (f"{state} {recipe['size']}, seed {recipe['seed']}, {recipe['seconds']} s. "
                  f"The download is the PNG with its recipe: `{Path(files[-1]).name}`")
        yield outputs(preview=output.images[0], status=status, gallery=results,
                      files=[*files, *map(str, job.inputs)], results=results)

    def _save_result(self, job: Job, options: dict[str, Any], output: Any) -> Path:
        """Save the result PNG with the pipeline's recipe and the CLI command that reproduces it; then remove the
        oldest results beyond the server's limits."""
        name = f"{slug(parse_prompts(job.prompt)[0].text)}-{output.recipe['seed']}.png"
        command = cli_command(job.spec, job.model, job.clip_models, job.prompt, options, name)
        path = save_png(output.images[0], job.folder / name, {**output.recipe, "command": command})
        prune_results(self.config.output_dir, self.config.keep_results, self.config.keep_results_mb)
        return path


def load_time_fields(cfg_scale: float | None, sampler_steps: float | None,
                     spectrum_decay: float | None) -> dict[str, Any]:
    """The advanced fields that some methods take when they load (others in their call): the sampler's steps as
    a count."""
    steps = sampler_steps
    if isinstance(steps, float) and math.isfinite(steps) and steps.is_integer():
        steps = int(steps)
    return {"cfg_scale": cfg_scale, "sampler_steps": steps, "spectrum_decay": spectrum_decay}


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
