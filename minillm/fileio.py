"""Atomic file writes, and the one reader of UTF-8 text files.

Writes: a file is either the old version or the complete new one, never half.

Every writer in minillm (checkpoints, tokenizers, shards, configs, logs that must not be torn)
goes through these helpers. The new content is written to a temporary file in the *same*
directory (so the final ``os.replace`` is a rename within one file system, which POSIX makes
atomic), flushed and fsynced, then renamed over the target. A crash or a kill at any moment
leaves the previous file intact; at worst a stray temporary file ``NAME.XXXXXXXX.tmp`` remains
(:func:`remove_stale_temp_files` clears them; the training commands call it when they start).

Permissions are those a plain ``open(path, "w")`` would give: a new file gets ``0o666 & ~umask``,
a replaced file keeps its mode.

Outputs are never replaced behind the user's back: every command that writes a run, a dataset or
a tokenizer first asks :func:`refuse_to_overwrite` (the one rule: existing outputs are an error
unless ``--overwrite``).
"""
from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
import tempfile
from typing import IO, Iterator, Sequence

TEMP_SUFFIX = ".tmp"
# mkstemp's names: the target's name, a dot, 8 random characters from [a-z0-9_], then the suffix
_TEMP_NAME = re.compile(r"^(?P<target>.+)\.[a-z0-9_]{8}" + re.escape(TEMP_SUFFIX) + "$")


class ExistingOutputError(ValueError):
    """An output (a run folder, a dataset, a file) is already there and ``overwrite`` was not given."""


def refuse_to_overwrite(where: str, what: str, existing: Sequence[str], overwrite: bool, advice: str) -> None:
    """The one rule every writer of outputs follows: refuse to replace what is already there.

    ``existing`` lists the outputs found (paths or names); when it is not empty and ``overwrite``
    is False, raise :class:`ExistingOutputError`: ``"{where} already holds {what} (a, b, ...); {advice}"``
    (``"{where} already exists; {advice}"`` when ``what`` is empty: one output file).
    """
    if not existing or overwrite:
        return
    if not what:
        raise ExistingOutputError(f"{where} already exists; {advice}")
    names = [os.path.basename(os.fspath(p)) or os.fspath(p) for p in existing]
    shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
    raise ExistingOutputError(f"{where} already holds {what} ({shown}); {advice}")


def _umask() -> int:
    """The process's umask, read without changing it where the system allows (Linux)."""
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)        # elsewhere: the classic swap (set, then put the old value back)
    os.umask(mask)
    return mask


def _mode_for(path: str) -> int:
    """What ``open(path, "w")`` would leave: the existing file's mode, else ``0o666 & ~umask``."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return 0o666 & ~_umask()


def remove_stale_temp_files(directory: str | os.PathLike,
                            targets: Sequence[str] | None = None) -> list[tuple[str, int]]:
    """Delete the temporary files that killed atomic writes left in ``directory`` (not below it).

    Only names of the writer's own form (``NAME.XXXXXXXX.tmp``) are removed, and with ``targets``
    only those of these file names (``["tok.json"]``). Returns ``(path, size in bytes)`` of each
    file removed. Call it when nothing else writes to ``directory`` (a command starting on its
    own output).
    """
    directory = os.fspath(directory)
    removed = []
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        return removed
    for name in names:
        match = _TEMP_NAME.match(name)
        path = os.path.join(directory, name)
        if match is None or (targets is not None and match.group("target") not in targets) or not os.path.isfile(path):
            continue
        try:
            size = os.path.getsize(path)
            os.unlink(path)
        except FileNotFoundError:
            continue
        removed.append((path, size))
    return removed


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb", encoding: str | None = None) -> Iterator[IO]:
    """Open a temporary file next to ``path``; on clean exit, fsync and rename it onto ``path``.

    ``mode`` must be a write mode ("w", "wb", "w+b", ...). If the body raises, the temporary file
    is removed and ``path`` is left exactly as it was; an ``OSError`` that names no file (a write
    on a full disk) is raised again naming ``path``.
    """
    if "w" not in mode:
        raise ValueError(f"atomic_open: mode={mode!r} is not a write mode; expected 'w' or 'wb'")
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    mode_bits = _mode_for(path)
    fd, tmp_path = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=TEMP_SUFFIX, dir=directory)
    try:
        if "b" not in mode and encoding is None:
            encoding = "utf-8"
        with os.fdopen(fd, mode, encoding=encoding) as handle:
            if hasattr(os, "fchmod"):
                os.fchmod(handle.fileno(), mode_bits)   # mkstemp makes 0600; open() honours the umask
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_path, path)
    except BaseException as error:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_path)
        if isinstance(error, OSError) and error.errno is not None and error.filename is None:
            # write() and fsync() name no file: without this, "No space left on device" says not where.
            raise OSError(error.errno, error.strerror, path) from error     # the subclass follows errno
        raise
    # fsync the directory so the rename itself survives a power cut (best effort: not on Windows).
    with contextlib.suppress(OSError):
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_open(path, "wb") as handle:
        handle.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_open(path, "w", encoding="utf-8") as handle:
        handle.write(text)


def read_text_file(path: str | os.PathLike, what: str = "text file", allow_empty: bool = True) -> str:
    """The text of one UTF-8 file (a leading byte-order mark dropped, line endings as they are).

    Every error names the file as ``what`` (``"corpus file"``, ...): a missing file, a folder, an
    empty file when ``allow_empty`` is False, or bytes that are not UTF-8 (with the byte offset).
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        raise ValueError(f"{what} {path!r} is a directory; expected a UTF-8 text file")
    if not os.path.exists(path):
        raise FileNotFoundError(errno.ENOENT, f"{what} not found", path)
    with open(path, "rb") as handle:
        raw = handle.read()
    if not raw and not allow_empty:
        raise ValueError(f"{what} {path!r} is empty; expected UTF-8 text")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"{what} {path!r} is not UTF-8 text (invalid byte at offset {error.start}: "
                         f"0x{raw[error.start]:02x}, {error.reason}); expected UTF-8 encoded text") from None
    return text[1:] if text.startswith("\ufeff") else text
