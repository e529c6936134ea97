"""What one export for every command costs: guided graphs (an all-ones guide) against plain ones.

Since format 3 every export is guided, so that masks work from the default export without torch;
with an all-ones guide the guided loss is the plain one. This measures what that costs per
evaluation: the same run (Tübingen × The Starry Night, one stage, content init) from a plain
export (``LossSpec(guided=False)``, what format 1 folders held) and from the default guided one,
on each backend, and checks that both give the same loss.

    python benchmarks/guided.py                 # about 3 minutes on 2 cores
    python benchmarks/guided.py --quick --out /tmp/g

Writes <out>/guided.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def per_eval(folder: Path, device: str, size: int, evals: int) -> dict[str, Any]:
    from onnxstyle.runtime.stylizer import Stylizer
    from onnxstyle.runtime.image_io import load_image
    from onnxstyle.runtime.settings import EngineConfig, RunSettings

    c = load_image(ROOT / "onnxstyle" / "data" / "tubingen.jpg", size)[0]
    s = load_image(ROOT / "onnxstyle" / "data" / "starry_night.jpg", size)[0]
    st = Stylizer(folder, EngineConfig(device=device))
    stamps: list[float] = []
    losses: list[float] = []

    def cb(it: Any) -> None:
        stamps.append(time.perf_counter())
        losses.append(it.loss)

    st.run(c, [s], RunSettings(size=size, scales=(size,), iterations=evals, tile="off"), callback=cb)
    return {"provider": st.engine.provider, "s_per_eval": statistics.median(np.diff(stamps)), "first_loss": losses[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--evals", type=int, default=20)
    ap.add_argument("--devices", default="cpu,auto")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--quick", action="store_true", help="smoke run: 64 px, 4 evaluations")
    args = ap.parse_args()
    from speed import machine  # noqa: E402

    from onnxstyle.export.exporter import export
    from onnxstyle.runtime.providers import physical_cores
    from onnxstyle.spec import LossSpec
    from onnxstyle.exportdir import ExportSettings

    size, evals = (64, 4) if args.quick else (args.size, args.evals)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folders = {
            "plain": export(ExportSettings(LossSpec(guided=False)), Path(tmp) / "plain", validate=False).folder,
            "guided": export(ExportSettings(), Path(tmp) / "guided", validate=False).folder,
        }
        for device in args.devices.split(","):
            row: dict[str, Any] = {"device": device}
            for form, folder in folders.items():
                row[form] = per_eval(folder, device, size, evals)
                print(device, form, row[form], flush=True)
            row["ratio"] = row["guided"]["s_per_eval"] / row["plain"]["s_per_eval"]
            row["loss_rel_diff"] = abs(row["guided"]["first_loss"] - row["plain"]["first_loss"]) / row["plain"]["first_loss"]
            rows.append(row)
    res = {"machine": machine(physical_cores())["cpu"], "load": os.getloadavg(), "size": size, "evals": evals, "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "guided.json").write_text(json.dumps(res, indent=1) + "\n")
    lines = [
        "# Guided graphs (one export for every command) against plain ones", "",
        f"{res['machine']}; {size} px (longest side), one stage, median time per evaluation over {evals} evaluations;"
        f" load average at the end {res['load'][0]:.2f}. The guided run feeds an all-ones guide.", "",
        "| backend | plain | guided | guided / plain | first loss, relative difference |", "| --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['plain']['provider']} | {r['plain']['s_per_eval'] * 1000:.0f} ms | {r['guided']['s_per_eval'] * 1000:.0f} ms"
            f" | {r['ratio']:.3f} | {r['loss_rel_diff']:.1e} |"
        )
    md = "\n".join(lines) + "\n"
    (args.out / "guided.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
