"""The ``minillm`` command: prepare | tokenizer | train | eval | export | memory | doctor | health | sample | generate | chat | sft | dpo | serve.

Each family declares its commands next to its code (a config class and a handler, through
:func:`minillm.commandline.register`); this module only collects them and routes the arguments, so
``minillm train --help`` and ``python -m minillm train --help`` read the same. Every command reads
``--config FILE.toml`` and ``--key value`` options the same way and runs inside one error boundary
(:func:`minillm.commandline.run`, :mod:`minillm.errors`): 0 success; 2 bad input or another known
failure (one clear line, no traceback); 3 a training run that diverged; 4 a ``minillm doctor`` check
failed (``train --doctor`` too); 5 ``minillm health`` raised a flag; 130 after Ctrl-C; 141
when the reader of the output went away (``| head``); 1 an unexpected exception, in one line naming
the log file with its traceback (``--debug``, before or after the command, prints the traceback
instead).
"""
from __future__ import annotations

import argparse
import sys

from minillm import commandline, doctor
from minillm.data import cli as data_cli
from minillm.generation import cli as generation_cli
from minillm.health import report as health_report
from minillm.posttrain import cli as posttrain_cli
from minillm.serve import cli as serve_cli
from minillm.tokenizer import cli as tokenizer_cli
from minillm.train import cli as train_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="minillm", description=__doc__.splitlines()[0])
    parser.add_argument(commandline.DEBUG_FLAG, action="store_true",
                        help="print the traceback of a failure (it is written to a log file otherwise)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    data_cli.register(subparsers)
    tokenizer_cli.register(subparsers)
    train_cli.register(subparsers)
    doctor.register(subparsers)
    health_report.register(subparsers)
    generation_cli.register(subparsers)
    posttrain_cli.register(subparsers)
    serve_cli.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    if all(token == commandline.DEBUG_FLAG for token in argv):
        argv = [*argv, "train"]   # the main job: `minillm` alone trains on the embedded Shakespeare corpus
    try:
        args, rest = parser.parse_known_args(argv)
    except SystemExit as exit_:            # argparse's own usage errors (an unknown command) and --help
        return int(exit_.code or 0)
    config_class = getattr(args, "config_class", None)
    if config_class is None:
        parser.print_help(sys.stderr)
        return commandline.EXIT_USAGE
    return commandline.run(config_class, args.handler, args.command_name, rest, debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
