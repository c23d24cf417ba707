"""One config spine for every command: sections of typed options, TOML files, command-line
overrides and generated help.

A command's configuration is a :class:`Config`, a dataclass whose fields are *sections*
(:class:`Section` dataclasses). Pretraining, for example (``minillm.train.config.TrainConfig``)::

    [model]  preset and every GPTConfig field (n_layer, n_head, pos, norm, mlp, rope_theta, ...)
    [data]   corpus, tokenizer, vocab_size, pattern, val_fraction, ...
    [optim]  the schedule (lr, min_lr, warmup_steps) and AdamW (weight_decay, beta1, beta2, eps),
             grad_clip
    [loop]   max_steps, batch_size, seed, device, precision, out_dir, eval_interval, ...

Each option is declared once, with :func:`option`: its default, one line of meaning and the values
it allows. That one declaration gives the TOML key, the command-line flag, the conversion of a
command-line string, the checks, and the line in ``--help``. A command's values come from, in order:
the section's default, the command's own default (``Config.defaults``), the TOML file, and the
command line (``--key value`` when the key names one option of the command, ``--section.key
value`` always). Every bad value is a ``ValueError`` naming the key, the value and what was
expected (the commands turn it into one line and exit status 2). Besides an option's own bounds,
every number must be finite and every int must fit in 64 bits (``INT_LIMIT``): a larger one could
only reach NumPy as a size or a seed it cannot hold.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import os
from typing import Any, ClassVar

try:  # Python 3.11+
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]


INT_LIMIT = 2**63 - 1   # the largest int an option takes: NumPy's sizes and indices are int64


def option(default, help: str, *, choices: tuple | None = None, minimum: float | None = None,  # noqa: A002
           maximum: float | None = None, above: float | None = None, below: float | None = None,
           required: bool = False, positional: bool = False, metavar: str | None = None, text: bool = False):
    """A dataclass field that is a config option: ``help`` is its one line of meaning; ``choices``
    the allowed values; ``minimum``/``maximum`` inclusive bounds, ``above``/``below`` exclusive
    ones; ``required`` options have no usable default (a value must be given); a ``positional``
    list option also takes the bare words of the command line; a ``text`` option holds text to
    work on (a prompt, a stop string), not a path, so its command-line value must be valid UTF-8
    (a path may hold any bytes the file system does)."""
    metadata = dict(help=help, choices=choices, minimum=minimum, maximum=maximum, above=above, below=below,
                    required=required, positional=positional, metavar=metavar, text=text)
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


# ---------------------------------------------------------------------------------------------
# Types: what an annotation allows and how a command-line string becomes a value
# ---------------------------------------------------------------------------------------------
_BASES = ("bool", "int", "float", "str")


def _kind(annotation) -> tuple[str, bool, bool]:
    """(base type name, optional, is a list) from a field annotation such as ``"int | None"``."""
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    text = text.replace(" ", "")
    optional = "|None" in text or "None|" in text
    text = text.replace("|None", "").replace("None|", "")
    if text.startswith("list[") and text.endswith("]"):
        base = text[5:-1]
        if base not in _BASES:
            raise TypeError(f"config option type {annotation!r} is not supported")
        return base, optional, True
    if text not in _BASES:
        raise TypeError(f"config option type {annotation!r} is not supported")
    return text, optional, False


def _type_name(annotation) -> str:
    base, optional, is_list = _kind(annotation)
    name = f"list of {base}" if is_list else base
    return name + " or none" if optional else name


def _convert_scalar(base: str, value):
    """``value`` (a command-line string or a TOML value) as ``base``; raises ValueError."""
    if base == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ValueError
    if isinstance(value, bool):
        raise ValueError                     # True is not the number 1 here
    if base == "int":
        if isinstance(value, float):
            if not value.is_integer():
                raise ValueError
            return int(value)
        return int(value)
    if base == "float":
        return float(value)
    if not isinstance(value, str):
        raise ValueError
    return value


def convert_value(where: str, annotation, value):
    """``value`` converted to the option's type, or a ValueError naming ``where`` and the type."""
    base, optional, is_list = _kind(annotation)
    if optional and (value is None or (isinstance(value, str) and value.lower() == "none")):
        return None
    try:
        if is_list:
            items = value if isinstance(value, (list, tuple)) else [value]
            return [_convert_scalar(base, item) for item in items]
        return _convert_scalar(base, value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}={value!r} is not a valid {_type_name(annotation)}") from None


def _did_you_mean(key: str, names) -> str:
    """' (did you mean 'x'?)' for the closest known name, or '' when none is close."""
    close = difflib.get_close_matches(key, [n.rsplit(".", 1)[-1] for n in names], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


# ---------------------------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------------------------
class Section:
    """Base class of config sections (use with ``@dataclass``). ``name`` is the TOML table and the
    prefix of ``--name.key`` flags; ``title`` heads its part of ``--help``. Construction checks
    every option (type, choices, bounds); :meth:`check` adds the checks across options."""

    name: ClassVar[str] = ""
    title: ClassVar[str] = ""

    def __post_init__(self):
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            where = f"{self.name}.{f.name}" if self.name else f.name
            value = convert_value(where, f.type, value) if not _is_typed(f.type, value) else value
            _check_bounds(where, f, value)
            object.__setattr__(self, f.name, value)
        self.check()

    def check(self) -> None:
        """Checks that involve several options (override; raise ValueError naming them)."""

    @classmethod
    def options(cls) -> list[dataclasses.Field]:
        return list(dataclasses.fields(cls))

    @classmethod
    def option_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def option(cls, key: str) -> dataclasses.Field:
        return next(f for f in dataclasses.fields(cls) if f.name == key)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _is_typed(annotation, value) -> bool:
    """Whether ``value`` already has the option's type (no conversion needed)."""
    base, optional, is_list = _kind(annotation)
    if value is None:
        return optional
    if is_list:
        return isinstance(value, list) and all(_scalar_ok(base, v) for v in value)
    return _scalar_ok(base, value)


def _scalar_ok(base: str, value) -> bool:
    if base == "bool":
        return isinstance(value, bool)
    if base == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if base == "float":
        return isinstance(value, float)
    return isinstance(value, str)


def _check_bounds(where: str, f: dataclasses.Field, value) -> None:
    meta = f.metadata
    if value is None:
        return
    values = value if isinstance(value, list) else [value]
    for v in values:
        choices = meta.get("choices")
        if choices and v not in choices:
            raise ValueError(f"{where}={v!r} is not valid; expected one of {list(choices)}")
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            if isinstance(v, float) and math.isnan(v):
                raise ValueError(f"{where}={v!r} is not a number")
            if isinstance(v, float) and math.isinf(v):
                raise ValueError(f"{where}={v!r} is not finite; expected a finite number")
            if isinstance(v, int) and abs(v) > INT_LIMIT:
                raise ValueError(f"{where}={v} is too large; expected an int of at most {INT_LIMIT} (2**63 - 1)")
            bounds = [("minimum", lambda b: v >= b, ">="), ("above", lambda b: v > b, ">"),      # lower first
                      ("maximum", lambda b: v <= b, "<="), ("below", lambda b: v < b, "<")]
            present = [(key, ok, sign) for key, ok, sign in bounds if meta.get(key) is not None]
            if any(not ok(meta[key]) for key, ok, _ in present):
                allowed = " and ".join(f"{sign} {meta[key]:g}" for key, _, sign in present)
                raise ValueError(f"{where}={v!r} is out of range; expected a value {allowed}")


# ---------------------------------------------------------------------------------------------
# Configs: a command's sections together
# ---------------------------------------------------------------------------------------------
class Config:
    """Base class of a command's configuration (use with ``@dataclass``; every field is a
    :class:`Section`). ``defaults`` holds this command's own defaults over the sections'
    (``{"optim.lr": 2e-4}``); ``aliases`` maps older table names to sections (``train`` ->
    ``loop``); ``prefer`` says which section a key alone means when several have it
    (``{"vocab_size": "data"}``); ``description`` heads ``--help``."""

    defaults: ClassVar[dict] = {}
    aliases: ClassVar[dict] = {"train": "loop"}
    prefer: ClassVar[dict] = {}
    description: ClassVar[str] = ""

    def check(self) -> None:
        """Checks across sections (override; raise ValueError naming the keys)."""

    def __post_init__(self):
        self.check()

    # -- structure ---------------------------------------------------------------------------------
    @classmethod
    def sections(cls) -> dict[str, type]:
        """Section name -> section class, in declaration order."""
        out = {}
        for f in dataclasses.fields(cls):
            section_class = f.default_factory if f.default_factory is not dataclasses.MISSING else None
            if section_class is None or not (isinstance(section_class, type) and issubclass(section_class, Section)):
                raise TypeError(f"{cls.__name__}.{f.name}: a config's fields must be sections "
                                "(field(default_factory=SomeSection))")
            out[f.name] = section_class
        return out

    @classmethod
    def keys(cls) -> list[str]:
        """Every option as ``section.key``."""
        return [f"{name}.{key}" for name, section in cls.sections().items() for key in section.option_names()]

    @classmethod
    def resolve(cls, key: str, source: str = "config") -> tuple[str, str]:
        """``"lr"`` or ``"optim.lr"`` (dashes allowed) -> ``("optim", "lr")``; unknown or ambiguous
        keys raise ValueError listing the valid ones."""
        key = key.replace("-", "_")
        sections = cls.sections()
        if "." in key:
            name, inner = key.split(".", 1)
            name = cls.aliases.get(name, name)
            if name not in sections:
                raise ValueError(f"{source}: unknown section {name!r} in key {key!r}; the sections are "
                                 f"{list(sections)}")
            if inner not in sections[name].option_names():
                names = sections[name].option_names()
                raise ValueError(f"{source}: unknown key {inner!r} in [{name}]{_did_you_mean(inner, names)}; valid "
                                 f"keys are: {', '.join(names)}")
            return name, inner
        owners = [name for name, section in sections.items() if key in section.option_names()]
        if not owners:
            raise ValueError(f"{source}: unknown key {key!r}{_did_you_mean(key, cls._plain_keys())}; valid keys "
                             f"are: {', '.join(cls._plain_keys())}")
        if len(owners) > 1 and key in cls.prefer:
            return cls.prefer[key], key
        if len(owners) > 1:
            raise ValueError(f"{source}: key {key!r} is in several sections {owners}; write "
                             + " or ".join(f"{owner}.{key}" for owner in owners))
        return owners[0], key

    @classmethod
    def _plain_keys(cls) -> list:
        """Every key as a command line may write it: plain, or section.key where two sections share it."""
        sections = cls.sections()
        counts = {}
        for section in sections.values():
            for key in section.option_names():
                counts[key] = counts.get(key, 0) + 1
        return [key if counts[key] == 1 or cls.prefer.get(key) == name else f"{name}.{key}"
                for name, section in sections.items() for key in section.option_names()]

    # -- construction --------------------------------------------------------------------------------
    @classmethod
    def create(cls, values: dict | None = None, source: str = "config"):
        """Build from ``{"lr": "1e-3", "loop.max_steps": 5, ...}`` (plain keys where unambiguous,
        values converted from strings): the sections' defaults, then ``cls.defaults``, then ``values``."""
        per_section: dict[str, dict] = {name: {} for name in cls.sections()}
        for key, value in list(cls.defaults.items()) + list((values or {}).items()):
            name, inner = cls.resolve(key, source)
            section = cls.sections()[name]
            per_section[name][inner] = convert_value(f"{source}: {name}.{inner}", section.option(inner).type, value)
        built = {}
        for name, section in cls.sections().items():
            given = per_section[name]
            missing = [f.name for f in section.options() if f.metadata.get("required") and not given.get(f.name)]
            if missing:
                raise ValueError(f"{source}: {', '.join('--' + m.replace('_', '-') for m in missing)} is required: "
                                 + "; ".join(section.option(m).metadata["help"] for m in missing))
            built[name] = section(**given)
        return cls(**built)

    @classmethod
    def load(cls, path: str | os.PathLike | None = None, overrides: dict | None = None):
        """Read the TOML file ``path`` (tables named after the sections, or top-level keys that
        name one option), then apply ``overrides`` (as :meth:`create` takes them)."""
        values = read_toml(cls, path) if path else {}
        values.update(overrides or {})
        return cls.create(values, source=os.fspath(path) if path else "command line")

    def to_dict(self) -> dict:
        """``{section: {key: value}}`` (JSON/TOML friendly)."""
        return {name: getattr(self, name).to_dict() for name in self.sections()}

    # -- help -----------------------------------------------------------------------------------------
    @classmethod
    def help_text(cls, command: str) -> str:
        """Every option with its type, default and meaning, grouped by section."""
        defaults = {cls.resolve(k): v for k, v in cls.defaults.items()}
        lines = [f"usage: minillm {command} [--config FILE.toml] [--key VALUE | --section.key VALUE ...] [--debug]"]
        if cls.description:
            lines += ["", cls.description]
        lines += ["", "Options (a key alone where it is unambiguous; true/false for on/off, --no-KEY for false):"]
        for name, section in cls.sections().items():
            lines += ["", f"[{name}]" + (f"  {section.title}" if section.title else "")]
            for f in section.options():
                meta = f.metadata
                default = defaults.get((name, f.name), _default_of(f))
                alone = cls._resolves_alone(f.name, name)
                flag = (f"--{f.name}" if alone else f"--{name}.{f.name}") + \
                    ("" if meta.get("positional") else f" {meta.get('metavar') or _type_name(f.type).upper()}")
                facts = []
                if meta.get("required"):
                    facts.append("required")
                elif default not in ("", None, []):
                    facts.append(f"default {default!r}")
                if meta.get("choices"):
                    facts.append("one of " + ", ".join(map(str, meta["choices"])))
                text = meta.get("help", "")
                lines.append(f"  {flag:34s} {text}" + (f" ({'; '.join(facts)})" if facts else ""))
        return "\n".join(lines)


def _resolves_alone(cls, key: str, section: str) -> bool:
    try:
        return cls.resolve(key) == (section, key)
    except ValueError:
        return False


Config._resolves_alone = classmethod(_resolves_alone)


def _default_of(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def read_toml(config_class, path) -> dict:
    """The options of a TOML file as ``{"section.key": value}``, checking each table and key."""
    try:
        with open(path, "rb") as handle:
            document = tomllib.load(handle)
    except FileNotFoundError:
        raise FileNotFoundError(f"config file {os.fspath(path)!r} does not exist") from None
    except IsADirectoryError:
        raise ValueError(f"config file {os.fspath(path)!r} is a directory; expected a TOML file") from None
    except tomllib.TOMLDecodeError as error:
        raise ValueError(f"config file {os.fspath(path)!r} is not valid TOML: {error}") from None
    except UnicodeDecodeError:
        raise ValueError(f"config file {os.fspath(path)!r} is not UTF-8 text; expected a TOML file") from None
    except RecursionError:
        raise ValueError(f"config file {os.fspath(path)!r} nests arrays or tables too deeply to read; expected a "
                         "config's few tables of keys") from None
    source = os.fspath(path)
    sections = config_class.sections()
    values: dict[str, Any] = {}
    for key, value in document.items():
        if isinstance(value, dict):
            name = config_class.aliases.get(key, key)
            if name not in sections:
                raise ValueError(f"{source}: unknown table [{key}]; valid tables are "
                                 f"{['[' + s + ']' for s in sections]}")
            for inner, inner_value in value.items():
                if inner not in sections[name].option_names():
                    homes = [s for s, section in sections.items() if inner in section.option_names()]
                    hint = f" (it belongs in [{homes[0]}])" if homes else \
                        f"; valid keys in [{name}]: {sections[name].option_names()}"
                    raise ValueError(f"{source}: key {inner!r} is not valid in [{key}]{hint}")
                values[f"{name}.{inner}"] = inner_value
        else:
            name, inner = config_class.resolve(key, source)
            values[f"{name}.{inner}"] = value
    return values
