"""What both command lines (`augment`, `downstream`) share: a parser whose mistakes are user errors, and the one
place that turns what a command raises into its exit status and one line on stderr.

Exit 0 ok; 2 bad input (UserError: one line naming the flag, nothing written); 1 a full disk or quota, an
object store that refused a write, or the engine giving up on a unit (one line: finished work is kept, rerun
to continue); 130 Ctrl-C, 143 SIGTERM (one line; finished work is kept); anything else is a bug and surfaces
with its traceback.
"""

from __future__ import annotations

import argparse
import errno
import re
import signal
import sys
import threading
from collections.abc import Callable

from augment.errors import EngineError, UserError

OUT_OF_SPACE = {errno.ENOSPC, errno.EDQUOT}  # a full disk or quota: one line, exit 1, rerun continues


class Parser(argparse.ArgumentParser):
    """argparse whose errors become UserError (one line, exit 2) instead of a usage dump."""

    def error(self, message: str):
        raise UserError(message)


class Terminated(KeyboardInterrupt):
    """SIGTERM (Slurm preemption, `kill`): unwinds like Ctrl-C, so finished work is kept."""


def _on_sigterm(signum, frame):
    raise Terminated()


def run_command(
    prog: str, build_parser: Callable[[], argparse.ArgumentParser], run: Callable, argv: list[str] | None
) -> int:
    """Parse `argv` with `build_parser()`, call `run(args)`, and map what it raises to an exit status with one
    line on stderr prefixed `prog: ` (see the module's docstring)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    previous = (
        signal.signal(signal.SIGTERM, _on_sigterm) if threading.current_thread() is threading.main_thread() else None
    )
    parser = None

    def say(message: str) -> None:
        print(f"{prog}: error: {' '.join(message.split()) or 'bad input'}", file=sys.stderr)

    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        code = run(args)
    except UserError as e:
        say(_own_line(as_flags(e, parser, argv)))
        return 2
    except EngineError as e:
        say(f"{e}; finished work is kept: rerun the same command to continue")
        return 1
    except BrokenPipeError:  # `augment ... | head`: the reader left; say nothing more
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as e:
        from augment.run.storage import StorageError

        if isinstance(e, StorageError):
            say(f"{e}; finished work is kept and nothing half-written is visible: fix access to the output, then "
                "rerun the same command")  # fmt: skip
            return 1
        if e.errno not in OUT_OF_SPACE:
            raise
        where = f" ({e.filename})" if e.filename else ""
        say(f"{e.strerror or e}{where}; finished work is kept and nothing half-written is left: free space, then "
            "rerun the same command")  # fmt: skip
        return 1
    except KeyboardInterrupt as e:
        # finished work (tokens, checkpoints, shards, cells) is on disk; what was in flight is redone by a rerun
        what = "SIGTERM" if isinstance(e, Terminated) else "interrupt"
        print(f"{prog}: stopped by {what}; finished work is kept, rerun the same command to continue", file=sys.stderr)
        return 143 if isinstance(e, Terminated) else 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return code or 0


def _own_line(message: str) -> str:
    """A UserError raised in a DataLoader worker comes back with the worker's traceback in its message: its own
    line is the last one ("augment.errors.UserError: ...")."""
    if "Original Traceback" not in message:
        return message
    last = [line for line in message.splitlines() if line.strip()][-1]
    return last.split("UserError: ", 1)[-1]


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
    if not flag:
        return message
    # the name as a word of its own, never inside a path ("/data/out"), a flag ("--retries") or a dotted key
    return re.sub(rf"(?<![\w/.-]){re.escape(error.argument)}(?![\w/-])", flag, message, count=1)


def _subparser_actions(parser: argparse.ArgumentParser, argv: list[str] | None) -> list[argparse.Action]:
    args = sys.argv[1:] if argv is None else argv
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            command = next((a for a in args if a in action.choices), None)
            if command is not None:
                return list(action.choices[command]._actions)
    return []
