"""``alnnode bundle``: create an untrained bundle or verify one."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from workers.errors import BundleError
from workers.models import ARCHS, build


def parse_option(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` with VALUE parsed as JSON when it is JSON (``depth=18`` -> 18), else kept as text."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"model option wants KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(raw)
    except ValueError:
        return key, raw


def main(argv: list[str] | None = None) -> int:
    """``alnnode bundle create --arch ARCH --out DIR [--option k=v ...] [--name NAME]`` and ``verify DIR``."""
    parser = argparse.ArgumentParser(
        prog="alnnode bundle", description="Create or verify aln-node model bundles."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    create = sub.add_parser("create", help="write an UNTRAINED bundle (random weights) for pipeline tests")
    create.add_argument("--arch", required=True, choices=ARCHS)
    create.add_argument("--out", required=True, type=Path)
    create.add_argument("--option", action="append", default=[], type=parse_option, metavar="KEY=VALUE")
    create.add_argument("--name", default=None)
    create.add_argument("--seed", type=int, default=0)
    create.add_argument("--torchscript", action="store_true", help="also write models/model.ts")
    verify = sub.add_parser("verify", help="load a bundle, check it, print what it is")
    verify.add_argument("path", type=Path)
    args = parser.parse_args(argv)
    from workers.bundle import load_bundle, save_bundle  # late: workers.bundle re-exports this module

    try:
        if args.command == "create":
            options = dict(args.option)
            torch.manual_seed(args.seed)
            model = build(args.arch, **options)
            name = args.name or f"aln-{args.arch}-untrained"
            out = save_bundle(model, args.out, arch=args.arch, options=options, name=name, synthetic_only=True,
                              untrained=True, torchscript=args.torchscript)  # fmt: skip
            print(f"untrained {args.arch} bundle written to {out.resolve()}")
        else:
            loaded = load_bundle(args.path)
            print(json.dumps({"path": str(args.path.resolve()), **loaded.info.__dict__, "frames": loaded.frames,
                              "size": loaded.size, "options": loaded.metadata["options"]}, indent=2))  # fmt: skip
    except (BundleError, ValueError) as exc:
        print(f"alnnode bundle: error: {exc}")
        return 2
    return 0
