"""The `rwkv1c` command: a thin dispatch table of importable functions.

Each verb is a plain Python function. Its signature and its Google-style docstring *are* the
`--help` text: parameters without a default that can be passed positionally become positional
arguments, everything else becomes a `--flag`. Verb modules keep heavy imports (torch, peft,
bitsandbytes) inside their functions, so `--help` stays instant and never touches CUDA.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import sys
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from rwkv1c.errors import UserError

# verb -> "module:function". Adding a verb is one line here.
COMMANDS: dict[str, str] = {
    "init": "rwkv1c.commands.init:init",
    "inspect": "rwkv1c.commands.inspect:inspect_checkpoint",
    "prepare": "rwkv1c.commands.prepare:prepare",
    "train": "rwkv1c.commands.train:train",
    "merge": "rwkv1c.commands.merge:merge",
    "generate": "rwkv1c.commands.generate:generate",
    "chat": "rwkv1c.commands.chat:chat",
    "serve": "rwkv1c.commands.serve:serve",
    "harvest": "rwkv1c.commands.harvest:harvest",
    "eval": "rwkv1c.commands.eval:evaluate",
    "doctor": "rwkv1c.commands.doctor:doctor",
    "plan": "rwkv1c.commands.plan:plan",
    "download": "rwkv1c.commands.download:download",
}


def load_command(name: str) -> Callable[..., Any]:
    """Import the function behind a verb."""
    module_name, func_name = COMMANDS[name].split(":")
    return getattr(importlib.import_module(module_name), func_name)


def parse_docstring(doc: str) -> tuple[str, str, dict[str, str]]:
    """Split a Google-style docstring into (summary line, description, {arg: help})."""
    lines = doc.strip().splitlines()
    summary = lines[0].strip() if lines else ""
    body: list[str] = []
    args: dict[str, str] = {}
    current: str | None = None
    args_indent = 0
    section = "body"
    for raw in lines[1:]:
        stripped = raw.strip()
        if stripped in ("Args:", "Arguments:"):
            section = "args"
            continue
        if stripped in ("Returns:", "Raises:", "Yields:", "Examples:", "Example:"):
            section = "other"
            continue
        if section == "body":
            body.append(raw)
        elif section == "args" and stripped:
            head, sep, rest = stripped.partition(":")
            indent = len(raw) - len(raw.lstrip())
            if sep and head.isidentifier() and (current is None or indent <= args_indent):
                current = head
                args_indent = indent
                args[current] = rest.strip()
            elif current is not None:
                args[current] += " " + stripped
    return summary, "\n".join(body).strip(), args


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        members = [a for a in get_args(tp) if a is not type(None)]
        if len(members) == 1 and len(get_args(tp)) == 2:
            return members[0], True
    return tp, False


def _converter(tp: Any) -> Callable[[str], Any]:
    if tp in (str, int, float):
        return tp  # type: ignore[no-any-return]
    if tp is Path:
        return Path
    raise TypeError(f"unsupported CLI parameter type: {tp!r}")


def add_signature_arguments(parser: argparse.ArgumentParser, func: Callable[..., Any]) -> None:
    """Add one argparse argument per parameter of ``func``, with help from its docstring."""
    _, _, arg_help = parse_docstring(inspect.getdoc(func) or "")
    hints = typing.get_type_hints(func)
    for param in inspect.signature(func).parameters.values():
        tp, optional = _unwrap_optional(hints[param.name])
        help_text = arg_help.get(param.name)
        if not help_text:
            raise TypeError(f"{func.__qualname__}: parameter {param.name!r} has no help text in its docstring")
        flag = "--" + param.name.replace("_", "-")
        positional = param.default is inspect.Parameter.empty and param.kind in (
            inspect.Parameter.POSITIONAL_ONLY,
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
        )
        help_text = help_text.replace("%", "%%")  # argparse expands %-formats in help text
        kwargs: dict[str, Any] = {"help": help_text}
        origin = get_origin(tp)
        if tp is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif origin is Literal:
            choices = list(get_args(tp))
            kwargs["choices"] = choices
            kwargs["type"] = type(choices[0])
        elif origin in (list, tuple):
            (item,) = get_args(tp)[:1]
            kwargs["type"] = _converter(item)
            if positional:
                kwargs["nargs"] = "+"
            else:
                kwargs["action"] = "extend"
                kwargs["nargs"] = "+"
        else:
            kwargs["type"] = _converter(tp)
        if positional:
            kwargs["metavar"] = param.name.upper()
            parser.add_argument(param.name, **kwargs)
            continue
        if param.default is inspect.Parameter.empty:
            kwargs["required"] = True
        else:
            default = param.default
            kwargs["default"] = list(default) if isinstance(default, tuple) and origin in (list, tuple) else default
            if default not in (None, False, True, (), []) and kwargs.get("action") is None:
                kwargs["help"] = f"{help_text} (default: {default})"
        if optional and kwargs.get("action") is None and "metavar" not in kwargs:
            kwargs["metavar"] = param.name.upper()
        parser.add_argument(flag, dest=param.name, **kwargs)


def build_parser(commands: dict[str, str] | None = None) -> argparse.ArgumentParser:
    """The top-level parser with one sub-parser per verb (modules are imported on demand)."""
    from rwkv1c import __version__

    parser = argparse.ArgumentParser(
        prog="rwkv1c",
        description="Fine-tune RWKV-7 with LoRA / QLoRA for 1C:Enterprise code, and run it locally.",
    )
    parser.add_argument("--version", action="version", version=f"rwkv1c {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS if commands is None else commands:
        func = load_command(name)
        summary, description, _ = parse_docstring(inspect.getdoc(func) or "")
        p = sub.add_parser(
            name,
            help=summary,
            description=f"{summary}\n\n{description}".strip(),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        add_signature_arguments(p, func)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `rwkv1c` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # Only the chosen verb's module is imported, so one verb's dependencies never slow another.
    chosen = next((a for a in argv if not a.startswith("-")), None)
    if chosen is not None and chosen not in COMMANDS:
        print(f"rwkv1c: unknown command {chosen!r}; choose from: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    parser = build_parser({chosen: COMMANDS[chosen]} if chosen else None)
    if chosen is None:
        if any(a in ("-h", "--help", "--version") for a in argv):
            parser.parse_args(argv)
        parser.print_help(sys.stderr)
        return 2
    args = vars(parser.parse_args(argv))
    command = args.pop("command")
    func = load_command(command)
    try:
        result = func(**args)
    except UserError as exc:
        print(f"rwkv1c {command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"rwkv1c {command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        from rwkv1c.hints import print_hint

        if not print_hint(command, exc):
            raise
        return 1
    return result if isinstance(result, int) else 0
