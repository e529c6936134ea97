"""A job request checked and turned into a job: settings validated, images refused from their
header or proven by decoding, memory admitted, inputs stored as arrays in the job's folder.

Every refusal is an :class:`ApiError` with the HTTP status and a one-line message naming the
part of the request at fault ("content", "style 2", "settings.size"), never a server path.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Sequence
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from ..errors import ImageError, SizeError
from ..runtime.image_io import ImageHeader, read_header
from ..runtime.memory import estimate_run_bytes
from ..runtime.plan import check_sizes
from ..runtime import inputs
from ..runtime.settings import RunSettings, build_run_settings, knobs, scalar_type
from ..spec import LossSpec, canonical_preset
from .settings import ServeConfig
from .store import QUEUED, JobRecord, JobStore, input_names, new_job_id, save_array

# Below this the deepest VGG layers (stride 16) would see no pixels at all.
# Every setting fits in a few hundred bytes; a megabyte of "settings" is an attack on the parser.
MAX_SETTINGS_BYTES = 64 * 1024


class ApiError(Exception):
    """A request refused: HTTP status and a one-line message for the ``{"error": …}`` body."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# The stylize options that make sense remotely (no paths: no init image, no masks). Their JSON
# names, types, bounds and choices come from RunSettings' knobs, as the CLI's options do.
REMOTE = (
    "size", "iterations", "content_weight", "style_weight", "tv_weight", "style_blend", "style_scale", "init", "seed",
    "optimizer", "adam_lr", "preserve_color", "scales", "scale_iterations",
)
_REMOTE_TYPES: dict[str, Any] = {
    "style_blend": list[float], "scales": list[int], "scale_iterations": list[int],
    "init": Literal["content", "style", "noise"],  # "image" needs an init upload, which the service does not take
}


def _remote_model() -> type[BaseModel]:
    fields: dict[str, Any] = {"preset": (Optional[str], None)}
    for name in REMOTE:
        f = knobs()[name]
        k = f.metadata["knob"]
        kind = _REMOTE_TYPES.get(name) or (Literal[k["choices"]] if k["choices"] else scalar_type(f))
        bounds = {"ge": k["min"], "le": k["max"], **({"allow_inf_nan": False} if kind is float else {})}
        fields[k["flag"] or f.name] = (Optional[kind], Field(None, description=k["help"], **bounds))
    return create_model("RemoteSettings", __config__=ConfigDict(extra="forbid", strict=True), **fields)


RemoteSettings = _remote_model()
SETTING_NAMES = tuple(RemoteSettings.model_fields)


def _validation_message(e: ValidationError) -> str:
    first = e.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "settings"
    text = f"settings.{where}: {first['msg']}"
    if first["type"] == "extra_forbidden":
        text += f" (known settings: {', '.join(SETTING_NAMES)})"
    return text


def parse_settings(text: str | None, styles: int, export_preset: str, config: ServeConfig) -> RunSettings:
    """The ``settings`` field: 400 if it is not JSON, 413 if it is huge, 422 if it asks for
    what cannot be run."""
    if text is not None and len(text) > MAX_SETTINGS_BYTES:
        raise ApiError(413, f"settings: {len(text) / 1024:.0f} KB of text, over the limit of {MAX_SETTINGS_BYTES // 1024} KB")
    try:
        raw = json.loads(text) if text and text.strip() else {}
    except ValueError as e:
        raise ApiError(400, f"settings: not valid JSON ({e})") from None
    except RecursionError:  # json's C parser recurses once per level: [[[[… a few thousand deep
        raise ApiError(400, "settings: not valid JSON (nested too deeply)") from None
    if not isinstance(raw, dict):
        raise ApiError(422, "settings: expected a JSON object such as {\"size\": 256}")
    try:
        remote = RemoteSettings.model_validate(raw)
    except ValidationError as e:
        raise ApiError(422, _validation_message(e)) from None
    preset = canonical_preset(remote.preset or export_preset)
    if preset != export_preset:
        raise ApiError(422, f"settings.preset {remote.preset!r}: this server runs the {export_preset} export")
    try:
        # Users' photos come in every aspect ratio: the shape grid bounds the compiles and the cache.
        settings = build_run_settings(preset, styles, shape_grid=True, **remote.model_dump(exclude={"preset"}))
    except ValueError as e:
        raise ApiError(422, f"settings: {e}") from None
    if settings.style_blend is not None:
        from ..runtime.stylizer import blend_weights  # loads scipy: only when a blend is asked for

        try:
            blend_weights(styles, settings.style_blend)
        except ValueError as e:
            raise ApiError(422, f"settings.style_blend: {e}") from None
    stages = settings.stages()
    largest = max(size for size, _ in stages)
    if largest > config.max_size:
        raise ApiError(422, f"settings: {largest} px is over this server's limit of {config.max_size} px (--max-size)")
    if settings.total_evaluations() > config.max_evaluations:
        raise ApiError(
            422, f"settings: {settings.total_evaluations()} evaluations is over this server's limit of {config.max_evaluations}"
        )
    return settings


@dataclass(frozen=True)
class Upload:
    label: str  # "content", "style 1", …: how messages name it
    data: bytes


def check_header(upload: Upload, max_pixels: int) -> ImageHeader:
    """415 unless the header is an image's; 413 for a decompression bomb, before decoding."""
    if not upload.data:
        raise ApiError(415, f"{upload.label}: the file is empty")
    try:
        # No limit here: over the limit is a 413 (with the limit in it), not an unreadable file.
        header = read_header(upload.data, Path(upload.label), sys.maxsize)
    except ImageError as e:
        raise ApiError(415, str(e)) from None
    if header.pixels > max_pixels:
        raise ApiError(
            413,
            f"{upload.label}: {header.width}x{header.height} is {header.pixels / 1e6:.0f} M pixels, over this server's "
            f"limit of {max_pixels / 1e6:.0f} M pixels (a decompression bomb?)",
        )
    return header


def plan_size(header: ImageHeader, settings: RunSettings, spec: LossSpec, styles: Sequence[ImageHeader] = ()) -> tuple[int, int]:
    """(height, width) of the result; 422 if the content or a style would be too thin for the
    network at any stage (the plan's own rule, with the CLI's message)."""
    h, w = header.oriented
    try:
        check_sizes(spec, (h, w), settings, styles=[st.oriented for st in styles])
    except SizeError as e:
        raise ApiError(422, str(e)) from None
    return settings.output_size(h, w)


@dataclass(frozen=True)
class Admission:
    """What a job's memory is measured against: one worker's share of the budget (None:
    unknown, nothing refused) and the backend the workers run (the estimate depends on it)."""

    share: int | None
    backend: str = "onnxruntime"
    precision: str = "fp32"


def admit_memory(spec: LossSpec, hw: tuple[int, int], settings: RunSettings, admission: Admission) -> int:
    """The run's estimated peak; 422 if it cannot fit one worker's share of the budget."""
    need = estimate_run_bytes(spec, hw[0], hw[1], settings, backend=admission.backend, precision=admission.precision)
    share = admission.share
    if share is not None and need > share:
        raise ApiError(
            422,
            f"{hw[1]}x{hw[0]} needs about {need / 2**30:.2f} GiB, over a worker's share of this server's memory "
            f"budget ({share / 2**30:.2f} GiB); use a smaller size",
        )
    return need


def _decode(upload: Upload, side: int, max_pixels: int) -> tuple[Any, Any]:
    """Decode once (proving the file is an image) at the side it is used at."""
    try:
        return inputs.decode(upload.data, side, upload.label, max_pixels)
    except ImageError as e:
        raise ApiError(415, str(e)) from None


def prepare_job(
    store: JobStore, config: ServeConfig, spec: LossSpec, admission: Admission, content: Upload, styles: list[Upload], settings: RunSettings
) -> JobRecord:
    """Check and decode the uploads into a new job's folder; the queued record to submit."""
    content_header = check_header(content, config.max_pixels)
    style_headers = [check_header(style, config.max_pixels) for style in styles]
    h, w = plan_size(content_header, settings, spec, style_headers)
    estimate = admit_memory(spec, (h, w), settings, admission)
    job_id = new_job_id()
    folder = store.job_dir(job_id)
    folder.mkdir(parents=True)
    try:
        rgb, alpha = _decode(content, max(h, w), config.max_pixels)
        save_array(folder / "content.npy", rgb)
        if alpha is not None:
            save_array(folder / "alpha.npy", alpha)
        # Styles at the side their Grams are taken at (as every front end does).
        side = inputs.style_side(settings, (h, w))
        for style, name in zip(styles, input_names(len(styles))[1:]):
            srgb, _ = _decode(style, side, config.max_pixels)
            save_array(folder / name, srgb)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return JobRecord(
        id=job_id, status=QUEUED, created=time.time(), iterations=settings.total_evaluations(), width=w, height=h,
        styles=len(styles), settings=settings.to_dict(), estimate=estimate, stages=len(settings.stages()),
    )
