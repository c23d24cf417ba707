"""What every ``minillm`` command shares: declaring a command, reading its options, the exit-code
convention, and the small helpers several commands need.

A command is a :class:`~minillm.config.Config` class plus a handler ``handler(cfg) -> int``::

    register(subparsers, "train", TrainConfig, run_train, help="pretrain a GPT")

and is run as ``minillm train [--config FILE.toml] [--key VALUE | --section.key VALUE ...]``:

- ``--key value`` and ``--key=value``; dashes and underscores are the same (``--max-steps`` is
  ``--max_steps``); ``--section.key value`` for a key that several sections have;
- on/off options: ``--key`` alone (on), ``--key false``, ``--no-key`` (off);
- repeatable options (lists): ``--stop A --stop B``; a command may take bare words too (``decode 1 2``);
- ``-h`` / ``--help``: every option with its type, default and meaning, from the config's fields.

Exit status: 0 success; 2 for anything wrong with the input (a bad option, value or file: one line
``minillm COMMAND: error: ...`` on stderr, never a traceback); 130 after Ctrl-C; a training run
stopped by a signal exits 128 + the signal (130 SIGINT, 143 SIGTERM) after saving its checkpoint.
"""
from __future__ import annotations

import argparse
import re
import sys

from minillm.config import Config, _kind

EXIT_OK, EXIT_USAGE, EXIT_INTERRUPTED = 0, 2, 130


class UsageError(ValueError):
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
        base, _, is_list = _kind(config_class.sections()[name].option(inner).type)
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
        if is_list:
            values.setdefault(dotted, []).append(value)
        else:
            values[dotted] = value
    return config_path, values


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


def run(config_class: type[Config], handler, command: str, tokens: list[str], out=None, err=None) -> int:
    """Read the config and run the handler under the exit-code convention (module docstring)."""
    out, err = out or sys.stdout, err or sys.stderr
    try:
        cfg = load_config(config_class, tokens)
    except HelpRequested:
        print(config_class.help_text(command), file=out)
        return EXIT_OK
    except (ValueError, OSError) as error:
        print(f"minillm {command}: error: {error}", file=err)
        return EXIT_USAGE
    try:
        return handler(cfg)
    except (ValueError, OSError) as error:        # bad input: a value, a file (missing, unreadable, ...)
        print(f"minillm {command}: error: {error}", file=err)
        return EXIT_USAGE
    except KeyboardInterrupt as interrupt:       # Ctrl-C; training stopped by SIGINT/SIGTERM carries its status
        print(f"\nminillm {command}: {interrupt or 'interrupted'}", file=err)
        return getattr(interrupt, "exit_status", EXIT_INTERRUPTED)


# ---------------------------------------------------------------------------------------------
# Helpers several commands share
# ---------------------------------------------------------------------------------------------
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "f": "\f", "\\": "\\"}


def unescape(text: str) -> str:
    """The escapes ``\\n \\t \\r \\f \\\\`` typed on a command line -> the characters (any other
    backslash is kept as it is)."""
    return re.sub(r"\\([ntrf\\])", lambda match: _ESCAPES[match.group(1)], text)
