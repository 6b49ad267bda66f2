"""The command line's shared parts, light to import (no torch): the parser with one-line errors, the options every
pipeline CLI shares, the reproducing command, the error handling of a run, and the defaults read from the source.

A CLI builds its parser from these before its heavy imports, so that `--help` and usage errors answer at once.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import inspect
import shlex
import sys
import warnings
from pathlib import Path
from typing import Any, Callable, NoReturn, Sequence

from guidance.errors import ToolkitError
from guidance.names import AUGMENT_PRESETS, PRECISION_CHOICES
from guidance.validation import MAX_CUTN

DEFAULT_CLIP = "ViT-B-32:openai"  # the field's default guiding CLIP


def call_defaults(function: Callable[..., Any]) -> dict[str, Any]:
    """The keyword defaults of a pipeline's call: the one source the CLIs and the app read them from."""
    return {name: parameter.default for name, parameter in inspect.signature(function).parameters.items()
            if parameter.default is not inspect.Parameter.empty}


def _source(module: str) -> ast.Module:
    """The syntax tree of a module's source file, read without importing the module."""
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(f"no source for module {module!r}")
    return ast.parse(Path(spec.origin).read_text(encoding="utf-8"), spec.origin)


def source_literals(module: str, qualname: str) -> dict[str, Any]:
    """The literal values a module's source gives, without importing it (so a parser is built before torch loads):
    a function's keyword defaults (`qualname` 'function' or 'Class.method', as `call_defaults` gives them), or a
    class's own class-level assignments ('Class'). Values that are not literals are left out."""
    node: ast.AST = _source(module)
    for part in qualname.split("."):
        node = next(child for child in node.body  # type: ignore[attr-defined]
                    if isinstance(child, (ast.ClassDef, ast.FunctionDef)) and child.name == part)
    if isinstance(node, ast.FunctionDef):
        arguments = node.args
        positional = arguments.posonlyargs + arguments.args
        pairs = [*zip(positional[len(positional) - len(arguments.defaults):], arguments.defaults),
                 *((argument, default) for argument, default in zip(arguments.kwonlyargs, arguments.kw_defaults)
                   if default is not None)]
        values = [(argument.arg, default) for argument, default in pairs]
    else:
        values = [(statement.target.id, statement.value) for statement in node.body  # type: ignore[attr-defined]
                  if isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name) and statement.value]
        values += [(target.id, statement.value) for statement in node.body  # type: ignore[attr-defined]
                   if isinstance(statement, ast.Assign) for target in statement.targets if isinstance(target, ast.Name)]
    literals = {}
    for name, value in values:
        try:
            literals[name] = ast.literal_eval(value)
        except ValueError:
            continue
    return literals


def module_summary(module: str) -> str:
    """The first paragraph of a module's docstring (a CLI's description), read without importing it."""
    return (ast.get_docstring(_source(module), clean=False) or "").split("\n\n")[0]


def command_line(module: str, argv: Sequence[str]) -> str:
    """The shell command that reproduces a CLI run."""
    return " ".join(["python", "-m", module, *map(shlex.quote, argv)])


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Adds '(default: X)' to an option's help, unless the help already speaks of its default."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        """The help text, with the default appended where it says something and is not said already."""
        text = action.help or ""
        if "default" in text or action.default is None or action.default is False or action.default in ([], ""):
            return text
        return super()._get_help_string(action)


class CLIParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line plus a pointer to --help (exit 2), not the whole usage."""

    def __init__(self, **kwargs: Any):
        super().__init__(**{"formatter_class": DefaultsHelpFormatter, **kwargs})

    def error(self, message: str) -> NoReturn:
        """Print `error: MESSAGE; see PROG --help` and exit 2."""
        self.exit(2, f"error: {message}; see {self.prog} --help\n")


def add_guidance_arguments(parser: argparse.ArgumentParser, defaults: dict[str, Any], per: str,
                           augment_note: str = "") -> None:
    """The CLIP options every pipeline CLI shares: cutouts (count, size power, augmentation) and the CLIP models."""
    parser.add_argument("--cutn", type=int, default=defaults["cutn"],
                        help=f"cutouts per {per}, 1 to {MAX_CUTN} (memory grows with it)")
    parser.add_argument("--cut-pow", type=float, default=defaults["cut_pow"],
                        help="cutout size power (higher: smaller cutouts)")
    parser.add_argument("--augment", choices=AUGMENT_PRESETS, default=defaults["augment"],
                        help=f"cutout augmentation preset{augment_note}")
    parser.add_argument("--clip-model", action="append", default=None, metavar="NAME[:PRETRAINED][:WEIGHT]",
                        help=f"CLIP model, repeatable for an ensemble (default: {DEFAULT_CLIP})")


def add_runtime_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every pipeline CLI shares: output, seed, device, precision, video and saving."""
    parser.add_argument("-o", "--output", default="output.png",
                        help="output PNG, carrying the recipe; an existing file is replaced only when the run ends "
                             "(default: output.png)")
    parser.add_argument("--seed", type=int, default=None,
                        help="random seed, 0 to 2**63 - 1 (default: a fresh one, stored in the PNG)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N, mps (default: best available)")
    parser.add_argument("--precision", choices=PRECISION_CHOICES, default="auto",
                        help="autocast precision for the models (bf16/fp16 save memory and time on GPUs); auto: bf16 "
                             "on CUDA GPUs that support it, fp32 elsewhere (default: auto)")
    parser.add_argument("--save-every", type=int, default=50,
                        help="every N steps, save the current image to NAME.partial.png (removed at the end) and a "
                             "video frame; 0: only at the end")
    parser.add_argument("--video", default=None, help="also write the progress as a video (.mp4, .webm, .mkv or .gif)")


def run_cli(main: Callable[[list[str]], int], argv: list[str] | None = None) -> int:
    """Run a CLI main: user errors print one line and exit 2, never a traceback."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_notice
            return main(argv)
    except ToolkitError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _show_notice(message: Warning | str, category: type[Warning], *rest: Any) -> None:
    """A warning as one `notice:` line on stderr (the CLIs' size and rounding notices)."""
    print(f"notice: {message}", file=sys.stderr)
