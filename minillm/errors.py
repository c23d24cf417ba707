"""The failures minillm reports to a person, and the one error boundary of the ``minillm`` command.

Exit status of every command (``minillm``, ``python -m minillm.data.cli``, ...):

    0    success
    1    internal error: an exception minillm did not expect (a bug, or an input it does not check
         yet). One line names the exception; the full traceback is written to a log file whose
         path that line gives (``OUT_DIR/minillm-error-TIME-PID.log`` when the command has an
         ``out_dir`` that exists, else the same name in the system's temporary folder), or printed
         with ``--debug``
    2    a known failure: bad input (an option, a value, a file), a file that cannot be read or
         written (permission, no space, a folder where a file is expected, ...), a device that is
         not there, memory that is not there. One line ``minillm COMMAND: error: ...`` naming the
         argument or file, what is wrong and what to do; never a traceback
    3    the training run diverged (:class:`~minillm.train.NonFiniteLossError`: a NaN/Inf loss
         with ``on_nonfinite=stop``); the line names the step and the last good checkpoint
    4    a preflight check failed (``minillm doctor``, ``minillm train --doctor``:
         :class:`~minillm.doctor.DoctorFailed`); the table printed above says which check, what
         such a failure usually means and what to look at
    5    ``minillm health`` raised a flag (an exploding or vanishing layer, a dead head, ...): the
         flags are printed, and the dashboard is written all the same
    130  interrupted (Ctrl-C)
    141  the reader of the output went away (``minillm ... | head``): nothing is printed; 141 is
         what a shell reports for a program the closed pipe stopped (128 + SIGPIPE)

``--debug`` (anywhere on the command line, e.g. ``minillm --debug train ...``) prints the
traceback of any failure to stderr as well.

The hierarchy: :class:`MinillmError` is the base of the failures minillm raises for a person to
fix; each carries its ``exit_code``. Library code raises its subclasses where a built-in type
would be ambiguous (a ``RuntimeError`` for a missing GPU is not a bug): they also derive from the
built-in type they replace, so ``except RuntimeError`` keeps working. ``ValueError`` (a bad value,
the library's usual complaint), ``OSError`` (a file) and ``MemoryError`` are known failures too;
:func:`describe` turns each into its line, :func:`handle` is the boundary itself.
"""
from __future__ import annotations

import errno
import os
import sys
import tempfile
import time
import traceback

EXIT_OK, EXIT_INTERNAL, EXIT_USAGE, EXIT_DIVERGED, EXIT_DOCTOR, EXIT_UNHEALTHY = 0, 1, 2, 3, 4, 5
EXIT_INTERRUPTED, EXIT_BROKEN_PIPE = 130, 141


class MinillmError(Exception):
    """A failure a person can fix (bad input, a missing resource): reported as one line, exit 2."""

    exit_code = EXIT_USAGE


class DeviceUnavailableError(MinillmError, RuntimeError):
    """The device asked for (``--device cuda``) cannot be used on this machine."""


class NumericalError(MinillmError, FloatingPointError):
    """Numbers went non-finite where that means the input is broken (a checkpoint whose model
    produces NaN logits, say), not that minillm has a bug."""


class TrainingDiverged(MinillmError, RuntimeError):
    """A training run stopped because its loss or gradient norm became NaN/Inf (exit 3)."""

    exit_code = EXIT_DIVERGED


# ---------------------------------------------------------------------------------------------
# One line for a known failure
# ---------------------------------------------------------------------------------------------
# What to do about each errno a file operation meets (the OS's own text says what happened).
_OS_HINTS = {
    errno.EACCES: "check the permissions of the path and its directories, or choose another path",
    errno.EPERM: "check the permissions of the path and its directories, or choose another path",
    errno.EROFS: "choose a path on a writable disk",
    errno.ENOSPC: "free some space or write to another disk",
    errno.EDQUOT: "free some space or write to another disk",
    errno.EFBIG: "write to another disk",
    errno.ENOENT: "check the path",
    errno.ENAMETOOLONG: "choose a shorter path",
    errno.EMFILE: "raise the limit (ulimit -n)",
    errno.ENFILE: "retry later",
    errno.EIO: "check the disk",
}


def describe_os_error(error: OSError) -> str:
    """One line for an ``OSError``: the file, what happened and what to do.

    An error raised with one message (``FileNotFoundError("checkpoint 'x' does not exist")``)
    keeps it. For the OS's own errors the path is inspected for a precise line: a directory
    where a file is expected, a file where a directory is needed, a path under a file
    (``out/last.safetensors/sub``)."""
    if error.errno is None or error.strerror is None:
        return str(error)
    # os.replace(temporary, target) names both; the target is the file the user chose.
    path = error.filename2 if error.filename2 is not None else error.filename
    if path is None:                            # write() on a full disk names no file
        reason = error.strerror
    else:
        path = os.fsdecode(path) if isinstance(path, bytes) else str(path)
        if error.errno == errno.EISDIR:
            return f"{path!r} is a directory; expected a file"
        if error.errno == errno.EEXIST and os.path.exists(path) and not os.path.isdir(path):
            return f"{path!r} exists as a file where a directory is needed; choose another path or remove the file"
        if error.errno == errno.ENOTDIR:
            blocker = _file_in_the_way(path)
            if blocker:
                return f"{path!r} cannot be used: {blocker!r} is a file, not a directory; choose another path"
            return f"{path!r} is not a directory; expected a directory"
        if error.strerror == os.strerror(error.errno):
            reason = f"{path!r}: {error.strerror}"
        else:                                   # a message of minillm's own: "corpus path not found"
            reason = f"{error.strerror}: {path!r}"
    hint = _OS_HINTS.get(error.errno)
    return f"{reason}; {hint}" if hint else reason


def _file_in_the_way(path: str) -> str | None:
    """The first part of ``path`` that exists and is not a folder (None when there is none)."""
    parts, current = os.path.abspath(path).split(os.sep), os.sep
    for part in parts[1:]:
        current = os.path.join(current, part)
        if not os.path.exists(current):
            return None
        if not os.path.isdir(current):
            return current
    return None


def _is_numpy_size_error(error: BaseException) -> bool:
    # NumPy refuses an array whose size does not fit its index type with these ValueErrors; they
    # mean a size option is far too large, not that a value is malformed.
    text = str(error)
    return isinstance(error, ValueError) and (
        text.startswith("Maximum allowed dimension exceeded") or text.startswith("array is too big"))


def describe(error: BaseException) -> tuple[str, int] | None:
    """``(the line, exit status)`` for a known failure; None for an unexpected exception."""
    if isinstance(error, MinillmError):
        return str(error), error.exit_code
    if isinstance(error, MemoryError) or _is_numpy_size_error(error):
        detail = str(error).rstrip(".") or "the allocation failed"
        return (f"out of memory: {detail}; expected sizes that fit in memory: lower batch_size, block_size, "
                "the model's n_embd/n_layer/vocab_size, or max_new_tokens/num_samples"), EXIT_USAGE
    if isinstance(error, ValueError):           # UnicodeError, UsageError, ...: their text is the message
        return str(error), EXIT_USAGE
    if isinstance(error, OSError):
        return describe_os_error(error), EXIT_USAGE
    return None


# ---------------------------------------------------------------------------------------------
# The boundary
# ---------------------------------------------------------------------------------------------
def handle(error: BaseException, command: str, err=None, debug: bool = False, log_dir: str | None = None) -> int:
    """Report ``error`` (raised by a command) on ``err`` and return the exit status.

    Known failures: one line ``minillm COMMAND: error: ...``. Ctrl-C: ``interrupted``, 130; a
    training run stopped by a signal after saving its checkpoint: its message, 128 + the signal.
    Anything else: one line naming the exception and the log file that holds its traceback
    (``log_dir`` when it is a folder, else the temporary folder), exit 1. ``debug`` also prints
    the traceback."""
    err = err or sys.stderr
    prefix = f"minillm {command}" if command else "minillm"
    if isinstance(error, BrokenPipeError) and not debug:
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    if debug:
        traceback.print_exception(type(error), error, error.__traceback__, file=err)
    if isinstance(error, KeyboardInterrupt):    # Ctrl-C; a training run stopped by SIGINT/SIGTERM
        print(f"\n{prefix}: {str(error) or 'interrupted'}", file=err)       # carries its message and status
        return getattr(error, "exit_status", EXIT_INTERRUPTED)
    known = describe(error)
    if known is not None:
        message, code = known
        print(f"{prefix}: error: {message}", file=err)
        return code
    first_line = (str(error).splitlines() or [""])[0][:300]
    summary = f"{type(error).__name__}: {first_line}" if first_line else type(error).__name__
    if debug:
        print(f"{prefix}: internal error: {summary} (traceback above)", file=err)
        return EXIT_INTERNAL
    log_path = write_traceback_log(error, command, log_dir)
    where = (f"the traceback is in {log_path} (or rerun with --debug to print it)" if log_path
             else "the traceback could not be written to a file: rerun with --debug to print it")
    print(f"{prefix}: internal error: {summary}; this is a bug in minillm or an input it does not check. "
          f"{where}", file=err)
    return EXIT_INTERNAL


def _silence_stdout() -> None:
    """Point stdout at /dev/null: the reader is gone, and Python's flush at exit would otherwise
    fail again on the same pipe (and print an error of its own)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # stdout is no file (captured, replaced): nothing to flush
        pass


def write_traceback_log(error: BaseException, command: str, log_dir: str | None = None) -> str | None:
    """Write ``error``'s traceback to ``minillm-error-TIME-PID.log`` in ``log_dir`` (when it is a
    folder that can be written) or the temporary folder; the path, or None when neither works."""
    name = f"minillm-error-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    text = (f"minillm {command}: {type(error).__name__}\ncommand line: {' '.join(sys.argv)}\n\n"
            + "".join(traceback.format_exception(type(error), error, error.__traceback__)))
    folders = [log_dir] if log_dir and os.path.isdir(log_dir) else []
    for folder in folders + [tempfile.gettempdir()]:
        path = os.path.join(folder, name)
        try:
            # backslashreplace: a command line may hold bytes that are not UTF-8 (surrogateescape)
            with open(path, "w", encoding="utf-8", errors="backslashreplace") as handle:
                handle.write(text)
        except OSError:
            continue                            # a read-only or full out_dir: try the next folder
        return path
    return None
