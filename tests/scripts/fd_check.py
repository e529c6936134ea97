"""Torch-free check of an export: only onnxruntime and numpy.

Loads features.onnx and loss_grad.onnx, feeds the features into loss_grad by name at an
odd size, and compares the gradient with central finite differences of the loss.

    python tests/scripts/fd_check.py MODELS_DIR
"""

from __future__ import annotations

import sys

import numpy as np
import onnxruntime as ort

assert "torch" not in sys.modules


def main(folder: str) -> None:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    feats = ort.InferenceSession(f"{folder}/features.onnx", so, providers=["CPUExecutionProvider"])
    lossg = ort.InferenceSession(f"{folder}/loss_grad.onnx", so, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    h, w = 45, 37  # odd, not a multiple of the network's stride
    yy, xx = np.mgrid[0:h, 0:w] / 40.0
    content = np.stack([0.5 + 0.3 * np.sin(5 * xx + c) * np.cos(4 * yy) for c in range(3)])[None].astype(np.float32)
    style = np.clip(0.5 + 0.2 * rng.standard_normal((1, 3, 40, 52)), 0.05, 0.95).astype(np.float32)
    image = np.clip(content + 0.05 * rng.standard_normal(content.shape), 0.05, 0.95).astype(np.float32)
    names = [o.name for o in feats.get_outputs()]
    guided = any(i.name == "guide" for i in lossg.get_inputs())

    def run_features(x: np.ndarray) -> dict[str, np.ndarray]:
        feeds = {"image": x}
        if any(i.name == "guide" for i in feats.get_inputs()):
            feeds["guide"] = np.ones((1, 1, *x.shape[2:]), np.float32)
        return dict(zip(names, feats.run(None, feeds)))

    ct, st = run_features(content), run_features(style)
    wanted = {i.name for i in lossg.get_inputs()}
    targets = {n: (ct if n.startswith("content_") else st)[n] for n in names if n in wanted}  # chained by name
    if guided:
        # A soft mask, so the guided Gram path is differentiated too, not only the all-ones case.
        targets["guide"] = np.broadcast_to(np.linspace(0.2, 1.0, w, dtype=np.float32), (1, 1, h, w)).copy()
    if "temporal_target" in wanted:
        # A previous frame and a reliability map, so the temporal term is differentiated too.
        targets["temporal_target"] = np.clip(image[:, :, ::-1] + 0.1, 0, 1).astype(np.float32)
        targets["temporal_map"] = np.broadcast_to(np.linspace(1.0, 0.0, h, dtype=np.float32)[:, None], (1, 1, h, w)).copy()
    loss, grad = lossg.run(["loss", "grad"], {"image": image, **targets})
    g = grad.astype(np.float64)
    gn = float(np.linalg.norm(g))

    def at(x: np.ndarray) -> float:
        return float(lossg.run(["loss"], {"image": x.astype(np.float32), **targets})[0])

    eps = 1e-2
    v = g / gn
    fd = (at(image + eps * v) - at(image - eps * v)) / (2 * eps)
    rel = abs(fd - gn) / gn
    print(f"{h}x{w}: loss {float(loss):.5g}, |grad| {gn:.5g}, finite difference along grad {fd:.5g} (rel err {rel:.2e})")
    for _ in range(3):
        r = rng.standard_normal(image.shape)
        r /= np.linalg.norm(r)
        fd_r = (at(image + eps * r) - at(image - eps * r)) / (2 * eps)
        err = abs(fd_r - float((g * r).sum())) / gn
        print(f"  random direction: finite difference {fd_r:.4g}, gradient {float((g * r).sum()):.4g} (err {err:.2e} of |grad|)")
        assert err < 2e-2
    assert rel < 2e-2, rel
    assert "torch" not in sys.modules
    print("gradient agrees with finite differences")


if __name__ == "__main__":
    main(sys.argv[1])
