"""A models folder is checked where it runs, once per machine, engine and precision (cached): fp32
against torch autograd's record in the manifest, a reduced precision against this machine's fp32.

On a CPU without native bf16 (the test machine may be one) OpenVINO's bf16 is made selectable by
reporting native bf16; OpenVINO then computes fp32 for it, so the bf16 path is exercised with a
precision that is exact, and made to fail by corrupting its evaluations."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from onnxstyle.errors import DeviceError, ModelsError
from onnxstyle.export import validate as v
from onnxstyle.runtime import backends, cache
from onnxstyle.runtime import selfcheck as sc
from onnxstyle.runtime.engine import Engine
from onnxstyle.runtime.settings import EngineConfig

OV_FP32 = EngineConfig(device="openvino", precision="fp32")
OV_BF16 = EngineConfig(device="openvino", precision="bf16")
OV_AUTO = EngineConfig(device="openvino")
ORT_FP32 = EngineConfig(device="cpu", precision="fp32")


@pytest.fixture(autouse=True)
def _compile_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The check's compiles cached, so that each test's check of a copy loads them."""
    monkeypatch.setattr(sc, "CACHE_COMPILES", True)


@pytest.fixture()
def own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("ONNXSTYLE_CACHE", str(root))
    monkeypatch.delenv(sc.ENV, raising=False)
    return root


@pytest.fixture()
def fresh(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The session's cache (its compiled models stay warm) without any verdict, before and after;
    a verdict made to fail is for a copy of the export, never for the session's own folders."""
    monkeypatch.delenv(sc.ENV, raising=False)
    shutil.rmtree(cache.compiled_root() / cache.VERDICTS, ignore_errors=True)
    yield
    shutil.rmtree(cache.compiled_root() / cache.VERDICTS, ignore_errors=True)


@pytest.fixture()
def bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    """OpenVINO's bf16 selectable here (see the module's docstring)."""
    has_ov, native = backends.openvino_info()
    if not has_ov:
        pytest.fail("OpenVINO is part of the cpu extra the tests install")
    if not native:
        monkeypatch.setattr(backends, "openvino_info", lambda: (True, True))


@pytest.fixture()
def evaluations(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Every evaluation the check makes (its ``exact`` flag), counted at the one function it calls."""
    seen: list[bool] = []
    real = sc.evaluate

    def counting(probe, image, targets, exact):  # type: ignore[no-untyped-def]
        seen.append(exact)
        return real(probe, image, targets, exact)

    monkeypatch.setattr(sc, "evaluate", counting)
    return seen


def _copy(models: Path, tmp_path: Path, edit=None) -> Path:  # type: ignore[no-untyped-def]
    folder = tmp_path / "copy"
    shutil.copytree(models, folder)
    if edit is not None:
        path = folder / "manifest.json"
        data = json.loads(path.read_text())
        edit(data)
        path.write_text(json.dumps(data))
    return folder


def _problem_loss(engine: Engine) -> float:
    """The check's problem through ``engine`` as a run evaluates it (its own precision)."""
    p = sc.problem()
    targets = sc._targets(engine, p)
    return engine.loss_grad(p.image, targets).loss


def _record(models: Path) -> dict:  # type: ignore[type-arg]
    return json.loads((models / "manifest.json").read_text())["selfcheck"]


# ---- the record: torch autograd's, on a problem that is the same bits everywhere ---------------------
def test_the_record_is_torch_autograd_on_the_problem(caffe_export: Path, caffe_weights) -> None:  # type: ignore[no-untyped-def]
    from onnxstyle.reference.vgg import (
        VGG19,
        reference_features,
        reference_loss_and_grad,
    )
    from onnxstyle.spec import LossSpec

    p = sc.problem()
    # The generator is integer arithmetic and float32 products: these bytes on every machine.
    assert hashlib.sha256(p.image.tobytes() + p.content.tobytes() + p.style.tobytes()).hexdigest()[:16] == "f2bb62bff8273600"
    spec = LossSpec()
    model = VGG19(caffe_weights, last=spec.deepest).eval()
    with torch.no_grad():
        ct = reference_features(model, spec, torch.from_numpy(p.content))
        st = reference_features(model, spec, torch.from_numpy(p.style))
    targets = {k: t for k, t in ct.items() if k.startswith("content_")}
    targets.update({k: t for k, t in st.items() if k.startswith("gram_")})
    targets["guide"] = torch.ones(1, 1, *p.size)
    targets.update({k: torch.from_numpy(a) for k, a in v.no_temporal_inputs(*p.size).items()})
    loss, grad, _ = reference_loss_and_grad(model, spec, torch.from_numpy(p.image), targets)
    rec = _record(caffe_export)
    assert rec["loss"] == pytest.approx(loss, rel=1e-6)
    assert sc.digest_error(sc.digest(grad.numpy()), rec["grad"]) < 1e-6
    # The rule travels with the record: the validator's constants, which the runtime repeats.
    assert (rec["slack"], rec["loss_slack"]) == (v.BF16_SLACK, v.BF16_LOSS_SLACK) == (sc.SLACK, sc.LOSS_SLACK)
    assert rec["tolerance"] == {"fp32": v.LIMITS["fp32"][0], "openvino fp32": v.LIMITS["openvino fp32"][0]} == sc.FP32_TOL
    assert len(rec["bf16_draws"]) == v.SELFCHECK_DRAWS and all(0 < d["grad_err"] < 0.5 for d in rec["bf16_draws"])


# ---- (1) once, then cached ---------------------------------------------------------------------
@pytest.mark.parametrize("config", [ORT_FP32, OV_FP32], ids=["onnxruntime", "openvino"])
def test_first_engine_checks_and_stores_the_second_does_not(
    caffe_export: Path, own_cache: Path, evaluations: list[bool], config: EngineConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sc, "CACHE_COMPILES", False)  # as it runs outside tests
    engine = Engine(caffe_export, config)
    p = sc.problem(height=40, width=56)  # a run of another size than the check's
    targets = sc._targets(engine, p)  # fp32 targets are not a run at the engine's precision: no check yet
    assert evaluations == [] and engine.checked is None
    engine.loss_grad(p.image, targets)  # the first loss evaluation checks first
    assert evaluations == [True] and engine.checked.ok and not engine.checked.cached
    assert len(list((cache.compiled_root() / cache.VERDICTS).glob("*.json"))) == 1
    if config.device == "openvino":
        # The check's size was compiled for the check alone: closed after it, and never cached.
        assert {k[2:] for k in engine._runners} == {(40, 56, 1)}
        assert len(list(cache.compiled_root().rglob("*.blob"))) == 2  # the run's two, none of the check's
    else:  # the engine computes torch autograd's loss, recorded at export (OpenVINO's: below)
        assert _problem_loss(engine) == pytest.approx(_record(caffe_export)["loss"], rel=sc.FP32_TOL["fp32"])

    again = Engine(caffe_export, config)
    assert again.self_check().ok and again.checked.cached
    assert evaluations == [True]  # not evaluated again


def test_bf16_is_checked_against_this_machines_fp32_once(caffe_export: Path, fresh: None, evaluations: list[bool], bf16: None) -> None:
    engine = Engine(caffe_export, OV_BF16)
    verdict = engine.self_check()
    assert verdict.ok and engine.choice.precision == "bf16"
    # fp32 on the problem, the problem in bf16, then each nudged image in fp32 and in bf16.
    assert evaluations == [True, False] + [True, False] * sc.NUDGED_DRAWS
    assert verdict.stats["recorded_draws"] == v.SELFCHECK_DRAWS and verdict.stats["limits"]["grad_err"] > 0
    fp32 = Engine(caffe_export, OV_FP32)  # the fp32 verdict came with bf16's
    assert fp32.self_check().cached and Engine(caffe_export, OV_BF16).self_check().cached
    assert len(evaluations) == 2 + 2 * sc.NUDGED_DRAWS


# ---- (2) fp32 against the record ------------------------------------------------------------------
def test_a_tampered_record_is_an_fp32_mismatch(caffe_export: Path, fresh: None, tmp_path: Path) -> None:
    def tamper(m: dict) -> None:  # type: ignore[type-arg]
        m["selfcheck"]["loss"] *= 1.05  # as an engine 5% off would look

    folder = _copy(caffe_export, tmp_path, tamper)
    for config in (ORT_FP32, OV_FP32):
        engine = Engine(folder, config)
        with pytest.raises(DeviceError, match=r"where torch gave .* \(rel err 4\.\de-02 > 1e-0\d\)") as e:
            _problem_loss(engine)
        assert e.value.exit_code == 8 and "\n" not in str(e.value) and "choose another --device" in str(e.value)
        with pytest.raises(DeviceError):  # the failure is remembered too, and refused again
            Engine(folder, config).self_check()


def test_the_cli_refuses_a_copy_that_computes_wrong_in_one_line(caffe_export: Path, fresh: None, tmp_path: Path) -> None:
    """The check is on for every command: stylize from a copy whose record says another loss
    ends with exit 8 and one line, before any image is written."""
    import subprocess
    import sys

    from helpers import DATA, cli_env

    def tamper(m: dict) -> None:  # type: ignore[type-arg]
        m["selfcheck"]["loss"] *= 1.05

    folder, out = _copy(caffe_export, tmp_path, tamper), tmp_path / "o.png"
    r = subprocess.run([sys.executable, "-m", "onnxstyle.cli", "stylize", str(DATA / "tubingen.png"), str(DATA / "starry_night.png"),
                        "-o", str(out), "--models", str(folder), "--size", "48", "--iterations", "2", "--device", "cpu", "-q"],
                       capture_output=True, text=True, env=cli_env(tmp_path / "cache"), timeout=300)
    assert r.returncode == 8, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "does not compute this models folder as exported" in r.stderr
    assert not out.exists()


def test_a_corrupt_copy_is_the_folders_fault(caffe_export: Path, fresh: None, tmp_path: Path) -> None:
    folder = _copy(caffe_export, tmp_path)
    weights = folder / "weights.bin"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 4096] = b"\x7f" * 4096  # same size: past the manifest's byte check
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelsError, match=r"weights.bin differs from the export .* copy the folder again") as e:
        Engine(folder, ORT_FP32).self_check()
    assert e.value.exit_code == 5


def test_a_wrong_backward_kernel_is_caught_though_the_loss_is_right(caffe_export: Path, fresh: None, tmp_path: Path) -> None:
    from test_foundation import _scale_initializer

    folder = _copy(caffe_export, tmp_path)
    _scale_initializer(folder / "loss_grad.onnx", "conv4_1_wT", 1.2)  # the adjoint's kernel: the loss is untouched
    engine = Engine(folder, ORT_FP32)
    with pytest.raises(ModelsError, match=r"loss_grad.onnx differs from the export"):
        engine.self_check()
    fp32 = sc.Verdict.from_dict(cache.read_verdict(sc.key(engine, "fp32")))  # type: ignore[arg-type]
    assert not fp32.ok and "gradient differs from torch's by 2.0e-01" in fp32.reason
    assert fp32.stats["loss_err"] < 1e-5


# ---- (3) a reduced precision that fails -------------------------------------------------------------
@pytest.fixture()
def broken_bf16(monkeypatch: pytest.MonkeyPatch, bf16: None) -> list[bool]:
    """bf16 evaluations whose gradient is 30% too large, as a wrong kernel would make it."""
    seen: list[bool] = []
    real = sc.evaluate

    def broken(probe, image, targets, exact):  # type: ignore[no-untyped-def]
        seen.append(exact)
        out = real(probe, image, targets, exact)
        if not exact:
            out.grad = out.grad * np.float32(1.3)
        return out

    monkeypatch.setattr(sc, "evaluate", broken)
    return seen


def test_auto_falls_back_to_fp32_with_one_warning(caffe_export: Path, fresh: None, tmp_path: Path, broken_bf16: list[bool], caplog: pytest.LogCaptureFixture) -> None:
    folder = _copy(caffe_export, tmp_path)
    engine = Engine(folder, OV_AUTO)
    assert engine.choice.precision == "bf16"
    with caplog.at_level(logging.WARNING, logger="onnxstyle.selfcheck"):
        loss = _problem_loss(engine)
    assert engine.choice.precision == "fp32" and engine.provider == "OpenVINO CPU fp32"
    (line,) = [r.getMessage() for r in caplog.records]
    assert "OpenVINO CPU bf16 failed this machine's check" in line and "running fp32 instead" in line and "\n" not in line
    assert loss == pytest.approx(_record(caffe_export)["loss"], rel=sc.FP32_TOL["openvino fp32"])  # the run goes on, correct
    assert not [k for k in engine._runners if k[1] == "bf16"]

    caplog.clear()
    n = len(broken_bf16)
    again = Engine(folder, OV_AUTO)
    with caplog.at_level(logging.WARNING, logger="onnxstyle.selfcheck"):
        again.self_check()
    assert again.choice.precision == "fp32" and len(broken_bf16) == n and len(caplog.records) == 1  # from the stored verdict


def test_explicit_bf16_that_fails_is_a_device_error(caffe_export: Path, fresh: None, tmp_path: Path, broken_bf16: list[bool]) -> None:
    folder = _copy(caffe_export, tmp_path)  # a folder of its own: no stored verdict to go by
    engine = Engine(folder, OV_BF16)
    with pytest.raises(DeviceError, match=r"--precision bf16 is not usable .*\(gradient max err .*; use --precision fp32") as e:
        _problem_loss(engine)
    assert e.value.exit_code == 8 and "\n" not in str(e.value)
    n = len(broken_bf16)
    # Never run unchecked: the engine, and the next one, refuse again (from the stored verdict).
    for again in (engine, Engine(folder, OV_BF16)):
        with pytest.raises(DeviceError, match="--precision bf16 is not usable"):
            again.self_check()
    assert len(broken_bf16) == n


def test_an_older_export_gets_the_reduced_precision_part_only(caffe_export: Path, fresh: None, tmp_path: Path, broken_bf16: list[bool]) -> None:
    folder = _copy(caffe_export, tmp_path, lambda m: m.pop("selfcheck"))
    with pytest.raises(DeviceError, match="gradient max err"):  # held to this machine's draws alone
        Engine(folder, OV_BF16).self_check()
    fp32 = Engine(folder, OV_FP32).self_check()  # stored by bf16's check
    assert fp32.ok and fp32.cached and "no record" in fp32.reason


# ---- (4) a cache that cannot be written -------------------------------------------------------------
def test_an_unwritable_cache_checks_every_time_and_runs(caffe_export: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, evaluations: list[bool]) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder would be")
    monkeypatch.setenv("ONNXSTYLE_CACHE", str(blocker))
    monkeypatch.delenv(sc.ENV, raising=False)
    for n in (1, 2):
        engine = Engine(caffe_export, ORT_FP32)
        assert _problem_loss(engine) == pytest.approx(_record(caffe_export)["loss"], rel=sc.FP32_TOL["fp32"])
        assert engine.checked.ok and len(evaluations) == n  # nothing stored: checked again


def test_recheck_and_cache_clear_drop_the_verdict(caffe_export: Path, own_cache: Path, evaluations: list[bool], monkeypatch: pytest.MonkeyPatch) -> None:
    Engine(caffe_export, ORT_FP32).self_check()
    monkeypatch.setenv(sc.ENV, "recheck")
    Engine(caffe_export, ORT_FP32).self_check()
    monkeypatch.delenv(sc.ENV)
    assert Engine(caffe_export, ORT_FP32).self_check().cached and len(evaluations) == 2
    cache.clear()
    assert not Engine(caffe_export, ORT_FP32).self_check().cached and len(evaluations) == 3
    monkeypatch.setenv(sc.ENV, "off")
    assert Engine(caffe_export, ORT_FP32).self_check() is None and len(evaluations) == 3
