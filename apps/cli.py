"""The web app's command line, light to import (no gradio, no torch): `python -m apps.gradio_app` parses it before
its heavy imports, so that `--help` and usage errors answer at once."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from types import SimpleNamespace

from pipelines.cli import CLIParser, module_summary, source_literals

DEFAULT_OUTPUT_DIR = Path(tempfile.gettempdir()) / "clip-guidance-app"  # apps.handlers.AppConfig.output_dir


def positive(text: str) -> int:
    """An argparse type: a whole number of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The command-line options; their defaults are those of `apps.handlers.AppConfig`."""
    parser = CLIParser(prog="python -m apps.gradio_app", description=module_summary("apps.gradio_app"),
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    defaults = SimpleNamespace(**source_literals("apps.handlers", "AppConfig"), output_dir=DEFAULT_OUTPUT_DIR)
    serving = parser.add_argument_group("serving")
    serving.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    serving.add_argument("--port", type=int, default=7860, help="port to listen on")
    serving.add_argument("--share", action="store_true", help="also serve through a public gradio.live link")
    serving.add_argument("--auth", action="append", default=[], metavar="USER:PASS",
                         help="a login (repeatable); Gradio asks for one before the page opens")
    serving.add_argument("--auth-file", type=Path, default=None, help="a text file of USER:PASS lines")
    serving.add_argument("--max-queue", type=int, default=defaults.max_queue,
                         help="runs that may wait behind the running one; more get a 'busy' message")
    serving.add_argument("--device", default=defaults.device, help="cpu, cuda, cuda:N, mps or auto")
    models = parser.add_argument_group("models")
    models.add_argument("--models", action="append", default=[], metavar="FILE|KIND=NAME,...",
                        help="models visitors may pick besides the shipped ones: a file of KIND=NAME[,NAME...] lines, "
                             "or one such entry (repeatable); KIND is a pipeline name or 'clip'")
    models.add_argument("--allow-custom-models", action="store_true",
                        help="let visitors type other model names: hub-style names, or names inside --model-dir")
    models.add_argument("--model-dir", type=Path, default=None,
                        help="the one folder whose files and folders typed model names may name")
    limits = parser.add_argument_group("limits (enforced whatever a client sends)")
    limits.add_argument("--max-size", type=int, default=defaults.max_size,
                        help="largest output side in pixels; bigger photos are scaled down to fit")
    limits.add_argument("--max-steps", type=positive, default=defaults.max_steps, help="most steps a run may take")
    limits.add_argument("--max-cutn", type=positive, default=defaults.max_cutn, help="most cutouts a run may use")
    limits.add_argument("--max-num-images", type=positive, default=defaults.max_num_images,
                        help="most images one text-to-image request may make")
    limits.add_argument("--max-upload-pixels", type=positive, default=defaults.max_upload_pixels,
                        help="uploads with more pixels are refused before they are decoded")
    results = parser.add_argument_group("results")
    results.add_argument("--output-dir", type=Path, default=defaults.output_dir, help="where results are saved")
    results.add_argument("--keep-results", type=positive, default=None,
                         help="keep only the newest N runs' results (the oldest are removed); default: all")
    results.add_argument("--keep-results-mb", type=float, default=None,
                         help="keep at most this many MB of results (the oldest are removed)")
    return parser
