"""`augment` command line: a thin layer over the library. Exit 0 ok, 2 bad input (one line on stderr), 1 a full
disk (one line) or a bug (a traceback), 130/143 interrupted (one line)."""

from __future__ import annotations

import argparse
import errno
import importlib
import signal
import sys

from augment.errors import EngineError, UserError

# subcommand → module with `add_arguments(parser)` and `run(args) -> int`
COMMANDS = {
    "learn": "augment.commands.learn",
    "generate": "augment.commands.generate",
    "build": "augment.commands.build",
    "score": "augment.commands.score",
    "verify": "augment.commands.verify",
}


ALIASES = {"score": ["eval"]}  # `augment eval`, the command's name before 0.2, still works
OUT_OF_SPACE = {errno.ENOSPC, errno.EDQUOT}  # a full disk or quota: one line, exit 1, rerun continues


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse's usage dump → our one-line user error
        raise UserError(message)


def build_parser() -> argparse.ArgumentParser:
    from augment.version import __version__

    parser = _Parser(
        prog="augment", description="Turn a label set into a synthetic training set with discriminative class tokens."
    )
    parser.add_argument("--version", action="version", version=f"augment {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(
            name, aliases=ALIASES.get(name, []), help=module.__doc__.splitlines()[0], description=module.__doc__
        )
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM (Slurm preemption, `kill`): unwinds like Ctrl-C, so finished work is kept."""


def _on_sigterm(signum, frame):
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if _main_thread() else None
    parser = None
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        code = args._run(args)
    except UserError as e:
        print(f"augment: error: {as_flags(e, parser, argv)}", file=sys.stderr)
        return 2
    except EngineError as e:
        print(f"augment: error: {e}; finished work is kept: rerun the same command to continue", file=sys.stderr)
        return 1
    except OSError as e:
        from augment.run.storage import StorageError

        if isinstance(e, StorageError):
            print(f"augment: error: {e}; finished work is kept and nothing half-written is visible: fix "
                  "access to OUT, then rerun the same command", file=sys.stderr)  # fmt: skip
            return 1
        if e.errno not in OUT_OF_SPACE:
            raise
        where = f" ({e.filename})" if e.filename else ""
        print(
            f"augment: error: {e.strerror or e}{where}; finished work is kept and nothing half-written is "
            "left: free space, then rerun the same command",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt as e:
        # learned tokens, learner checkpoints and finished shards are on disk (the shard being written by the
        # background writer is finished before the exit); what was in flight is redone by a rerun
        what = "SIGTERM" if isinstance(e, Terminated) else "interrupt"
        print(f"augment: stopped by {what}; finished work is kept, rerun the same command to continue", file=sys.stderr)
        return 143 if isinstance(e, Terminated) else 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return code or 0


def as_flags(error: UserError, parser: argparse.ArgumentParser | None, argv: list[str] | None) -> str:
    """The library names arguments (`batch_size`); on the command line they are flags (`--batch-size`)."""
    message = str(error)
    if error.argument is None or parser is None:
        return message
    flags = {}
    for action in _subparser_actions(parser, argv):
        if action.option_strings:
            flags.setdefault(action.dest, action.option_strings[0])
    for action in _subparser_actions(parser, argv):  # "learn.max_steps" is also known as "max_steps"
        if action.option_strings:
            flags.setdefault(action.dest.rsplit(".", 1)[-1], action.option_strings[0])
    flag = flags.get(error.argument)
    return message.replace(error.argument, flag, 1) if flag else message


def _subparser_actions(parser: argparse.ArgumentParser, argv: list[str] | None) -> list[argparse.Action]:
    args = sys.argv[1:] if argv is None else argv
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            command = next((a for a in args if a in action.choices), None)
            if command is not None:
                return list(action.choices[command]._actions)
    return []


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


if __name__ == "__main__":
    sys.exit(main())
