"""Bad input to ``train.py`` in one short message that names the flag as ``--print_config`` spells it.

jsonargparse reports a bad flag or config key with its whole usage text (some 50 lines) and a constructor's ValueError
inside a dump of every Union member it tried (``model`` and ``data`` are ``Subclass | None``, so are ``loss`` and the
losses' own ``loss``), 70–110 lines in all. ``ShortErrorsCLI`` lets the parser raise instead of exiting and reports:

- an unknown flag or config key: the config file that holds it and the closest accepted key (difflib);
- a value of the wrong type: the flag and jsonargparse's reason;
- a ValueError from a litembed constructor: its message alone. A message that starts with an argument's name (the
  losses, which sit at different depths: ``--model.init_args.loss`` or ``--model.init_args.loss.init_args.loss``)
  gets the flag prefix of the object that raised it;
- a ``--ckpt_path`` file that is not a checkpoint, is cut short or holds another kind of model (``checkpoint_problem``,
  before anything runs: torch would say it after the data is loaded, in a traceback, or advise an unsafe load).

Anything else (a bug) keeps its traceback, as does every error with ``JSONARGPARSE_DEBUG=1``.
"""

import difflib
import importlib
import inspect
import os
import pickle
import re
import sys
import zipfile
from argparse import ArgumentError
from typing import NoReturn

import torch
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

PACKAGES = ("lightning_modules", "losses", "datamodules", "callbacks")  # ValueErrors raised here are bad input
OPTIMIZER_ARGS = ("lr", "weight_decay", "betas", "eps", "lr_schedule", "warmup_ratio")
REFUSED = ("optimizer", "lr_scheduler")
EXPORT_MOVED = ("the export's options are one group, --export.dirpath (the folder, null: no export), --export.title, "
                "--export.model_id, --export.language and --export.license")
NONFINITE_MOVED = ("the guard against non-finite steps is a callback of fit (callbacks.nonfinite), no longer an "
                   "argument of the model")
# options that moved: old key (init_args left out) → (the key that replaced it, why); a recipe or command line of an
# earlier version is told the new name instead of the closest one
MOVED = {"card": ("export", EXPORT_MOVED), "model.export_dir": ("export.dirpath", EXPORT_MOVED),
         "model.max_nonfinite_steps": ("max_nonfinite_steps", NONFINITE_MOVED)}
# model arguments an earlier litembed saved in its checkpoints' hyperparameters → where the option is now
RETIRED = {"export_dir": "--export.dirpath", "max_nonfinite_steps": "--max_nonfinite_steps"}
# jsonargparse's nested report: 'Parser key "model":', "- Problem with given class_path 'x.Y':", Union boilerplate
NESTING = re.compile(r"""\s*(?:- )?(?:Parser key "(?P<key>[\w.]+)":|Problem with given class_path '(?P<cls>[\w.]+)':"""
                     r"""|Does not validate against any of the Union subtypes|Subtypes: .*|Errors:)\s*(?P<rest>.*)""")


def fail(message: str, code: int = 2) -> NoReturn:
    sys.stderr.write(f"error: {message}\n")
    raise SystemExit(code)


# --data.init_args.sources.<name>.<option>: one option of one source of a mixture, which the CLI cannot merge
SOURCE_OPTION_FLAG = re.compile(r"--data\.(?:init_args\.)?sources\.([^.=\s]+)\.([^=\s]+)")


def refused(flag: str) -> str:
    return (f"--{flag}: litembed builds its own optimiser (AdamW with no weight decay on biases, norms and scalars, "
            f"fused, learning rate scheduled per optimizer step); set it with "
            + ", ".join(f"--model.init_args.{name}" for name in OPTIMIZER_ARGS))


class ShortErrorsCLI(LightningCLI):
    """A LightningCLI whose parse and constructor errors are one short message on stderr, exit code 2."""

    def init_parser(self, **kwargs) -> LightningArgumentParser:
        return super().init_parser(**{**kwargs, "exit_on_error": False})  # errors reach parse_arguments as exceptions

    def parse_arguments(self, parser: LightningArgumentParser, args) -> None:
        argv = sys.argv[1:] if args is None else list(args) if isinstance(args, (list, tuple)) else []
        for arg in argv:
            if (match := SOURCE_OPTION_FLAG.match(arg)) is not None:
                # jsonargparse would replace the source's options with this one, kept as a string
                name, key = match.groups()
                fail(f"{arg.split('=', 1)[0]}: a source's options are one value, given whole: "
                     f"--data.init_args.sources.{name} '{{\"{key}\": …, …}}' (every option of the source), or under "
                     f"sources: {name}: in a --config file")
        try:
            super().parse_arguments(parser, args)
        except ArgumentError as err:
            if os.environ.get("JSONARGPARSE_DEBUG"):
                raise
            subcommand = next((a for a in argv if a in self.subcommands()), None)
            fail(parse_error(str(err), argv, self._parser(subcommand)))

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except ValueError as err:
            config = self.config.get(self.subcommand) if self.subcommand else self.config
            message = constructor_error(err, config.as_dict())
            if message is None or os.environ.get("JSONARGPARSE_DEBUG"):
                raise
            fail(message)


    def _run_subcommand(self, subcommand: str) -> None:
        # bad input found once the run started (a data row, nothing to resume) or a run stopped by non-finite steps
        try:
            super()._run_subcommand(subcommand)
        except (ValueError, RuntimeError) as err:
            if os.environ.get("JSONARGPARSE_DEBUG") or not raised_in(err, PACKAGES):
                raise
            fail(str(err), 2 if isinstance(err, ValueError) else 1)


def parse_error(message: str, argv: list[str], parser) -> str:
    """jsonargparse's report of a bad flag or config key → one line naming the flag (or the file and key)."""
    path, cls, reason = [], None, message
    for line in message.splitlines():  # down the first failing Union member to the reason
        nesting = NESTING.fullmatch(line)
        if nesting is None:
            reason = line.strip().removeprefix("- ") if path else message
            break
        path += nesting["key"].split(".") if nesting["key"] else []
        if nesting["cls"]:
            path, cls = [*path, "init_args"], nesting["cls"]
        if nesting["rest"]:
            reason = nesting["rest"]
            break
    if unrecognized := re.fullmatch(r"unrecognized arguments: --([\w.]+).*", reason, re.I):
        return unknown_key(*first_unknown(parser, [], unrecognized[1]), None, argv, parser, typed=True)
    if (unknown := re.fullmatch(r"Option '([\w.]+)' is not accepted", reason)) and cls:
        return unknown_key(path, unknown[1].split(".")[0], cls, argv, parser)
    if unknown := re.fullmatch(r"(?:Option|Group '([\w.]+)' does not accept option|Subcommand '\w+' does not accept "
                               r"option) '([\w.]+)'(?: is not accepted)?", reason):
        group = unknown[1].split(".") if unknown[1] else path
        return unknown_key(*first_unknown(parser, group, unknown[2]), None, argv, parser)
    return f"--{'.'.join(path)}: {reason}" if path else reason


def first_unknown(parser, path: list[str], option: str) -> tuple[list[str], str]:
    """Split ``path.option`` into the groups the parser knows and the first key it does not."""
    parts = [*path, *option.split(".")]
    for i, part in enumerate(parts):
        if part not in child_keys(parser, parts[:i]):
            return parts[:i], part
    return parts[:-1], parts[-1]


def unknown_key(path: list[str], key: str, cls: str | None, argv: list[str], parser, typed: bool = False) -> str:
    """``key`` is not accepted under ``path``: name the flag, or the config file holding the key, and the closest
    accepted key."""
    if [*path, key][0] in REFUSED:
        return refused([*path, key][0])
    if (moved := ".".join(p for p in [*path, key] if p != "init_args")) in MOVED:
        return moved_key(path, key, moved, argv)
    accepted = init_parameters(import_object(cls)) if cls else child_keys(parser, path)
    close = difflib.get_close_matches(key, accepted, n=1)
    of = f" of {cls}" if cls else ""
    typed = typed or any(a.startswith("--") and a.split("=")[0].split(".")[-1] == key for a in argv)
    files = [f for f in config_files(argv) if re.search(rf"^\s*{re.escape(key)}\s*:", read(f), re.M)]
    if typed or not files:
        hint = f"did you mean --{'.'.join([*path, *close])}?" if close else f"options: {', '.join(accepted)}"
        return f"--{'.'.join([*path, key])} is not an option{of}; {hint}"
    where = f"under {'.'.join(path)}" if path else "at the top level"
    hint = f"did you mean '{close[0]}'?" if close else f"keys: {', '.join(accepted)}"
    return f"{' or '.join(files)}: unknown key '{key}' {where}{of}; {hint}"


def moved_key(path: list[str], key: str, moved: str, argv: list[str]) -> str:
    """An option of an earlier litembed that moved (``moved``: its ``MOVED`` key, init_args left out): the flag (or the
    config file holding it) and the one to use."""
    flag, (new, why) = ".".join([*path, key]), MOVED[moved]
    spellings = {flag, moved}  # --model.init_args.export_dir and --model.export_dir
    typed = [(a.split("=")[0], s) for a in argv for s in spellings
             if a.split("=")[0] == f"--{s}" or a.startswith(f"--{s}.")]
    files = [f for f in config_files(argv) if re.search(rf"^\s*{re.escape(key)}\s*:", read(f), re.M)]
    if typed or not files:
        old, spelling = typed[0] if typed else (f"--{flag}", flag)
        return f"{old} was renamed {old.replace(f'--{spelling}', f'--{new}', 1)}: {why}"
    where = f"under {'.'.join(path)}" if path else "at the top level"
    return f"{' or '.join(files)}: key '{key}' {where} was renamed '{new}'{' (at the top level)' if path else ''}: " \
           f"{why}"


def child_keys(parser, path: list[str]) -> list[str]:
    """The keys one level below ``path`` in the parser (``trainer`` → its arguments; [] → the top-level keys)."""
    prefix = "".join(f"{p}." for p in path)
    dests = [a.dest for a in parser._actions if a.dest.startswith(prefix) and a.dest not in ("help", "config")]
    return list(dict.fromkeys(d.removeprefix(prefix).split(".")[0] for d in dests))


def config_files(argv: list[str]) -> list[str]:
    files = [value for flag, value in zip(argv, argv[1:]) if flag in ("-c", "--config")]
    return files + [a.removeprefix("--config=") for a in argv if a.startswith("--config=")]


def read(path: str) -> str:
    with open(path) as f:
        return f.read()


def import_object(path: str):
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def init_parameters(cls: type) -> list[str]:
    """``cls``'s constructor arguments, following ``**kwargs`` up to the base classes that take them."""
    names = []
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        params = list(inspect.signature(klass.__init__).parameters.values())[1:]
        names += [p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        if all(p.kind != p.VAR_KEYWORD for p in params):
            break
    return list(dict.fromkeys(names))


def constructor_error(err: BaseException, config: dict) -> str | None:
    """The message of the first litembed ValueError behind ``err`` (jsonargparse chains its Union errors to it), or
    None when there is none: then ``err`` is not bad input but a bug, and keeps its traceback."""
    cause = err
    while cause is not None and not (isinstance(cause, ValueError) and raised_in(cause, PACKAGES)):
        cause = cause.__cause__ or (None if cause.__suppress_context__ else cause.__context__)
    if cause is None:
        return None
    message = str(cause)
    cls, path = next(raising_objects(cause, config), (None, None))
    if cls is not None and message.split(" ", 1)[0] in init_parameters(cls):
        return f"--{path}.init_args.{message}"
    return message


def raised_in(err: BaseException, packages: tuple[str, ...]) -> bool:
    tb = err.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and tb.tb_frame.f_globals.get("__name__", "").split(".")[0] in packages


def raising_objects(err: BaseException, config: dict):
    """(class, config path) of each configured object under construction when ``err`` was raised, innermost first."""
    frames, tb = [], err.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    for frame in reversed(frames):
        obj = frame.f_locals.get("self") if frame.f_code.co_name == "__init__" else None
        paths = list(class_paths(config, type(obj))) if obj is not None else []
        if len(paths) == 1:
            yield type(obj), paths[0]


def class_paths(node, cls: type, path: str = ""):
    """Dotted config paths whose ``class_path`` is ``cls``."""
    if isinstance(node, dict):
        if isinstance(node.get("class_path"), str) and import_object(node["class_path"]) is cls:
            yield path
        for key, value in node.items():
            yield from class_paths(value, cls, f"{path}.{key}" if path else key)


def checkpoint_problem(path: str, model_class: str | None, what_to_do: str) -> str | None:
    """What makes the file ``--ckpt_path path`` unusable for a recipe whose model is ``model_class``, or None.

    A checkpoint is the zip archive ``torch.save`` writes, holding plain values and tensors only (what
    ``torch.load(weights_only=True)`` reads, without running code from the file), with Lightning's ``state_dict`` and
    the module's class path among its hyperparameters. The archive's index is at its end, so a copy cut short (a full
    disk, a killed copy) fails to open. Opened memory-mapped: the tensors are not read.
    """
    size = os.path.getsize(path)
    with open(path, "rb") as file:
        zipped = file.read(4) == b"PK\x03\x04"
    if not zipped:
        return (f"--ckpt_path {path} is not a checkpoint ({size:,} bytes, not the zip archive torch.save writes); "
                f"{what_to_do}")
    try:
        with zipfile.ZipFile(path) as archive:
            torch_file = any(name.endswith("/data.pkl") for name in archive.namelist())
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True) if torch_file else None
    except pickle.UnpicklingError:  # torch's advice here would be weights_only=False: running code from the file
        return (f"--ckpt_path {path} is not a checkpoint train.py wrote: it holds Python objects that loading would "
                f"have to run, not only tensors and plain values; {what_to_do}")
    except (zipfile.BadZipFile, RuntimeError, EOFError, OSError) as err:
        return (f"--ckpt_path {path} is truncated or corrupt ({size:,} bytes: {str(err).splitlines()[0]}), e.g. a "
                f"copy cut short or a disk that filled up while it was written; use an intact copy, or {what_to_do}")
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        return (f"--ckpt_path {path} is not a Lightning checkpoint (a {'zip archive' if checkpoint is None else 'torch'}"
                f" file without a state_dict); {what_to_do}")
    trained = checkpoint.get("hyper_parameters", {}).get("_class_path")
    if model_class and trained and trained != model_class:
        return (f"--ckpt_path {path} is a checkpoint of {trained} while the recipe builds {model_class} "
                f"(--model); pass a checkpoint of a {model_class.rsplit('.', 1)[-1]} run, or the recipe that trained "
                f"this one")
    return None
