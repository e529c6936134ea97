"""Run plans and the memory estimate (issues 10 and 11): the estimate against measured peaks,
tiles chosen by the budget, the dry-run, and refusals before anything is allocated."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from onnxstyle.runtime.plan import check_plan, plan_run
from onnxstyle.runtime.settings import RunSettings
from onnxstyle.spec import LossSpec

from helpers import DATA, cli_env

MEASURED = Path(__file__).parents[1] / "benchmarks" / "results" / "memory.json"
CONTENT, STYLE = DATA / "tubingen.png", DATA / "starry_night.png"


def _backend(provider: str) -> tuple[str, str]:
    if provider.startswith("OpenVINO"):
        return "openvino", provider.split()[-1]
    return "onnxruntime", provider.split()[-1]


def test_estimate_brackets_the_measured_peaks() -> None:
    """measured peak ≤ estimate ≤ 1.3 × measured, for every size and backend the memory
    benchmark measured (whole-process VmHWM of `onnxstyle stylize`, benchmarks/memory.py)."""
    res = json.loads(MEASURED.read_text())
    checked = 0
    for row in res["rows"]:
        h, w = row["hw"]
        for o in row["ours"].values():
            backend, precision = _backend(o["phases"]["provider"])
            s = RunSettings(size=row["size"], scales=(row["size"],), iterations=res["evals"])
            est = plan_run(LossSpec(), (h, w), s, backend, precision, None).peak
            assert o["peak"] <= est <= 1.3 * o["peak"], (row["size"], backend, o["peak"] / 2**20, est / 2**20)
            checked += 1
    assert checked >= 8  # four sizes from 256 to 1536 px, two backends


def test_auto_tiles_only_when_the_budget_needs_it() -> None:
    s = RunSettings(size=2048, scales=(1024, 2048), iterations=10)
    roomy = plan_run(LossSpec(), (1536, 2048), s, "openvino", "bf16", 64 * 2**30)
    assert all(st.tiles is None for st in roomy.stages)
    tight = plan_run(LossSpec(), (1536, 2048), s, "openvino", "bf16", 3 * 2**30)
    assert tight.stages[0].tiles is None  # 1024 px fits as it is
    big = tight.stages[1]
    assert big.tiles is not None and big.estimate.total <= 3 * 2**30
    assert big.tiles.inner % 16 == 0 and big.tiles.halo == 96
    check_plan(tight)  # fits: no error
    off = plan_run(LossSpec(), (1536, 2048), s.replace(tile="off"), "openvino", "bf16", 3 * 2**30)
    with pytest.raises(Exception, match="GiB"):
        check_plan(off)


def test_large_optimizer_state_shrinks_the_history_then_uses_adam() -> None:
    s = RunSettings(size=4096, scales=(4096,), iterations=50)
    plan = plan_run(LossSpec(), (3072, 4096), s, "openvino", "bf16", 6 * 2**30)
    st = plan.stages[0]
    assert st.tiles is not None and st.estimate.total <= 6 * 2**30
    assert (st.optimizer == "lbfgs" and st.history < 20) or st.optimizer == "adam"



def test_fp32_fallback_only_where_fp32_fits_the_budget() -> None:
    """A bf16 stall may go on in fp32 only where the stage's fp32 estimate fits: fp32 tile
    graphs need about twice the memory, which would break --max-memory mid-run."""
    s = RunSettings(size=2048, scales=(1024, 2048), iterations=40)
    plan = plan_run(LossSpec(), (1536, 2048), s, "openvino", "bf16", 6 * 2**30)
    small, big = plan.stages
    assert small.tiles is None and small.fp32_fallback
    fp32 = plan_run(LossSpec(), (1536, 2048), s.replace(tile=big.tiles.inner), "openvino", "fp32", None).stages[1]
    assert big.tiles is not None and fp32.estimate.total > 6 * 2**30 and not big.fp32_fallback
    roomy = plan_run(LossSpec(), (1536, 2048), s, "openvino", "bf16", 64 * 2**30)
    assert all(st.fp32_fallback for st in roomy.stages)



def test_the_plan_counts_the_inputs_the_run_will_hold(tmp_path: Path) -> None:
    """From the headers alone, the plan counts the inputs as load_images() decodes them (the
    content at the output size, styles at their side, masks, the init image, colour copies):
    the bytes it predicts are those of the arrays then held, for a coarse-to-fine run whose
    first stage is far smaller than what it holds."""
    from onnxstyle.commands.stylize import StylizeJob
    from onnxstyle.runtime.memory import inputs_bytes

    class Recorder:
        def plan(self, hw: tuple[int, int], settings: RunSettings, inputs: int | None = None, styles: object = ()) -> int | None:
            return inputs

    for colour, init, masks in ((None, False, []), ("luminance", True, [STYLE])):
        s = RunSettings(size=700, scales=(200, 700), iterations=5, preserve_color=colour)
        job = StylizeJob(CONTENT, [STYLE, CONTENT], tmp_path / "o.png", s, masks=masks, init=CONTENT if init else None)
        predicted = job.plan(Recorder())
        job.load_images()
        x = job.loaded
        arrays = [x.content, *x.styles, *x.masks] + ([x.init] if init else [])
        held = sum(a.nbytes for a in arrays) + (sum(a.nbytes for a in [x.content, *x.styles]) if colour else 0)
        assert predicted == held
        plan = plan_run(LossSpec(), job.output_size(), s, "openvino", "bf16", None, predicted)
        small = plan_run(LossSpec(), job.output_size(), s, "openvino", "bf16", None)
        assert plan.stages[0].estimate.parts["images"] - small.stages[0].estimate.parts["images"] > 0.8 * predicted
    assert inputs_bytes((10, 20), [(5, 5)]) == 12 * 200 + 12 * 25


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "onnxstyle.cli", "stylize", *args], capture_output=True, text=True, env=cli_env(), timeout=120)


def test_dry_run_prints_the_plan_and_writes_nothing(caffe_export: Path, tmp_path: Path) -> None:
    out = tmp_path / "o.png"
    r = cli(str(CONTENT), str(STYLE), "-o", str(out), "--models", str(caffe_export), "--size", "2048",
            "--scales", "1024,2048", "--max-memory", "3.5G", "--dry-run", "--precision", "fp32")
    assert r.returncode == 0, r.stderr
    # fp32 on every CPU (a bf16 CPU's estimates are smaller): 1024 px fits 3.5 GiB, 2048 px does not.
    assert re.search(r"memory budget: 3584 MiB; estimated peak: \d+ MiB", r.stdout)
    assert re.search(r"stage 1/2: 1024x768, 300 evaluations, untiled", r.stdout)
    assert re.search(r"stage 2/2: 2048x1536, 300 evaluations, \d+ tiles \(\d+x\d+\) of \d+ px \+ 96 px halo", r.stdout)
    assert "device: " in r.stdout and not out.exists()


def test_a_size_that_cannot_fit_is_refused_up_front(caffe_export: Path, tmp_path: Path) -> None:
    out = tmp_path / "o.png"
    r = cli(str(CONTENT), str(STYLE), "-o", str(out), "--models", str(caffe_export), "--size", "2048",
            "--scales", "2048", "--max-memory", "600M", "--tile", "off")
    assert r.returncode == 11 and "Traceback" not in r.stderr
    assert "GiB" in r.stderr and "--tile auto" in r.stderr and not out.exists()
    r = cli(str(CONTENT), str(STYLE), "-o", str(out), "--models", str(caffe_export), "--size", "2048", "--max-memory", "200M", "--dry-run")
    assert r.returncode == 11 and "estimated peak" in r.stdout  # the dry-run shows the plan, then refuses it
