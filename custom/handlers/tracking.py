"""Experiment tracking (``--tracking mlflow``): keep the executed-config artifact when ``output_dir`` is a plain path.

MONAI's ``--tracking mlflow`` writes the executed config to ``<output_dir>/config_<time>.json`` and hands its
``MLFlowHandler`` the *config text* ``<output_dir value> + '/config_<time>.json'`` as the artifact to log. That text is
an expression only while ``output_dir`` is one (the method configs' default ``"$'bundles/' + @bundle_name"``). Given
on the command line, ``--output_dir /some/dir`` is a plain string: the handler receives the literal path
``/some/dir + '/config_<time>.json'``, finds no such file and logs no config. :class:`ExecutedConfigArtifact`
points such entries at the file MONAI wrote.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from typing import Any

from ignite.engine import Engine, Events

__all__ = ["ExecutedConfigArtifact", "repair_artifact_path"]

# "<dir> + '/config_<time>.json'": MONAI's save_execute_config built from a plain-string output_dir
_CONCATENATED = re.compile(r"^(?P<dir>.+?)\s*\+\s*'/(?P<name>[^'/]+\.json)'$")


def repair_artifact_path(entry: Any) -> Any:
    """The executed-config file meant by ``entry``, or ``entry`` unchanged.

    Args:
        entry: one artifact of an ``MLFlowHandler``: a path, or MONAI's unevaluated ``"<dir> + '/<name>.json'"``.

    Returns:
        ``os.path.join(dir, name)`` when ``entry`` is such a text, is no existing path itself, and that file exists;
        otherwise ``entry``.
    """
    if not isinstance(entry, str) or os.path.exists(entry):
        return entry
    match = _CONCATENATED.match(entry.strip())
    if match is None:
        return entry
    candidate = os.path.join(match["dir"], match["name"])
    return candidate if os.path.isfile(candidate) else entry


class ExecutedConfigArtifact:
    """Ignite handler: when the engine starts, repair the artifact paths of the given tracking handlers.

    Each handler with an ``artifacts`` tuple (MONAI's ``MLFlowHandler``) gets its entries passed through
    :func:`repair_artifact_path`; other handlers, and runs without tracking, are left alone. The artifacts are logged
    when training completes, so repairing them at the start is in time.

    Args:
        handlers: the trainer's handlers, e.g. ``"@train::handlers"`` (where ``--tracking mlflow`` adds its handler).

    Raises:
        ValueError: when ``handlers`` is not a sequence.
    """

    def __init__(self, handlers: Sequence[Any] | None) -> None:
        if handlers is not None and (isinstance(handlers, (str, bytes)) or not isinstance(handlers, Sequence)):
            raise ValueError(f"handlers must be a list of handlers, got {type(handlers).__name__}.")
        self.handlers = list(handlers or [])

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine) -> None:
        for handler in self.handlers:
            artifacts = getattr(handler, "artifacts", None)
            if isinstance(artifacts, tuple) and artifacts:
                handler.artifacts = tuple(repair_artifact_path(a) for a in artifacts)
