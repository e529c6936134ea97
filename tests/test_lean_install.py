"""The lean install (`pip install 'onnxstyle[cpu]'`, issue 19): no opencv and no scipy in the base.

opencv serves only the video extra's optical flow and scipy only the lbfgs-b and keras-lbfgs
optimizers; everything else (image I/O, resizing, contact sheets, the CLI) runs without them.
CI measures the installed size itself (.ci/run); these tests hold the code to it.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import onnxstyle
from helpers import DATA

PKG = Path(onnxstyle.__file__).parent
ROOT = PKG.parent

BLOCK = """
import sys
class _Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("cv2", "scipy", "torch"):
            raise ImportError(f"{name} is blocked in this test")
        return None
sys.meta_path.insert(0, _Block())
"""


def _imports(tree: ast.AST) -> list[tuple[str, bool]]:
    """(module, at module level) for every import in a file."""
    top = {id(n) for n in getattr(tree, "body", [])}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.extend((a.name, id(node) in top) for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            out.append((node.module or "", id(node) in top))
    return out


def test_opencv_only_in_video_and_scipy_never_at_module_level() -> None:
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG)
        for name, module_level in _imports(ast.parse(path.read_text())):
            root = name.split(".")[0]
            if root == "cv2":
                assert rel.parts[0] == "video", f"{rel} imports cv2 (the lean install has no opencv)"
                assert not module_level, f"{rel} imports cv2 at module level: the CLI imports video/"
            if root == "scipy":
                assert not module_level, f"{rel} imports scipy at module level"


def test_base_dependencies_are_the_lean_set() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {d.split(">")[0].split("=")[0].split("<")[0].split("[")[0].strip().lower() for d in meta["dependencies"]}
    assert names <= {"numpy", "pillow", "typer", "rich", "filelock", "platformdirs"}, names
    extras = meta["optional-dependencies"]
    assert [d.split(">")[0] for d in extras["cpu"]] == ["openvino"]
    assert any(d.startswith("onnxruntime>") for d in extras["ort"])
    assert any(d.startswith("opencv-python-headless") for d in extras["video"])
    assert any(d.startswith("scipy") for d in extras["scipy"])


def test_images_sheets_and_cli_work_without_opencv_and_scipy(tmp_path: Path) -> None:
    code = BLOCK + f"""
import numpy as np
import onnxstyle.cli, onnxstyle.commands.stylize, onnxstyle.runtime.stylizer, onnxstyle.commands.video
from onnxstyle.errors import MissingDependencyError
from onnxstyle.runtime.image_io import load_image, read_png_text, resize_to, save_image
from onnxstyle.runtime.optimize import lbfgs
from onnxstyle.commands.sheet import contact_sheet, enlarge_for_labels
from onnxstyle.video.flow import dis_flow

rgb, alpha = load_image({str(DATA / "tubingen.png")!r}, max_side=48)
assert rgb.shape == (36, 48, 3) and alpha is None
sheet = contact_sheet(enlarge_for_labels([rgb, resize_to(rgb, 20, 30)]), ["a=1", "b=2"], columns=2, title="t")
save_image({str(tmp_path / "s.png")!r}, sheet, text={{"onnxstyle": "{{}}"}})
assert read_png_text({str(tmp_path / "s.png")!r}) == {{"onnxstyle": "{{}}"}}
for call in (lambda: lbfgs(lambda x: (0.0, x, {{}}), rgb, 3), lambda: dis_flow(rgb, rgb)):
    try:
        call()
    except MissingDependencyError as e:
        print("hint:", e)
    else:
        raise AssertionError("ran without its dependency")
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    hints = [ln for ln in r.stdout.splitlines() if ln.startswith("hint:")]
    assert len(hints) == 2
    assert "pip install 'onnxstyle[scipy]'" in hints[0]
    assert "pip install 'onnxstyle[video]'" in hints[1]
