"""``onnxstyle serve``: stylization over HTTP (the ``[serve]`` extra).

FastAPI and uvicorn are imported only when the command runs: the CLI stays light, and
without the ``[serve]`` extra the command says so in one line (exit code 10).
"""

from __future__ import annotations

import importlib.util
import logging
import socket
from pathlib import Path
from typing import Annotated, Optional

import typer

from rich.markup import escape

from ..errors import MissingDependencyError, OnnxStyleError
from ..runtime.settings import EngineConfig
from ..serve.settings import TOKEN_ENV, ServeConfig
from .options import ENGINE, DeviceIdOpt, DeviceOpt, MaxPixelsOpt, ModelsOpt, PrecisionOpt, QuietOpt, ThreadsOpt, err, handle_errors

DEFAULTS = ServeConfig(models=Path("."))

HostOpt = Annotated[str, typer.Option(help="address to listen on; 0.0.0.0 exposes the service to the network")]
PortOpt = Annotated[int, typer.Option(min=1, max=65535)]
WorkersOpt = Annotated[int, typer.Option(min=1, help="worker processes, each with a warm engine and its share of the cores")]
QueueOpt = Annotated[int, typer.Option(min=0, help="jobs that may wait for a worker; more get 429")]
DataOpt = Annotated[
    Optional[Path], typer.Option(file_okay=False, help="job table and results", show_default="$XDG_DATA_HOME/onnxstyle/serve")
]
TokenOpt = Annotated[
    Optional[str],
    typer.Option(envvar=TOKEN_ENV, show_envvar=True, help="require Authorization: Bearer TOKEN (prefer the variable: ps shows arguments)"),
]
MaxUploadOpt = Annotated[float, typer.Option(min=0.001, help="largest request body, in MB")]
MaxSizeOpt = Annotated[int, typer.Option(min=32, help="largest output side a job may ask for, in px")]
MaxEvalOpt = Annotated[int, typer.Option(min=1, help="most evaluations a job may ask for, over all its stages")]
BodyTimeoutOpt = Annotated[float, typer.Option(min=0.001, help="seconds a request body may take to arrive; then 408")]
BudgetOpt = Annotated[
    Optional[int],
    typer.Option(min=1, help="memory for the server and its workers, in MB", show_default="available at start minus --memory-margin"),
]
MarginOpt = Annotated[int, typer.Option(min=0, help="memory left to the rest of the machine, in MB")]
CorsOpt = Annotated[Optional[list[str]], typer.Option(help="allow this origin (repeatable); CORS is off without it")]


def _check_extra() -> None:
    """The [serve] extra, imported here (the command needs it next anyway) so that a missing
    or broken install is one line, not a traceback from deep inside the app."""
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise MissingDependencyError(f"serve needs {e.name or 'fastapi and uvicorn'}: pip install 'onnxstyle[serve]'") from None
    # python-multipart (form uploads) is imported as python_multipart, or multipart before 0.0.13.
    if importlib.util.find_spec("python_multipart") is None and importlib.util.find_spec("multipart") is None:
        raise MissingDependencyError("serve needs python-multipart: pip install 'onnxstyle[serve]'")


def _check_port(host: str, port: int) -> None:
    """Refuse a taken address before minutes are spent warming workers up."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            raise OnnxStyleError(f"cannot listen on {host}:{port}: {e.strerror} (choose another --port or --host)") from None


@handle_errors
def serve(
    models: ModelsOpt = None,
    host: HostOpt = DEFAULTS.host,
    port: PortOpt = DEFAULTS.port,
    workers: WorkersOpt = DEFAULTS.workers,
    queue: QueueOpt = DEFAULTS.queue,
    data: DataOpt = None,
    token: TokenOpt = None,
    max_upload: MaxUploadOpt = DEFAULTS.max_upload_mb,
    max_size: MaxSizeOpt = DEFAULTS.max_size,
    max_evaluations: MaxEvalOpt = DEFAULTS.max_evaluations,
    body_timeout: BodyTimeoutOpt = DEFAULTS.body_timeout,
    max_pixels: MaxPixelsOpt = DEFAULTS.max_pixels,
    memory_budget: BudgetOpt = None,
    memory_margin: MarginOpt = DEFAULTS.memory_margin_mb,
    cors_origin: CorsOpt = None,
    device: DeviceOpt = ENGINE.device,
    device_id: DeviceIdOpt = ENGINE.device_id,
    threads: ThreadsOpt = None,
    precision: PrecisionOpt = ENGINE.precision,
    quiet: QuietOpt = False,
) -> None:
    """Serve stylization over HTTP: a JSON API, live progress (SSE) and a web page at /."""
    _check_extra()
    from ..autoexport import resolve_models
    from ..exportdir import export_settings_for

    def say(text: str) -> None:
        if not quiet:
            err.print(escape(text))

    ref = resolve_models(export_settings_for("gatys"), models, log=say)
    config = ServeConfig(
        models=ref.folder, fix=ref.fix, host=host, port=port, workers=workers, queue=queue, data=data, token=token,
        max_upload_mb=max_upload, max_size=max_size, max_evaluations=max_evaluations,
        body_timeout=body_timeout, max_pixels=max_pixels, memory_budget_mb=memory_budget,
        memory_margin_mb=memory_margin, cors_origins=tuple(cors_origin or ()),
        engine=EngineConfig(device, device_id, threads, precision),
    )
    _check_port(host, port)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from ..serve.app import run_server

    run_server(config, say)
