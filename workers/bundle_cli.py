"""``alnnode bundle``: create an untrained bundle or verify one."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from workers.cli_args import Once, OnceFlag, Parser, merge_options, parse_option, print_error
from workers.errors import BundleError
from workers.models import ARCHS, build


def main(argv: list[str] | None = None) -> int:
    """``alnnode bundle create --arch ARCH --out DIR [--option k=v ...] [--name NAME]`` and ``verify DIR``."""
    parser = Parser(prog="alnnode bundle", description="Create or verify aln-node model bundles.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    create = sub.add_parser("create", help="write an UNTRAINED bundle (random weights) for pipeline tests")
    create.add_argument("--arch", required=True, choices=ARCHS, action=Once)
    create.add_argument("--out", required=True, type=Path, action=Once)
    create.add_argument("--option", "--options", nargs="+", action="extend", default=[], type=parse_option,
                        metavar="KEY=VALUE", help="model options, repeat or list them")
    create.add_argument("--name", default=None, action=Once)
    create.add_argument("--seed", type=int, default=0, action=Once)
    create.add_argument("--torchscript", action=OnceFlag, help="also write models/model.ts")
    verify = sub.add_parser("verify", help="load a bundle, check it, print what it is")
    verify.add_argument("path", type=Path)
    args = parser.parse_args(argv)
    from workers.bundle import load_bundle, save_bundle  # late: workers.bundle re-exports this module

    try:
        if args.command == "create":
            options = merge_options(args.option, "--option")
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
        print_error("alnnode bundle", exc)
        return 2
    return 0
