"""The export folder contract: where exports live, and reading/checking their manifest."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ModelsError
from ..spec import FORMAT_VERSION, ExportSettings, LossSpec

MANIFEST = "manifest.json"
GRAPHS = ("features.onnx", "loss_grad.onnx")
METADATA_KEY = "onnxstyle.manifest"


def cache_root() -> Path:
    """Per-user cache: $ONNXSTYLE_CACHE, else $XDG_CACHE_HOME/onnxstyle, else ~/.cache/onnxstyle."""
    env = os.environ.get("ONNXSTYLE_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "onnxstyle"


def default_export_dir(settings: ExportSettings) -> Path:
    return cache_root() / "exports" / settings.key()


def export_command(settings: ExportSettings | None = None) -> str:
    if settings is None:
        return "onnxstyle export"
    cmd = "onnxstyle export"
    if settings.preset != "gatys":
        cmd += f" --preset {settings.preset}"
    if settings.weights != "caffe":
        cmd += f" --weights {settings.weights}"
    if settings.spec.pooling != "max":
        cmd += f" --pooling {settings.spec.pooling}"
    return cmd


@dataclass(frozen=True)
class Manifest:
    folder: Path
    data: dict[str, Any]

    @property
    def spec(self) -> LossSpec:
        return LossSpec.from_dict(self.data["spec"])

    @property
    def weight_defaults(self) -> dict[str, float]:
        return {
            i["name"]: float(i["default"]) for i in self.data["graphs"]["loss_grad"]["inputs"] if i["kind"] == "weight"
        }

    def outputs(self, graph: str) -> list[dict[str, Any]]:
        return list(self.data["graphs"][graph]["outputs"])

    def inputs(self, graph: str) -> list[dict[str, Any]]:
        return list(self.data["graphs"][graph]["inputs"])


def read_manifest(folder: Path, fix: str = "onnxstyle export") -> Manifest:
    """Read and check a models folder; every problem is one line naming the fix."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelsError(f"models folder {folder} does not exist; create it with: {fix}")
    path = folder / MANIFEST
    if not path.is_file():
        raise ModelsError(f"{path} is missing; re-export with: {fix}")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ModelsError(f"{path} is not valid JSON ({e}); re-export with: {fix}") from e
    if not isinstance(data, dict) or data.get("format_version") != FORMAT_VERSION:
        found = data.get("format_version") if isinstance(data, dict) else None
        raise ModelsError(
            f"{path} has format version {found}, this onnxstyle reads version {FORMAT_VERSION}; re-export with: {fix}"
        )
    for g in GRAPHS:
        gp = folder / g
        if not gp.is_file():
            raise ModelsError(f"{gp} is missing; re-export with: {fix}")
        want = data.get("files", {}).get(g, {}).get("bytes")
        if want is not None and gp.stat().st_size != want:
            raise ModelsError(
                f"{gp} has {gp.stat().st_size} bytes, the manifest says {want} (truncated or replaced); "
                f"re-export with: {fix}"
            )
    try:
        m = Manifest(folder, data)
        m.spec  # noqa: B018 - parse now so a bad manifest fails here, not mid-run
        m.weight_defaults  # noqa: B018
    except (KeyError, TypeError, ValueError) as e:
        raise ModelsError(f"{path} is malformed ({type(e).__name__}: {e}); re-export with: {fix}") from e
    return m
