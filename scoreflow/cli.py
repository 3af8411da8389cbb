"""What every `python -m scoreflow.*` command shares: flags declared once on the config
dataclass, one preset mechanism, and user errors that become one line and exit 2.

    @dataclass(frozen=True)
    class RunConfig:
        k: int = flag(8, "Workflows sampled per question.")
        iterations: int = flag(3, "Optimisation iterations.", aliases=("--iters",))
    EMBEDDED = Preset({"k": 4}, applies=lambda cfg: cfg.embedded)
    add_flags(parser, RunConfig, preset=EMBEDDED.settings)   # --k, help shows both defaults
    cfg = EMBEDDED.resolve(RunConfig, given(vars(parser.parse_args()), RunConfig))

    if __name__ == "__main__":
        run_cli("scoreflow.train", main)

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
import os
import sys
import types
import typing
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, Callable, Mapping, TypeVar

C = TypeVar("C")

USER_ERRORS = (ValueError, OSError)  # FileNotFoundError and PermissionError are OSErrors


class UserError(Exception):
    """A mistake in the user's flags, files or installation; the message says what to do."""


def run_cli(prog: str, main: Callable[[], object]) -> None:
    """Call `main()`; turn a user error into `PROG: message` and exit status 2."""
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


def flag(default: Any = MISSING, help: str = "", *, choices: tuple | None = None, aliases: tuple[str, ...] = (),
         **options: Any) -> Any:
    """A dataclass field that is also a command-line flag `--name-with-dashes`: its help text,
    for a field that takes one of a few values its choices, and the flag's earlier names
    (`aliases`, e.g. "--iters"). The type is the field's annotation; `options` go to `field`."""
    return field(default=default, metadata={"help": help, "choices": choices, "aliases": aliases}, **options)


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


def parse_bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _scalar_type(hint: Any) -> Callable[[str], Any]:
    """`int | None` -> int, `bool` -> parse_bool, `str` -> str."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        (hint,) = [h for h in typing.get_args(hint) if h is not type(None)]
    return parse_bool if hint is bool else hint


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
        name, common = f"--{f.name.replace('_', '-')}", dict(dest=dest_prefix + f.name, default=None,
                                                             type=_scalar_type(hints[f.name]), choices=meta["choices"])
        parser.add_argument(name, metavar=None if meta["choices"] else f.name.upper(), **common,
                            help=meta["help"] + (f" ({'; '.join(notes)})" if notes else ""))
        for alias in meta.get("aliases", ()):
            parser.add_argument(alias, action=_EarlierName, new_name=name, help=argparse.SUPPRESS, **common)


def given(args: Mapping[str, Any], cls: type, dest_prefix: str = "") -> dict[str, Any]:
    """The fields of `cls` the user set on the command line (flags left unset are None)."""
    return {f.name: args[dest_prefix + f.name] for f in fields(cls) if args.get(dest_prefix + f.name) is not None}


def preset_of(instance: Any) -> dict[str, Any]:
    """A preset dataclass instance as {field: value}, for add_flags."""
    return {f.name: getattr(instance, f.name) for f in fields(instance)}
