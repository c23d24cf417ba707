"""What every ``minillm`` command shares: declaring a command, reading its options, the exit-code
convention, and the small helpers several commands need.

A command is a :class:`~minillm.config.Config` class plus a handler ``handler(cfg) -> int``::

    register(subparsers, "train", TrainConfig, run_train, help="pretrain a GPT")

and is run as ``minillm train [--config FILE.toml] [--key VALUE | --section.key VALUE ...]``:

- ``--key value`` and ``--key=value``; dashes and underscores are the same (``--max-steps`` is
  ``--max_steps``); ``--section.key value`` for a key that several sections have;
- on/off options: ``--key`` alone (on), ``--key false``, ``--no-key`` (off);
- repeatable options (lists): ``--stop A --stop B``; a command may take bare words too (``decode 1 2``);
- ``-h`` / ``--help``: every option with its type, default and meaning, from the config's fields;
- ``--debug``: a failure also prints its traceback.

:func:`run` is the one error boundary of every command (:mod:`minillm.errors` has the details):
exit status 0 success; 2 a known failure -- anything wrong with the input (a bad option, value or
file), a file that cannot be written, a missing device -- as one line ``minillm COMMAND: error:
...`` on stderr, never a traceback; 3 a training run that diverged; 4 a ``minillm doctor`` check
failed; 5 ``minillm health`` raised a flag; 130 after Ctrl-C; 141 (quietly)
when the reader of the output went away (``| head``); 1 an unexpected exception (a bug), reported
in one line naming the log file that holds its traceback;
a training run stopped by a signal exits 128 + the signal (130 SIGINT, 143 SIGTERM) after saving
its checkpoint.
"""
from __future__ import annotations

import argparse
import re
import sys

from minillm import errors
from minillm.config import Config, _kind
from minillm.distributed.world import abort_on_failure
from minillm.errors import EXIT_DIVERGED, EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE  # noqa: F401  (re-exported)

DEBUG_FLAG = "--debug"


class UsageError(errors.MinillmError, ValueError):
    """A command line that cannot be read (unknown option, a missing value)."""


class HelpRequested(Exception):
    """``-h``/``--help`` was given: print the help and exit 0."""


def parse_command_line(config_class: type[Config], tokens: list[str]) -> tuple[str | None, dict]:
    """``(config file or None, {key: value strings or lists})`` from a command's arguments."""
    config_path, values, index = None, {}, 0
    positional = _positional_option(config_class)
    while index < len(tokens):
        token = tokens[index]
        if token in ("-h", "--help"):
            raise HelpRequested
        if token == DEBUG_FLAG:                 # the global flag (run() reads it); not an option
            index += 1
            continue
        if not token.startswith("--"):
            if positional is None:
                raise UsageError(f"unexpected argument {token!r}; options look like --key value")
            values.setdefault(positional, []).append(token)
            index += 1
            continue
        body = token[2:]
        key, value = (body.split("=", 1) + [None])[:2]
        if key == "config":
            if value is None:
                if index + 1 >= len(tokens):
                    raise UsageError("--config has no value; expected a TOML file")
                value, index = tokens[index + 1], index + 1
            config_path = value
            index += 1
            continue
        negated = False
        try:
            name, inner = config_class.resolve(key, "command line")
        except ValueError:
            if value is None and (key.startswith("no-") or key.startswith("no_")):
                name, inner = config_class.resolve(key[3:], "command line")
                negated = True
            else:
                raise
        field = config_class.sections()[name].option(inner)
        base, _, is_list = _kind(field.type)
        dotted = f"{name}.{inner}"
        if negated:
            if base != "bool" or is_list:
                raise UsageError(f"--{key}: --no-{inner.replace('_', '-')} only turns off an on/off option")
            values[dotted] = False
            index += 1
            continue
        if value is None:
            following = tokens[index + 1] if index + 1 < len(tokens) else None
            if base == "bool" and not is_list and (following is None or following.startswith("--")):
                value = "true"                                   # --flag alone: on
                index += 1
            elif following is None:
                raise UsageError(f"option --{key} has no value")
            else:
                value, index = following, index + 2
        else:
            index += 1
        if field.metadata.get("text"):
            check_utf8_argument(f"--{key}", value)
        if is_list:
            values.setdefault(dotted, []).append(value)
        else:
            values[dotted] = value
    return config_path, values


def check_utf8_argument(flag: str, value: str) -> None:
    """Raise UsageError when a command-line value is not valid UTF-8.

    Python decodes the command line as UTF-8 and keeps each byte it cannot decode as a lone
    surrogate U+DC80..U+DCFF (the ``surrogateescape`` handler): a Latin-1 'é' typed in another
    terminal encoding arrives as U+DCE9. The message gives that byte and its offset in the value."""
    for index, char in enumerate(value):
        if "\udc80" <= char <= "\udcff":
            offset = len(value[:index].encode("utf-8", "surrogateescape"))
            raise UsageError(f"{flag}: the value is not valid UTF-8: byte 0x{ord(char) - 0xDC00:02X} at byte "
                             f"offset {offset} is not part of a valid UTF-8 character; expected UTF-8 text (is "
                             "the terminal set to another encoding, such as Latin-1?)")


def _positional_option(config_class) -> str | None:
    for name, section in config_class.sections().items():
        for f in section.options():
            if f.metadata.get("positional"):
                return f"{name}.{f.name}"
    return None


def load_config(config_class: type[Config], tokens: list[str]) -> Config:
    """The command's config from its arguments (the TOML file first, then the overrides)."""
    path, values = parse_command_line(config_class, tokens)
    return config_class.load(path, values)


def register(subparsers, name: str, config_class: type[Config], handler, help: str,  # noqa: A002
             parent: str = "") -> argparse.ArgumentParser:
    """Add the command ``name`` (under ``parent`` for ``tokenizer train``): ``handler(cfg)``
    runs it with the config read from the arguments that follow."""
    parser = subparsers.add_parser(name, help=help, add_help=False, description=config_class.description or help)
    parser.set_defaults(config_class=config_class, handler=handler, command_name=f"{parent} {name}".strip())
    return parser


def run(config_class: type[Config], handler, command: str, tokens: list[str], out=None, err=None,
        debug: bool = False) -> int:
    """Read the config and run the handler inside the one error boundary (module docstring):
    every exception -- reading the options or running the command -- becomes its exit status
    and one line on ``err`` (:func:`minillm.errors.handle`). ``debug`` (or ``--debug`` among
    ``tokens``) also prints the traceback."""
    out, err = out or sys.stdout, err or sys.stderr
    debug = debug or DEBUG_FLAG in tokens
    cfg = None
    try:
        try:
            cfg = load_config(config_class, tokens)
        except HelpRequested:
            print(config_class.help_text(command), file=out)     # inside the boundary: `--help | head`
            return EXIT_OK
        return handler(cfg)
    except (Exception, KeyboardInterrupt) as error:     # the boundary: every kind is reported, none escapes
        status = errors.handle(error, command, err, debug=debug, log_dir=_out_dir(cfg))
        # Under mpiexec the other ranks would wait for this one forever: name it, abort the job.
        abort_on_failure(error, command, status)
        return status


def _out_dir(cfg) -> str | None:
    """The command's output folder (``loop.out_dir``), where an internal error's log goes."""
    if cfg is None:
        return None
    for name in cfg.sections():
        folder = getattr(getattr(cfg, name, None), "out_dir", None)
        if isinstance(folder, str) and folder:
            return folder
    return None


# ---------------------------------------------------------------------------------------------
# Helpers several commands share
# ---------------------------------------------------------------------------------------------
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "f": "\f", "\\": "\\"}


def unescape(text: str) -> str:
    """The escapes ``\\n \\t \\r \\f \\\\`` typed on a command line -> the characters (any other
    backslash is kept as it is)."""
    return re.sub(r"\\([ntrf\\])", lambda match: _ESCAPES[match.group(1)], text)


def int_at_least(minimum: int):
    """An ``argparse`` type for the example scripts: an integer ``>= minimum``; anything else is
    argparse's usage error (exit status 2, naming the option and the value) before any work."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer; expected an integer >= {minimum}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is below {minimum}; expected an integer >= {minimum}")
        return value
    parse.__name__ = f"integer >= {minimum}"
    return parse
