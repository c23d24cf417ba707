"""The ``minillm`` command: prepare | tokenizer | train | eval | sample | generate | chat | sft | dpo.

Each family registers its own subcommand (argparse) next to its code; this module only
collects them, so ``minillm train --help`` and ``python -m minillm train --help`` read the
same. Errors from bad input (ValueError, FileNotFoundError) are printed as one clear
line with exit status 2 instead of a traceback.
"""
from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    from minillm import generate_cli  # noqa: PLC0415  (each command imports its family on demand)
    from minillm.data import cli as data_cli  # noqa: PLC0415
    from minillm.posttrain import cli as posttrain_cli  # noqa: PLC0415
    from minillm.tokenizer import cli as tokenizer_cli  # noqa: PLC0415
    from minillm.train import cli as train_cli  # noqa: PLC0415

    parser = argparse.ArgumentParser(prog="minillm", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    data_cli.register(subparsers)
    tokenizer_cli.register(subparsers)
    train_cli.register(subparsers)
    generate_cli.register(subparsers)
    posttrain_cli.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    if not argv:
        argv = ["train"]   # the main job: `minillm` alone trains on the embedded corpus
    args, rest = parser.parse_known_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    if rest and not getattr(args, "accepts_overrides", False):
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        return handler(args, rest) if getattr(args, "accepts_overrides", False) else handler(args)
    except (ValueError, FileNotFoundError) as error:
        print(f"minillm {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\nminillm {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
