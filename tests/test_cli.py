"""The CLI: every verb renders --help without importing torch; signatures map onto flags."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Literal

import pytest

from rwkv1c.cli import COMMANDS, add_signature_arguments, main, parse_docstring
from rwkv1c.errors import UserError


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_renders_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: rwkv1c " + command)
    assert len(out.splitlines()) > 3


def test_help_imports_no_heavy_modules() -> None:
    code = (
        "import sys\n"
        "from rwkv1c.cli import build_parser\n"
        "build_parser()\n"
        "heavy = [m for m in ('torch', 'peft', 'bitsandbytes', 'transformers', 'numpy') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "", f"--help imported: {r.stdout.strip()}"


def test_top_level_help_lists_commands() -> None:
    r = subprocess.run([sys.executable, "-m", "rwkv1c", "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0
    for command in COMMANDS:
        assert command in r.stdout


def test_unknown_command_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["frobnicate"]) == 2
    assert "unknown command" in capsys.readouterr().err


def test_signature_becomes_flags() -> None:
    import argparse

    def verb(
        source: Path,
        *,
        count: int = 3,
        mode: Literal["a", "b"] = "a",
        tags: list[str] | None = None,
        ratio: float | None = None,
        fast: bool = False,
    ) -> None:
        """Do a thing.

        Longer description.

        Args:
            source: where from.
            count: how many
                (continued help line).
            mode: which mode.
            tags: labels, repeatable.
            ratio: a fraction.
            fast: go fast.
        """

    p = argparse.ArgumentParser()
    add_signature_arguments(p, verb)
    ns = p.parse_args(["x.txt", "--count", "5", "--mode", "b", "--tags", "t1", "t2", "--tags", "t3", "--fast"])
    assert ns.source == Path("x.txt") and ns.count == 5 and ns.mode == "b"
    assert ns.tags == ["t1", "t2", "t3"] and ns.fast is True and ns.ratio is None
    with pytest.raises(SystemExit):
        p.parse_args(["x", "--mode", "c"])
    summary, description, args = parse_docstring(verb.__doc__ or "")
    assert summary == "Do a thing." and description == "Longer description."
    assert args["count"] == "how many (continued help line)."


def test_missing_help_text_is_caught() -> None:
    import argparse

    def verb(*, undocumented: int = 1) -> None:
        """No args section."""

    with pytest.raises(TypeError, match="undocumented"):
        add_signature_arguments(argparse.ArgumentParser(), verb)


def test_user_error_exit_code(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import rwkv1c.cli as cli

    def failing(model: Path) -> None:
        """Fail.

        Args:
            model: a path.
        """
        raise UserError("it broke", hint="fix it")

    monkeypatch.setitem(cli.COMMANDS, "inspect", "tests.test_cli:_unused")
    monkeypatch.setattr(cli, "load_command", lambda name: failing)
    assert cli.main(["inspect", "x.pth"]) == 1
    err = capsys.readouterr().err
    assert "it broke" in err and "hint: fix it" in err


def test_percent_in_help_text_renders_as_written(capsys: pytest.CaptureFixture[str]) -> None:
    def verb(*, slower: bool = False) -> None:
        """A verb.

        Args:
            slower: about 30% slower.
        """

    import argparse

    parser = argparse.ArgumentParser(prog="x")
    add_signature_arguments(parser, verb)
    parser.print_help()
    assert "about 30% slower." in " ".join(capsys.readouterr().out.split())
