"""Render the README gallery from ../shared/images with the exact CLI commands shown.

    python docs/make_gallery.py [--size 384] [--iterations 300] [--shared ../shared/images]

For each style it runs `onnxstyle stylize` on the Tübingen photo, then writes a
side-by-side strip (content | style | onnxstyle | neural-style reference) to
docs/gallery/, and docs/gallery/README.md with the commands and timings.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
STYLES = {"starry": "starry_night.jpg", "scream": "the_scream.jpg", "shipwreck": "shipwreck.jpg"}


def panel(path: Path, height: int) -> np.ndarray:
    img = cv2.imread(str(path))
    h, w = img.shape[:2]
    return cv2.resize(img, (round(w * height / h), height), interpolation=cv2.INTER_AREA)


def label(img: np.ndarray, text: str) -> np.ndarray:
    out = img.copy()
    cv2.rectangle(out, (0, 0), (out.shape[1], 22), (0, 0, 0), -1)
    cv2.putText(out, text, (6, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=384)
    ap.add_argument("--iterations", type=int, default=300)
    ap.add_argument("--shared", type=Path, default=ROOT.parent / "shared" / "images")
    ap.add_argument("--extra", default="", help="extra stylize flags, e.g. '--style-weight 50'")
    ap.add_argument("--only", default=",".join(STYLES))
    args = ap.parse_args()

    out_dir = ROOT / "docs" / "gallery"
    out_dir.mkdir(parents=True, exist_ok=True)
    content = args.shared / "tubingen.jpg"
    rows = []
    for key in args.only.split(","):
        style = args.shared / STYLES[key]
        out = out_dir / f"tubingen_{key}.png"
        cmd = ["onnxstyle", "stylize", str(content), str(style), "-o", str(out), "--size", str(args.size),
               "--iterations", str(args.iterations), *shlex.split(args.extra)]
        shown = " ".join(shlex.quote(c) for c in cmd).replace(str(args.shared), "../shared/images").replace(str(ROOT) + "/", "")
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "onnxstyle.cli", *cmd[1:], "-q"], check=True)
        wall = time.perf_counter() - t0
        h = 256
        strip = [label(panel(content, h), "content"), label(panel(style, h), "style"), label(panel(out, h), "onnxstyle")]
        ref = args.shared / "reference" / f"tubingen_{key}.png"
        if ref.is_file():
            strip.append(label(panel(ref, h), "neural-style (reference, 512 px)"))
        side = out_dir / f"compare_{key}.jpg"
        cv2.imwrite(str(side), np.hstack(strip), [cv2.IMWRITE_JPEG_QUALITY, 88])
        # Keep the repository small: the full-size result as JPEG, the PNG dropped.
        cv2.imwrite(str(out.with_suffix(".jpg")), cv2.imread(str(out)), [cv2.IMWRITE_JPEG_QUALITY, 90])
        out.unlink()
        rows.append((key, shown, wall, side.name))
        print(f"{key}: {wall:.0f}s", flush=True)

    md = ["# Gallery", "", f"Rendered by `python docs/make_gallery.py --size {args.size} --iterations {args.iterations}"
          + (f" --extra '{args.extra}'" if args.extra else "") + "`; each strip: content | style | onnxstyle | the",
          "neural-style reference from ../shared/images/reference (Lua Torch, 1000 L-BFGS iterations, 512 px).", ""]
    for key, shown, wall, side in rows:
        md += [f"## {key}", "", "```bash", shown.replace(".png", ".png") , "```", "", f"{wall:.0f} s wall on this 2-core machine (other jobs were sharing it; see benchmarks/ for clean timings).", "",
               f"![{key}]({side})", ""]
    (out_dir / "README.md").write_text("\n".join(md))


if __name__ == "__main__":
    main()
