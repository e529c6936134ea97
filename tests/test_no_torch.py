"""The runtime and the CLI never need torch: statically, and in a process where importing it fails."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import cv2

import onnxstyle
from helpers import DATA, cli_env

PKG = Path(onnxstyle.__file__).parent
# Everything but models/ and export/ (which need torch by design).
TORCH_FREE = sorted(p for p in PKG.rglob("*.py") if p.relative_to(PKG).parts[0] not in ("reference", "export"))

BLOCK = """
import sys
class _NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is blocked in this test")
        return None
sys.meta_path.insert(0, _NoTorch())
"""


def _module_level_imports(tree: ast.Module) -> list[str]:
    names: list[str] = []

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, ast.Import):
                names.extend(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                names.append(node.module or "")
            elif isinstance(node, (ast.If, ast.Try, ast.With)):
                visit(getattr(node, "body", []))
                visit(getattr(node, "orelse", []))
                visit(getattr(node, "finalbody", []))
                for h in getattr(node, "handlers", []):
                    visit(h.body)

    visit(tree.body)
    return names


def test_no_module_level_torch_import() -> None:
    for path in TORCH_FREE:
        imports = _module_level_imports(ast.parse(path.read_text()))
        bad = [m for m in imports if m == "torch" or m.startswith("torch.") or ".reference" in m or ".export" in m or m in ("reference", "export")]
        assert not bad, f"{path.name} imports {bad} at module level"


def _all_imports(tree: ast.Module) -> list[str]:
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.extend(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            names.append(("." * node.level) + (node.module or ""))
    return names


def test_runtime_never_imports_export_nor_torch_anywhere() -> None:
    """Not even lazily inside a function: auto-export lives outside runtime/."""
    files = sorted((PKG / "runtime").rglob("*.py"))
    assert len(files) > 5
    for path in files:
        for m in _all_imports(ast.parse(path.read_text())):
            bare = m.lstrip(".")
            assert not (bare == "torch" or bare.startswith("torch.")), f"{path.name} imports {m}"
            assert "export" not in bare.split(".") and "reference" not in bare.split("."), f"{path.name} imports {m}"


def test_contract_is_neutral_ground() -> None:
    """The folder contract imports neither side, so both sides can import it."""
    imports = _all_imports(ast.parse((PKG / "exportdir.py").read_text()))
    assert not [m for m in imports if "runtime" in m or "export" in m or "torch" in m or "onnxruntime" in m], imports


def test_blocker_really_blocks() -> None:
    r = subprocess.run([sys.executable, "-c", BLOCK + "import torch"], capture_output=True, text=True)
    assert r.returncode != 0 and "torch is blocked" in r.stderr


def test_whole_stylization_with_torch_unimportable(caffe_export: Path, tmp_path: Path) -> None:
    out = tmp_path / "o.png"
    code = BLOCK + f"""
sys.argv = ["onnxstyle", "stylize", {str(DATA / 'tubingen.png')!r}, {str(DATA / 'starry_night.png')!r},
            "-o", {str(out)!r}, "--models", {str(caffe_export)!r}, "--size", "48", "--iterations", "4"]
from onnxstyle.cli import main
try:
    main()
finally:
    assert not any(m == "torch" or m.startswith("torch.") for m in sys.modules), "torch got imported"
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=cli_env(tmp_path / "cache"), timeout=300)
    assert r.returncode == 0, r.stderr
    assert cv2.imread(str(out)).shape == (36, 48, 3)
    assert "torch got imported" not in r.stderr


def test_without_torch_and_without_models_says_how_to_export(tmp_path: Path) -> None:
    code = BLOCK + f"""
sys.argv = ["onnxstyle", "stylize", {str(DATA / 'tubingen.png')!r}, {str(DATA / 'starry_night.png')!r}, "-o", {str(tmp_path / 'o.png')!r}]
from onnxstyle.cli import main
main()
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=cli_env(tmp_path / "empty-cache"), timeout=120)
    assert r.returncode == 5
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "onnxstyle export" in lines[0] and "torch is not installed" in lines[0]
    assert "pip install 'onnxstyle[export]'" in lines[0]  # not eaten as console markup
    assert "Traceback" not in r.stderr
