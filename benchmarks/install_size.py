"""Install size (issue 19): a fresh venv per extra, its total size and its largest packages.

    python benchmarks/install_size.py                 # [cpu] and [ort]; writes results/install.{md,json}
    python benchmarks/install_size.py --extras cpu    # just one

Each venv is made with ``python3 -m venv`` and ``pip install "<repo>[extra]"`` (pip, setuptools
and the interpreter's links included in the total, as a user's venv has them). Sizes are disk
usage as ``du -sm`` reports it, in MiB, the figure CI holds [cpu] to (350 at most; .ci/run).
Needs a package index (or pip's cache) and a few minutes; nothing else.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
LIMIT_MB = 350  # issue 19: the lean [cpu] install
# Before issue 19 (commit 3ec29aa), [cpu] brought onnxruntime and OpenVINO, and the base opencv and
# scipy: a fresh [cpu] venv was 704 MB (openvino 180, opencv 153, scipy 143, onnxruntime 78, numpy 73).
BEFORE = "704 MB at 3ec29aa (openvino 180, opencv 153, scipy 143, onnxruntime 78, numpy 73)"
# Folders in site-packages that belong to one distribution under another name.
ALIASES = {"PIL": "pillow", "cv2": "opencv", "opencv_python_headless": "opencv"}


def du_mb(path: Path) -> int:
    return int(subprocess.run(["du", "-sm", str(path)], capture_output=True, text=True, check=True).stdout.split()[0])


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "a CPU")
    except OSError:
        return platform.processor() or "a CPU"


def measure(extra: str, folder: Path, top: int) -> dict[str, object]:
    """Build the venv for ``extra`` under ``folder``; its size, its top packages, its versions."""
    venv = folder / extra
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = venv / "bin" / "pip"
    t0 = time.perf_counter()
    subprocess.run([str(pip), "install", "-q", f"{ROOT}[{extra}]"], check=True)
    seconds = time.perf_counter() - t0
    site = next((venv / "lib").glob("python3*/site-packages"))
    # A package's files and its bundled libraries (numpy.libs, pillow.libs...) counted together.
    sizes: dict[str, int] = {}
    for entry in site.iterdir():
        if entry.name.endswith((".dist-info", ".pth")) or entry.name == "__pycache__":
            continue
        name = entry.name.removesuffix(".libs").split(".")[0]
        name = ALIASES.get(name, name)
        sizes[name] = sizes.get(name, 0) + du_mb(entry)
    listed = subprocess.run([str(pip), "list", "--format", "json"], capture_output=True, text=True, check=True)
    return {
        "extra": extra,
        "command": f'python3 -m venv v && v/bin/pip install "onnxstyle[{extra}]"',
        "total_mb": du_mb(venv),
        "packages_mb": dict(sorted(sizes.items(), key=lambda kv: -kv[1])[:top]),
        "versions": {p["name"]: p["version"] for p in json.loads(listed.stdout)},
        "install_s": round(seconds, 1),
    }


def markdown(rows: list[dict[str, object]], machine: str, date: str) -> str:
    lines = [
        "# Install size",
        "",
        f"Fresh venvs, {date}, on {machine}. `python benchmarks/install_size.py` (one command) built",
        "and measured them: `python3 -m venv` then `pip install \"<repo>[extra]\"`; sizes are `du -sm`",
        f"(MiB) of the whole venv, pip and setuptools included. CI fails [cpu] above {LIMIT_MB} MB.",
        f"Before issue 19, [cpu] was {BEFORE}.",
        "",
        "| extra | venv total (MB) | largest packages (MB) |",
        "| --- | --- | --- |",
    ]
    for r in rows:
        pk = ", ".join(f"{k} {v}" for k, v in r["packages_mb"].items())  # type: ignore[union-attr]
        lines.append(f"| `[{r['extra']}]` | {r['total_mb']} | {pk} |")
    lines += ["", "Versions installed:", ""]
    for r in rows:
        v = r["versions"]
        keep = ("numpy", "pillow", "openvino", "onnxruntime", "typer", "rich")
        lines.append(f"- `[{r['extra']}]`: " + ", ".join(f"{k} {v[k]}" for k in keep if k in v))  # type: ignore[index,operator]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--extras", default="cpu,ort", help="comma-separated extras, one venv each")
    ap.add_argument("--top", type=int, default=8, help="packages listed per venv")
    ap.add_argument("--out", type=Path, default=RESULTS, help="folder for install.md and install.json")
    args = ap.parse_args()
    machine = f"{cpu_name()} ({platform.machine()}, {platform.system()}), Python {platform.python_version()}"
    date = time.strftime("%Y-%m-%d")
    with tempfile.TemporaryDirectory(prefix="onnxstyle-install-") as tmp:
        rows = [measure(e.strip(), Path(tmp), args.top) for e in args.extras.split(",") if e.strip()]
    for r in rows:
        print(f"[{r['extra']}]: {r['total_mb']} MB  {r['packages_mb']}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "install.json").write_text(json.dumps({"machine": machine, "date": date, "venvs": rows}, indent=2) + "\n")
    (args.out / "install.md").write_text(markdown(rows, machine, date))
    print(f"wrote {args.out / 'install.md'}")


if __name__ == "__main__":
    main()
