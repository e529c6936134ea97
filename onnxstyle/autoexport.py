"""Find the models folder a command needs, exporting it once on first use where torch is installed.

Outside runtime/ on purpose: the runtime never imports export/. The CLI and the top-level
Python API call this; an edge install without torch is told, in one line, how to get a folder.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .exportdir import MANIFEST, default_export_dir, export_command
from .errors import ModelsError
from .exportdir import ExportSettings


@dataclass(frozen=True)
class ModelsRef:
    folder: Path
    # The command that (re-)creates this folder, for every error message about it.
    fix: str
    # True when the folder was given (--models): the settings asked for must then be checked
    # against it; a cache folder is found by those very settings.
    given: bool = False


def torch_available() -> bool:
    try:
        return importlib.util.find_spec("torch") is not None
    except (ImportError, ValueError):  # a broken or deliberately blocked torch
        return False


def resolve_models(settings: ExportSettings, models: Path | None = None, log: Callable[[str], None] | None = None) -> ModelsRef:
    """The folder for ``settings``: ``models`` if given, else the cache folder of their key,
    exported there once if missing and torch is installed."""
    if models is not None:
        return ModelsRef(Path(models), export_command(settings, models), given=True)
    folder = default_export_dir(settings)
    fix = export_command(settings)
    if (folder / MANIFEST).is_file():
        return ModelsRef(folder, fix)
    if not torch_available():
        raise ModelsError(
            f"no exported graphs in {folder} and torch is not installed to make them: "
            f"run `{fix}` on a machine with pip install 'onnxstyle[export]', then copy the folder "
            f"there (or pass --models DIR)"
        )
    from .export.exporter import export  # torch only on this path

    if log:
        log(f"no export for preset {settings.preset} yet: exporting once to {folder}")
    export(settings, folder, log=log, overwrite=False)
    return ModelsRef(folder, fix)
