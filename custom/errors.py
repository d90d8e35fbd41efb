"""One last line that names the problem: the bundle entry points' error reporting.

MONAI wraps an error raised while a config component is created or a transform runs in a ``RuntimeError``
(``Failed to instantiate component ...``, ``applying transform <LoadImaged object at 0x...>``), so the real
message (a :class:`~custom.io.DataError` naming the file, a ``ValueError`` naming the option) sits in the middle of
a long traceback. :func:`install_excepthook`, called first by the configs' ``training``, ``evaluating`` and
``inference`` lists, replaces ``sys.excepthook`` so that an uncaught error ends with one line::

    noisyseg: error: <root cause message>

Errors the user can fix (bad data, bad options: :class:`~custom.io.DataError`, :class:`OptionError`, a missing
file) print only that line; any other error prints the full traceback first (for a bug report), then the line.
``NOISYSEG_TRACEBACK=1`` always prints the traceback. An exception class marks itself as such a user error with a
class attribute ``user_error = True`` (:class:`~custom.io.DataError`, :class:`OptionError`, the bundles'
``folder_inference.InputError``).

This module imports only the standard library: it is copied into trained bundles (``scripts/errors.py``), whose
``inference.json`` installs the same hook.

Example::

    import custom.errors
    custom.errors.install_excepthook()
"""

from __future__ import annotations

import contextlib
import difflib
import logging
import os
import re
import sys
import warnings
from collections.abc import Callable, Iterator, Mapping
from types import FrameType, TracebackType

__all__ = [
    "OptionError",
    "PREFIX",
    "cause_chain",
    "root_cause",
    "source_file",
    "describe",
    "install_excepthook",
    "quiet_unactionable_warnings",
    "startup_problem",
]

PREFIX = "noisyseg: error: "

# MONAI's wrappers: their own message says nothing about the problem
_WRAPPER_PREFIXES = ("Failed to instantiate component", "applying transform", "Failed to evaluate")

# Third-party warnings printed on every run that the user of the configs or a bundle cannot act on: (category,
# regex matched at the start of the message). MONAI's Orientationd warns, each time one is built without `labels`,
# that the argument's default will change; the configs and the bundles build it (the axis labels are RAS either
# way for the NIfTI images they read), so the warning is addressed to the project's code, not to its user.
_UNACTIONABLE_WARNINGS = (
    (FutureWarning, r"monai\.transforms\.spatial\.dictionary Orientationd\.__init__:labels: Current default value"),
)


class OptionError(ValueError):
    """A bad config option (a command-line override or a config value). The message starts with the option."""

    user_error = True

    def __init__(self, option: str, problem: str):
        self.option = option
        self.problem = problem
        super().__init__(f"--{option}: {problem}")


def _marked(exc: BaseException) -> bool:
    return getattr(type(exc), "user_error", False) is True


def cause_chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc``, then its ``__cause__`` (or unsuppressed ``__context__``), and so on to the innermost exception."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        if current.__cause__ is not None:
            current = current.__cause__
        elif not current.__suppress_context__:
            current = current.__context__
        else:
            current = None


def _is_wrapper(exc: BaseException) -> bool:
    message = str(exc)
    return type(exc) is RuntimeError and message.startswith(_WRAPPER_PREFIXES)


def root_cause(exc: BaseException) -> BaseException:
    """The exception that says what went wrong: the innermost user error of the chain (``user_error = True``:
    ``DataError``, :class:`OptionError`; they name the file or option, their own causes are library details), else
    the outermost exception that is not one of MONAI's wrappers."""
    chain = list(cause_chain(exc))
    for candidate in reversed(chain):
        if _marked(candidate):
            return candidate
    for candidate in chain:
        if not _is_wrapper(candidate):
            return candidate
    return chain[-1]


_FILE_LOCALS = ("filename", "filename_or_obj", "path", "file", "file_path", "image_path")


def _existing_file(value: object) -> str | None:
    if isinstance(value, (tuple, list)) and len(value) == 1:
        value = value[0]
    if isinstance(value, (str, os.PathLike)):
        with contextlib.suppress(OSError, ValueError, TypeError):
            if os.path.isfile(value):
                return os.fspath(value)
    return None


def source_file(exc: BaseException) -> str | None:
    """The file being read or transformed when ``exc`` was raised, from its traceback's frames (outermost first:
    MONAI's ``NibabelReader`` keeps the file names on the reader, shared by the threads of a ``CacheDataset``, so
    its inner frames may name another thread's file): a local such as ``filename`` (MONAI's ``LoadImage``) that
    names an existing file, or an array whose metadata's ``filename_or_obj`` does (``Spacing`` on a ``MetaTensor``);
    None when no frame tells."""
    frames = []
    tb = exc.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    for frame in frames:
        local_vars = frame.f_locals
        for name in _FILE_LOCALS:
            found = _existing_file(local_vars.get(name))
            if found:
                return found
        for value in local_vars.values():
            meta = getattr(value, "meta", None) if not isinstance(value, type) else None
            if isinstance(meta, Mapping):
                found = _existing_file(meta.get("filename_or_obj"))
                if found:
                    return found
    return None


def _frames(exc: BaseException) -> list[FrameType]:
    frames = []
    tb = exc.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    return frames


def _frame_of(frames: list[FrameType], function: str, module_suffix: str) -> FrameType | None:
    for frame in frames:
        if frame.f_code.co_name == function and str(frame.f_globals.get("__name__", "")).endswith(module_suffix):
            return frame
    return None


_RUN_ID_MISSING = re.compile(r"run ID '(?P<run_id>[^']*)' doesn't exist in the config file")


def startup_problem(exc: BaseException) -> str | None:
    """The line for an error MONAI's ``ConfigWorkflow`` raises outside the configs' expressions (None for any other
    error): a mistyped run id (``run trainig``: MONAI's own message lists no valid one). The configs'
    ``initialize`` list installs the hook before MONAI looks the run id up; the valid ids are read from the
    workflow's parser in the traceback's frames."""
    frames = _frames(exc)
    match = _RUN_ID_MISSING.search(str(exc)) if isinstance(exc, ValueError) else None
    run_frame = _frame_of(frames, "run", "monai.bundle.workflows")
    if match and run_frame is not None:
        config = getattr(getattr(run_frame.f_locals.get("self"), "parser", None), "config", None)
        config = config if isinstance(config, Mapping) else {}
        ids = sorted(
            str(k) for k, v in config.items()
            if k not in ("imports", "initialize", "finalize")
            and isinstance(v, list) and v and all(isinstance(x, str) for x in v)
        )
        guess = difflib.get_close_matches(match["run_id"], ids, n=1, cutoff=0.5)
        hint = f"did you mean {guess[0]}? " if guess else ""
        return f"run {match['run_id']}: no such run id in the config; {hint}(run ids: {', '.join(ids)})"
    return None


def describe(exc: BaseException) -> str:
    """One line for ``exc``'s root cause: its message (with the type for other than user errors),
    preceded by the file being read when the message does not name it (see :func:`source_file`); MONAI's start-up
    errors as :func:`startup_problem` words them."""
    startup = startup_problem(exc)
    if startup is not None:
        return startup
    cause = root_cause(exc)
    message = " ".join(str(cause).split()) or type(cause).__name__
    if isinstance(cause, KeyError) and len(cause.args) == 1:
        message = str(cause.args[0])
    if _marked(cause):
        return message
    if _out_of_memory(cause):  # a memory limit, not the file being read when it was hit
        return (f"out of memory ({type(cause).__name__}: {message[:200]}); reduce --patch_size, --batch_size (or "
                "--batch_hq/--batch_lq) or --num_samples, or use a machine with more memory")
    message = f"{type(cause).__name__}: {message}"
    path = source_file(cause)
    if path and path not in message:
        message = f"{path}: {message}"
    return message


_OUT_OF_MEMORY = ("out of memory", "can't allocate memory", "defaultcpuallocator")


def _out_of_memory(cause: BaseException) -> bool:
    text = str(cause).lower()
    return isinstance(cause, MemoryError) or (
        isinstance(cause, RuntimeError) and any(marker in text for marker in _OUT_OF_MEMORY)
    )


# a library's error while reading a file (a truncated or corrupt .nii.gz): fixable when the file is known
_READ_ERRORS = ("EOFError", "BadGzipFile", "ImageFileError", "HeaderDataError")


def _unreadable_file(cause: BaseException) -> bool:
    named = type(cause).__name__ in _READ_ERRORS or type(cause).__module__ == "zlib"
    return named and source_file(cause) is not None


def _user_error(cause: BaseException) -> bool:
    return _marked(cause) or _out_of_memory(cause) or _unreadable_file(cause) or isinstance(
        cause, (FileNotFoundError, NotADirectoryError, PermissionError)
    )


def _fixable(exc: BaseException) -> bool:
    return _user_error(root_cause(exc)) or startup_problem(exc) is not None


def _make_hook(previous: Callable) -> Callable:
    def hook(exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
        if issubclass(exc_type, KeyboardInterrupt) or exc is None:
            previous(exc_type, exc, tb)
            return
        try:
            if os.environ.get("NOISYSEG_TRACEBACK", "") not in ("", "0") or not _fixable(exc):
                previous(exc_type, exc, tb)
            sys.stderr.write(PREFIX + describe(exc) + "\n")
            sys.stderr.flush()
        except Exception:  # never hide the original error behind one of ours
            previous(exc_type, exc, tb)

    hook.noisyseg_hook = True  # type: ignore[attr-defined]
    return hook


def _quiet_record_factory(previous: Callable) -> Callable:
    """A log-record factory that drops the traceback of a fixable error (MONAI's ``StatsHandler`` logs every exception
    that ends an engine run with ``logger.exception``, on the engine's logger): the message line stays, the hook's
    last line says the rest."""

    def factory(*args, **kwargs) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and os.environ.get("NOISYSEG_TRACEBACK", "") in ("", "0") and _fixable(exc):
            record.exc_info = None
        return record

    factory.noisyseg_factory = True  # type: ignore[attr-defined]
    return factory


def quiet_unactionable_warnings() -> None:
    """Ignore exactly the third-party warnings listed in ``_UNACTIONABLE_WARNINGS`` (by category and message);
    every other warning is shown as before. Idempotent (``warnings.filterwarnings`` replaces an identical filter)."""
    for category, message in _UNACTIONABLE_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)


def install_excepthook() -> None:
    """Make an uncaught error end with ``noisyseg: error: <root cause>`` (see the module docstring), keep the log
    records from printing the traceback of a fixable error, and silence the third-party warnings a user cannot act on
    (:func:`quiet_unactionable_warnings`; it is the first call of every run list); idempotent."""
    quiet_unactionable_warnings()
    if not getattr(sys.excepthook, "noisyseg_hook", False):
        sys.excepthook = _make_hook(sys.excepthook)
    if not getattr(logging.getLogRecordFactory(), "noisyseg_factory", False):
        logging.setLogRecordFactory(_quiet_record_factory(logging.getLogRecordFactory()))
