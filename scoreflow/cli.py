"""What every `python -m scoreflow.*` command shares: flags declared once on the config
dataclass, one preset mechanism, and user errors that become one line and exit 2.

    @dataclass(frozen=True)
    class RunConfig:
        k: int = flag(8, "Workflows sampled per question.", bounds=(1, 1024))
        iterations: int = flag(3, "Optimisation iterations.", aliases=("--iters",), bounds=(1, 1000))
        def __post_init__(self):
            check_settings(self)   # --k nan, inf, 0, -1, 10**12: one line, exit 2
    EMBEDDED = Preset({"k": 4}, applies=lambda cfg: cfg.embedded)
    add_flags(parser, RunConfig, preset=EMBEDDED.settings)   # --k, help shows both defaults
    cfg = EMBEDDED.resolve(RunConfig, given(vars(parser.parse_args()), RunConfig))

    if __name__ == "__main__":
        run_cli("scoreflow.train", main)

Every numeric setting declares its range on its field (`bounds`); `check_settings` refuses a
value outside it, a non-finite float and a value of the wrong type, so a bad setting stops the
command before a model loads or a file is written. The parser's own errors (an unknown flag,
`--k abc`) are one line too.

A user error is anything the user can fix by changing a flag, a file or an install: a
`UserError`, or the `ValueError` / `FileNotFoundError` / `PermissionError` / `OSError`
(a port in use) that our boundaries raise with a message saying what to do. It is printed as
`PROG: message` on stderr with exit status 2 (argparse's own status for a bad flag), without a
traceback. Set SCOREFLOW_DEBUG=1 to see the traceback anyway.

The commands speak one vocabulary: `--task`, `--iterations`, `--executor-url`,
`--executor-model`, `--executor-concurrency`, `--max-new-tokens`, `--out`. A flag's earlier
name (`aliases`) still works for one release, hidden from --help, with a note naming the new one.
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import sys
import types
import typing
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, Callable, Mapping, TypeVar

from .heap import return_freed_memory

C = TypeVar("C")

USER_ERRORS = (ValueError, OSError)  # FileNotFoundError and PermissionError are OSErrors


class UserError(Exception):
    """A mistake in the user's flags, files or installation; the message says what to do."""


def run_cli(module: str, main: Callable[[], object]) -> None:
    """Call `main()`, with freed memory going back to the system (heap.py); turn a user error
    into `python -m MODULE: error: message` (argparse's own spelling) and exit status 2."""
    return_freed_memory()
    prog = f"python -m {module}"
    try:
        main()
    except (UserError, *USER_ERRORS) as e:
        if os.environ.get("SCOREFLOW_DEBUG"):
            raise
        message = " ".join(str(e).split()) or type(e).__name__
        print(f"{prog}: error: {message}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; rerun the same command to resume", file=sys.stderr)
        raise SystemExit(130) from None


@dataclass(frozen=True)
class Bounds:
    """The closed range [low, high] of a numeric setting; an open end with low_open / high_open."""

    low: float
    high: float
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, value: float) -> bool:
        above = self.low < value if self.low_open else self.low <= value
        below = value < self.high if self.high_open else value <= self.high
        return above and below

    def __str__(self) -> str:
        return f"{'(' if self.low_open else '['}{_show(self.low)}, {_show(self.high)}{')' if self.high_open else ']'}"


CONCURRENCY = Bounds(1, 4096)  # requests or questions in flight at once, in every command
SEED = Bounds(0, (1 << 63) - 1)  # every --seed: seeds are hashed as unsigned 64-bit numbers


def flag(default: Any = MISSING, help: str = "", *, choices: tuple | None = None, aliases: tuple[str, ...] = (),
         bounds: Bounds | tuple[float, float] | None = None, none_as: str | None = None, **options: Any) -> Any:
    """A dataclass field that is also a command-line flag `--name-with-dashes`: its help text,
    for a field that takes one of a few values its choices, the flag's earlier names (`aliases`,
    e.g. "--iters"), for a number its range (`bounds`: (low, high) closed, or a Bounds;
    check_settings), and the word that means None on the command line (`none_as`, e.g. "all"). A
    field with no help is a setting without a flag. The type is the field's annotation; `options`
    go to `field`."""
    bounds = Bounds(*bounds) if isinstance(bounds, tuple) else bounds
    return field(default=default, metadata={"help": help, "choices": choices, "aliases": aliases, "bounds": bounds,
                                            "none_as": none_as}, **options)


def _plain(hint: Any) -> Any:
    """`int | None` -> int; any other annotation as it is."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        (hint,) = [h for h in typing.get_args(hint) if h is not type(None)]
    return hint


def numeric_type(hint: Any) -> type | None:
    """int or float for a field annotated `int`, `float`, `int | None`, ...; None for the others."""
    return _plain(hint) if _plain(hint) in (int, float) else None


def check_settings(settings: Any, like: type | None = None) -> None:
    """Raise UserError naming the flag when a numeric field of the dataclass `settings` has the
    wrong type, is not finite, or lies outside its declared Bounds (a field without bounds of its
    own borrows those of the same-named field of `like`). None passes where the type allows it."""
    hints, borrowed = typing.get_type_hints(type(settings)), {f.name: f.metadata for f in fields(like)} if like else {}
    for f in fields(settings):
        kind, value = numeric_type(hints[f.name]), getattr(settings, f.name)
        bounds = f.metadata.get("bounds") or borrowed.get(f.name, {}).get("bounds")
        if kind is None or bounds is None or value is None:
            continue
        name, what = f"--{f.name.replace('_', '-')}", "a number" if kind is float else "a whole number"
        if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int):
            raise UserError(f"{name} {value!r}: pass {what} in {bounds}")
        if not (math.isfinite(value) and value in bounds):
            raise UserError(f"{name} {_show(value)} is out of range: pass {what} in {bounds}")


@dataclass(frozen=True)
class Preset:
    """Settings that replace a config's defaults where `applies(config)` holds, e.g. the embedded
    preset of a run on the small models this package ships. Precedence, lowest first:

        the dataclass defaults (the paper's) -> the preset, if it applies -> the user's flags
    """

    settings: Mapping[str, Any]
    applies: Callable[[Any], bool]
    name: str = "the embedded preset"

    def in_force(self, config: Any) -> str:
        """What a command names at start and stores with its settings: this preset where it
        applies to `config`, else "paper defaults"."""
        return self.name if self.applies(config) else "paper defaults"

    def resolve(self, cls: type[C], flags: Mapping[str, Any]) -> C:
        """cls built from the user's flags, over the preset when it applies to those flags."""
        plain = cls(**flags)
        return cls(**{**self.settings, **flags}) if self.applies(plain) else plain


class _EarlierName(argparse._StoreAction):
    """A flag's earlier name: stores like the new one, with a note that names the new one."""

    def __init__(self, *args: Any, new_name: str, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.new_name = new_name

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"{parser.prog}: note: {option_string} is now {self.new_name}; the old name goes in the next "
              "release", file=sys.stderr)
        super().__call__(parser, namespace, values, option_string)


class Parser(argparse.ArgumentParser):
    """argparse, with its errors (an unknown flag, `--k abc`) as one line and exit status 2."""

    def error(self, message: str) -> typing.NoReturn:
        print(f"{self.prog}: error: {message} (see --help)", file=sys.stderr)
        raise SystemExit(2)


def parse_bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _scalar_type(hint: Any, none_as: str | None = None) -> Callable[[str], Any]:
    """`int | None` -> int, `bool` -> parse_bool, `str` -> str; the word `none_as` -> None."""
    parse = parse_bool if _plain(hint) is bool else _plain(hint)
    if none_as is None:
        return parse
    return functools.wraps(parse)(lambda text: None if text == none_as else parse(text))


_UNSET = object()  # the parsed value of a flag not on the command line (None is a value: `--limit all`)


def _show(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def add_flags(parser: argparse.ArgumentParser | Any, cls: type, *, preset: Mapping[str, Any] | None = None,
              dest_prefix: str = "", like: type | None = None) -> None:
    """One flag per field of `cls` declared with `flag(...)`; a plain field of the same name as a
    flag of `like` borrows that flag's help and choices (one text for a setting two commands
    share). The help shows the default and, where it differs, the embedded preset's value."""
    hints, borrowed = typing.get_type_hints(cls), {f.name: f.metadata for f in fields(like)} if like else {}
    for f in fields(cls):
        meta = f.metadata if f.metadata.get("help") else borrowed.get(f.name, {})
        if not meta.get("help"):
            continue
        notes = [] if f.default in (None, MISSING) else [f"default: {_show(f.default)}"]
        if preset and f.name in preset and preset[f.name] != f.default:
            notes.append(f"embedded preset: {_show(preset[f.name])}")
        name, common = f"--{f.name.replace('_', '-')}", dict(dest=dest_prefix + f.name, default=_UNSET,
                                                             type=_scalar_type(hints[f.name], meta.get("none_as")),
                                                             choices=meta["choices"])
        parser.add_argument(name, metavar=None if meta["choices"] else f.name.upper(), **common,
                            help=meta["help"] + (f" ({'; '.join(notes)})" if notes else ""))
        for alias in meta.get("aliases", ()):
            parser.add_argument(alias, action=_EarlierName, new_name=name, help=argparse.SUPPRESS, **common)


def given(args: Mapping[str, Any], cls: type, dest_prefix: str = "") -> dict[str, Any]:
    """The fields of `cls` the user set on the command line."""
    return {f.name: args[key] for f in fields(cls) if args.get(key := dest_prefix + f.name, _UNSET) is not _UNSET}


def preset_of(instance: Any) -> dict[str, Any]:
    """A preset dataclass instance as {field: value}, for add_flags."""
    return {f.name: getattr(instance, f.name) for f in fields(instance)}
