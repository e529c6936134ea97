from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from helpers import DATA


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    # Never touch the user's cache; every test sees the same session-wide cache folder.
    monkeypatch.setenv("ONNXSTYLE_CACHE", str(_session_cache(tmp_path_factory)))
    # The models check (runtime/selfcheck.py) stays on: every test runs what a user runs. It was
    # measured not to cost the suite (12.0 min with it, 12.0 min without, on 2 Zen 3 cores).
    monkeypatch.delenv("ONNXSTYLE_SELFCHECK", raising=False)


_CACHE: list[Path] = []


def _session_cache(factory: pytest.TempPathFactory) -> Path:
    if not _CACHE:
        _CACHE.append(factory.mktemp("cache"))
    return _CACHE[0]


@pytest.fixture(scope="session")
def caffe_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default (gatys, caffe, max pooling) export, validated, shared by the session."""
    from onnxstyle.export.exporter import export
    from onnxstyle.exportdir import ExportSettings

    folder = tmp_path_factory.mktemp("exports") / "gatys"
    export(ExportSettings(), folder)
    return folder


@pytest.fixture(scope="session")
def caffe_weights():  # type: ignore[no-untyped-def]
    from onnxstyle.reference.weights import load_caffe

    return load_caffe()


def read_rgb(name: str) -> np.ndarray:
    from onnxstyle.runtime.image_io import load_image

    return load_image(DATA / name)[0]


@pytest.fixture(scope="session")
def tubingen() -> np.ndarray:
    return read_rgb("tubingen.png")


@pytest.fixture(scope="session")
def starry() -> np.ndarray:
    return read_rgb("starry_night.png")


@pytest.fixture(scope="session")
def scream() -> np.ndarray:
    return read_rgb("the_scream.png")
