"""Command-line conventions shared by ``alnnode phantom|train|evaluate|bundle`` (the research and bundle tools).

* Multi-value options take lists and repeats alike (``action="extend"``, ``nargs="+"``):
  ``--options depth=18 --options cam_layer=layer3`` keeps both.
* A single-value option given twice with different values is an error naming both (:class:`Once`);
  argparse's default silently keeps the last one, which loses input.
* Named inputs are ``NAME=PATH`` (:func:`named_path`); a bare ``PATH`` is named later by the command.
* ``--help`` shows every default (:class:`Formatter`); a usage error is one line on stderr and exit 2
  (:class:`Parser`), never a traceback.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


class Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows ``(default: ...)`` for every option that has a default other than None/False/[]."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "%(default)" in text or action.default in (None, False, [], argparse.SUPPRESS):
            return text
        if action.option_strings or action.nargs in (argparse.OPTIONAL, argparse.ZERO_OR_MORE):
            return f"{text} (default: %(default)s)" if text else "default: %(default)s"
        return text


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line (``PROG: error: ...``) and exit status 2."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", Formatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class Once(argparse.Action):
    """Store a single value; a repeat with the same value is fine, a different one is an error."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:  # fmt: skip
        seen: set[str] = getattr(namespace, "_once_seen", set())
        if self.dest in seen and getattr(namespace, self.dest) != values:
            parser.error(f"argument {option_string}: given twice with different values "
                         f"{_show(getattr(namespace, self.dest))} and {_show(values)}; give it once")  # fmt: skip
        seen.add(self.dest)
        namespace._once_seen = seen
        setattr(namespace, self.dest, values)


class OnceFlag(argparse.Action):
    """``store_true`` that may be repeated (a flag cannot conflict with itself)."""

    def __init__(self, option_strings: Sequence[str], dest: str, default: Any = False, required: bool = False,
                 help: str | None = None) -> None:  # fmt: skip
        super().__init__(option_strings, dest, nargs=0, const=True, default=default, required=required, help=help)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:  # fmt: skip
        setattr(namespace, self.dest, True)


def _show(value: Any) -> str:
    return repr(str(value)) if isinstance(value, Path) else repr(value)


def parse_option(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` with VALUE parsed as JSON when it is JSON (``depth=18`` -> 18), else kept as text."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"model option wants KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(raw)
    except ValueError:
        return key, raw


def merge_options(pairs: Sequence[tuple[str, Any]], flag: str = "--options") -> dict[str, Any]:
    """``KEY=VALUE`` pairs as a dict; the same key with two different values is an error naming both."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out and out[key] != value:
            raise ValueError(f"{flag}: {key} given twice with different values {out[key]!r} and {value!r}")
        out[key] = value
    return out


def named_path(text: str) -> tuple[str | None, Path]:
    """``NAME=PATH`` -> (NAME, PATH); a plain ``PATH`` (also one holding '=' that exists) -> (None, PATH)."""
    name, sep, rest = text.partition("=")
    if sep and rest and not Path(text).exists():
        if not _NAME_RE.match(name):
            raise argparse.ArgumentTypeError(
                f"{text!r}: the name before '=' must be letters, digits, '_', '.', '+' or '-'")
        return name, Path(rest)
    return None, Path(text)


def name_inputs(items: Sequence[tuple[str | None, Path]], flag: str) -> list[tuple[str, Path]]:
    """Names for ``NAME=PATH`` inputs; an unnamed one is named by its file stem or, when stems collide
    (``runs/tin/oof_predictions.csv``, ``runs/r50/oof_predictions.csv``), by its folder. Two inputs that
    still share a name are an error naming both paths."""
    stems = [p.stem for n, p in items if n is None]
    out: list[tuple[str, Path]] = []
    for name, path in items:
        if name is None:
            name = path.stem if stems.count(path.stem) == 1 else (path.resolve().parent.name or path.stem)
        out.append((name, path))
    seen: dict[str, Path] = {}
    for name, path in out:
        if name in seen:
            raise ValueError(f"{flag}: two inputs named {name!r} ({seen[name]} and {path}); "
                             f"name them NAME=PATH")  # fmt: skip
        seen[name] = path
    return out


def setup_logging(level: int) -> None:
    """Plain ``LEVEL name: message`` lines on stderr, unless the caller (``alnnode -v``) set logging up."""
    import logging

    if not logging.getLogger().handlers:
        logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def check_out_dir(out: Path, *, overwrite: bool = False, resume: bool | None = None, flag: str = "--out",
                  ours: Sequence[str] = ()) -> None:  # fmt: skip
    """Refuse to write into a non-empty ``out`` unless ``overwrite`` or ``resume``.

    ``resume=None``: the command cannot resume. With ``overwrite`` the entries named in ``ours`` (this command's own outputs, glob patterns) are
    removed first, so no stale file of an earlier run survives; anything else in the folder is left alone.
    """
    import shutil

    if out.exists() and not out.is_dir():
        raise ValueError(f"{flag} {out}: exists and is not a folder")
    if not out.is_dir() or not any(out.iterdir()) or resume:
        return
    if not overwrite:
        also = "" if resume is None else " or --resume to continue it"
        raise ValueError(f"{flag} {out}: folder is not empty; give --overwrite to replace its results{also}")
    for pattern in ours:
        for entry in out.glob(pattern):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()


def print_error(prog: str, exc: BaseException) -> None:
    """``PROG: error: LINE`` on stderr for every line of ``exc`` (a manifest error holds one per bad row)."""
    for line in str(exc).splitlines() or [type(exc).__name__]:
        sys.stderr.write(f"{prog}: error: {line}\n")
