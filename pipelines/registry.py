"""Pipelines by name, for the web app, batch jobs and docs: a new pipeline is one module plus one row here.

Each module named in `PIPELINES` defines `SPEC`, a `PipelineSpec`; modules are imported only when asked for.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

from guidance.errors import InvalidInputError

if TYPE_CHECKING:
    import torch

# name -> module; the module defines SPEC and is runnable as `python -m MODULE`.
PIPELINES: dict[str, str] = {
    "vqgan_clip": "pipelines.vqgan_clip",
    "pixels_clip": "pipelines.pixels_clip",
    "clip_guided_diffusion": "pipelines.clip_guided_diffusion",
    "noise_optimization": "pipelines.noise_optimization",
}


@dataclass(frozen=True)
class PipelineSpec:
    """What a front end needs to know of a pipeline: how to load it, its model picker, and how to call it."""

    name: str  # registry name, also the recipe's 'pipeline'
    title: str  # shown in menus
    module: str  # `python -m MODULE` is its CLI
    load: Callable[..., Any]  # load(model, clip_models, device, **load_options) -> pipeline (a callable -> PipelineOutput)
    model_label: str  # what its model picker chooses, e.g. 'VQGAN'
    model_flag: str  # the CLI option naming the model, e.g. '--vqgan'
    model_choices: Callable[[], Sequence[str]]  # names offered in menus
    offline_models: tuple[str, ...]  # the models that ship with the package, the first preselected in menus
    cli_flags: tuple[str, ...] = ()  # options that pick this pipeline in its module's CLI, e.g. ('--method', 'sampler')
    load_options: tuple[str, ...] = ()  # keywords of the class's from_pretrained set once per load, e.g. 'sampler_steps'

    def call_options(self, pipeline: Any) -> set[str]:
        """The keyword options the pipeline's call accepts."""
        return {name for name, parameter in inspect.signature(pipeline.__call__).parameters.items()
                if parameter.kind is inspect.Parameter.KEYWORD_ONLY}


def pipeline_names() -> list[str]:
    """The registered pipelines, in menu order."""
    return list(PIPELINES)


def get_pipeline_spec(name: str) -> PipelineSpec:
    """The spec of a registered pipeline (its module is imported now)."""
    if name not in PIPELINES:
        raise InvalidInputError(f"unknown pipeline {name!r}; choose one of {', '.join(PIPELINES)}")
    return importlib.import_module(PIPELINES[name]).SPEC


def load_pipeline(name: str, model: str, clip_models: Sequence[str], device: torch.device, **load_options: Any) -> Any:
    """A registered pipeline loaded on the given model and CLIP models (and its `load_options`)."""
    return get_pipeline_spec(name).load(model, list(clip_models), device, **load_options)
