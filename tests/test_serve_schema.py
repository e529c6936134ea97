"""The service describes itself (/openapi.json) and keeps its word: schemathesis, driven by
that schema, fuzzes a real `onnxstyle serve` on loopback and finds no 5xx, no undeclared
status and no body off its declared schema. Then hostile requests (oversized, slow, stalled
or malformed bodies, deep or huge settings, unknown fields, non-UTF-8 file names, racing
DELETE and GET): each gets a JSON error, the server stays up, another job is untouched.

All traffic is to 127.0.0.1, bounded in count and time; jobs are 32-64 px of 2-4 evaluations.
"""

from __future__ import annotations

import collections
import concurrent.futures
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import cv2
import httpx
import numpy as np
import pytest

from serve_helpers import CONTENT, STYLE, Server, files, start_server, submit, wait_status

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, Phase, given, settings, strategies as st  # noqa: E402
from schemathesis import checks as sc  # noqa: E402
from schemathesis.generation import GenerationMode  # noqa: E402

TOKEN = "schema-token-0123"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MAX_SIZE, MAX_EVALS, BODY_TIMEOUT = 64, 4, 3
SMALL = {"size": 32, "iterations": 2}
EXAMPLES = 15  # per operation and generation mode: ~300 requests in all
CHECKS = [
    sc.not_a_server_error, sc.status_code_conformance, sc.content_type_conformance, sc.response_schema_conformance,
    sc.response_headers_conformance, sc.negative_data_rejection,
]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(caffe_export: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    data = tmp_path_factory.mktemp("serve-schema") / "data"
    args = ["--workers", "1", "--threads", "1", "--queue", "6", "--max-size", str(MAX_SIZE), "--max-evaluations", str(MAX_EVALS),
            "--max-upload", "1", "--body-timeout", str(BODY_TIMEOUT), "--memory-budget", "2500"]
    srv = start_server(caffe_export, data, *args, token=TOKEN)
    yield srv
    assert srv.stop() == 0, srv.log_text()
    assert "Traceback" not in srv.log_text(), srv.log_text()


@pytest.fixture(scope="module")
def schema(server: Server) -> Any:
    tiny = cv2.imencode(".png", np.full((24, 32, 3), 120, np.uint8))[1].tobytes()
    # Real images half the time, so that jobs are accepted and run, and junk the other half.
    images = st.sampled_from([CONTENT.read_bytes(), STYLE.read_bytes(), tiny]) | st.binary(max_size=64)
    schemathesis.openapi.media_type("image/png", images, aliases=["image/jpeg"])
    return schemathesis.openapi.from_url(f"{server.url}/openapi.json")


def _error(r: Any, status: int | tuple[int, ...]) -> str:
    statuses = status if isinstance(status, tuple) else (status,)
    assert r.status_code in statuses, (r.status_code, r.text)
    body = r.json()
    assert list(body) == ["error"] and isinstance(body["error"], str) and "\n" not in body["error"], body
    return str(body["error"])


def test_openapi_json_describes_every_route(server: Server) -> None:
    with server.client(auth=False) as c:
        doc = c.get("/openapi.json").json()
        # No docs pages: theirs load Swagger UI / ReDoc from a CDN, and the service works offline.
        assert c.get("/docs").status_code == 404 and c.get("/redoc").status_code == 404
    ops = {(path, method) for path, item in doc["paths"].items() for method in item}
    assert ops == {("/v1/jobs", "post"), ("/v1/jobs/{job_id}", "get"), ("/v1/jobs/{job_id}", "delete"),
                   ("/v1/jobs/{job_id}/events", "get"), ("/v1/jobs/{job_id}/preview", "get"),
                   ("/v1/jobs/{job_id}/result", "get"), ("/healthz", "get"), ("/metrics", "get")}
    assert doc["components"]["securitySchemes"] == {"HTTPBearer": {"type": "http", "scheme": "bearer",
                                                                    "description": "the server's --token (or $ONNXSTYLE_TOKEN)"}}
    error_ref = {"$ref": "#/components/schemas/ErrorBody"}
    for path, item in doc["paths"].items():
        for method, op in item.items():
            errors = {code: r for code, r in op["responses"].items() if code.startswith(("4", "5"))}
            assert path == "/healthz" or "401" in errors, (path, method)
            for code, r in errors.items():
                assert r["content"] == {"application/json": {"schema": error_ref}}, (path, method, code)
    post = doc["paths"]["/v1/jobs"]["post"]
    assert set(post["responses"]) == {"202", "400", "401", "408", "413", "415", "422", "429"}
    body = post["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert body["required"] == ["content", "style"] and body["properties"]["style"]["maxItems"] == 4
    size = body["properties"]["settings"]["properties"]["size"]["anyOf"][0]
    assert size["maximum"] == MAX_SIZE  # this server's limits, not the defaults


def _fitting(case: Any, size: int, iterations: int) -> None:
    """A style array sent as one blob (schemathesis's media-type strategy replaces the array)
    goes back to a list of one file. Settings that name no size get one this server accepts
    (its preset's default of 512 px is over --max-size): otherwise no fuzzed job would run."""
    body = case.body
    if not isinstance(body, dict):
        return
    if isinstance(body.get("style"), bytes):
        body["style"] = [body["style"]]
    chosen = body.get("settings")
    if isinstance(chosen, dict) and not chosen.get("size") and not chosen.get("scales"):
        chosen.update(size=size, iterations=chosen.get("iterations") or iterations)


def test_fuzzed_requests_keep_to_the_schema(server: Server, schema: Any, capsys: pytest.CaptureFixture[str]) -> None:
    seen: dict[str, collections.Counter[int]] = collections.defaultdict(collections.Counter)
    t0 = time.monotonic()
    for result in schema.get_all_operations():
        op = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            if op.label == "GET /healthz" and mode is GenerationMode.NEGATIVE:
                continue  # no parameters at all: nothing can be made invalid

            @given(case=op.as_strategy(generation_mode=mode), size=st.integers(32, MAX_SIZE), its=st.integers(1, MAX_EVALS))
            @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True, phases=[Phase.explicit, Phase.generate],
                      suppress_health_check=list(HealthCheck))
            def run(case: Any, size: int, its: int) -> None:
                _fitting(case, size, its)
                response = case.call_and_validate(base_url=server.url, headers=AUTH, checks=CHECKS, timeout=30)
                seen[f"{op.label} {mode.value}"][response.status_code] += 1

            run()
    _drained(server)
    with capsys.disabled():
        print(f"\nschema fuzz: {sum(sum(v.values()) for v in seen.values())} requests in {time.monotonic() - t0:.0f} s")
        for label, codes in seen.items():
            print(f"  {label}: {dict(sorted(codes.items()))}")
    assert seen["POST /v1/jobs positive"][202] >= 1, "no fuzzed job was accepted: the fuzz never reached a running job"


def _drained(server: Server, timeout: float = 60.0) -> None:
    """Wait until the fuzzed jobs have run: the next tests' jobs must not meet a full queue."""
    deadline = time.monotonic() + timeout
    with server.client() as c:
        while time.monotonic() < deadline:
            health = c.get("/healthz").json()
            if health["queued"] == 0 and health["running"] == 0:
                return
            time.sleep(0.2)
    raise AssertionError(f"jobs still queued or running after {timeout} s: {health}")


def _validated(server: Server, schema: Any, label: str, **parts: Any) -> Any:
    """One request made by hand, checked by the same checks as the fuzzed ones."""
    op = schema.find_operation_by_label(label)
    assert op is not None, label
    return op.Case(**parts).call_and_validate(base_url=server.url, headers=AUTH, checks=CHECKS, timeout=60)


def test_a_real_job_in_every_state_keeps_to_the_schema(server: Server, schema: Any) -> None:
    """The fuzz meets mostly unknown job ids; here one job is followed through each route."""
    body = {"content": CONTENT.read_bytes(), "style": [STYLE.read_bytes()], "settings": {"size": 32, "iterations": MAX_EVALS}}
    created = _validated(server, schema, "POST /v1/jobs", body=body, media_type="multipart/form-data")
    assert created.status_code == 202, created.text
    job = {"job_id": created.json()["id"]}
    _validated(server, schema, "GET /v1/jobs/{job_id}/result", path_parameters=job)  # 409 (not yet) or 200
    events = _validated(server, schema, "GET /v1/jobs/{job_id}/events", path_parameters=job)
    assert events.status_code == 200 and "event: done" in events.text
    for label in ("GET /v1/jobs/{job_id}", "GET /v1/jobs/{job_id}/preview", "GET /v1/jobs/{job_id}/result"):
        assert _validated(server, schema, label, path_parameters=job).status_code == 200, label
    assert _validated(server, schema, "DELETE /v1/jobs/{job_id}", path_parameters=job).json()["status"] == "deleted"
    assert _validated(server, schema, "GET /v1/jobs/{job_id}", path_parameters=job).status_code == 404
    # A running job cancelled (202 with "cancelling"), and a queued one (200, cancelled).
    with server.client() as c:
        running = submit(c, {"size": 64, "iterations": MAX_EVALS}).json()["id"]
        queued = submit(c, SMALL).json()["id"]
        gone = set()
        for job_id in (queued, running):
            r = _validated(server, schema, "DELETE /v1/jobs/{job_id}", path_parameters={"job_id": job_id})
            assert r.status_code in (200, 202), r.text
            if r.json()["status"] == "deleted":  # the running one may have finished first
                gone.add(job_id)
        for job_id in {queued, running} - gone:
            wait_status(c, job_id, ("cancelled", "done"))
            assert _validated(server, schema, "GET /v1/jobs/{job_id}", path_parameters={"job_id": job_id}).status_code == 200
            _validated(server, schema, "GET /v1/jobs/{job_id}/preview", path_parameters={"job_id": job_id})


def test_size_that_differs_from_the_last_scale_is_refused_as_by_the_cli(server: Server) -> None:
    """Issue 20: {"size": 128, "scales": [64, 96]} ran at 96 px with its style side from 128."""
    with server.client() as c:
        text = _error(submit(c, {"size": 48, "scales": [32, 40], "scale_iterations": [1, 1]}), 422)
        assert text == "settings: --size 48 differs from the last of --scales (40)"
        # Scales alone: the last one is the size (the settings shown, and the style side, use it).
        job = submit(c, {"scales": [32, 40], "scale_iterations": [1, 1]}).json()
        assert (job["width"], job["height"], job["settings"]["size"], job["stages"]) == (40, 30, 40, 2)
        same = submit(c, {"size": 40, "scales": [32, 40], "scale_iterations": [1, 1]})
        assert same.status_code == 202, same.text
        for job_id in (job["id"], same.json()["id"]):
            assert wait_status(c, job_id, ("done", "failed"))["status"] == "done"


def test_too_thin_for_the_network_is_refused_with_the_plans_message(server: Server, caffe_export: Path) -> None:
    """Issue 21: a working size with a side under the deepest layer's stride is refused up front
    (422), with the same line the CLI's plan prints, for the content and for a style."""
    from onnxstyle.exportdir import read_manifest
    from onnxstyle.errors import SizeError
    from onnxstyle.runtime.plan import check_sizes
    from onnxstyle.runtime.settings import preset_run_settings

    thin = cv2.imencode(".png", np.full((35, 160, 3), 128, np.uint8))[1].tobytes()
    spec = read_manifest(caffe_export).spec
    settings = preset_run_settings("gatys", size=64, iterations=1, shape_grid=True)
    with server.client() as c:
        for upload, args in ((files(thin), {}), (files(CONTENT, thin), {"styles": [(35, 160)]})):
            with pytest.raises(SizeError) as want:
                check_sizes(spec, (35, 160) if not args else (72, 96), settings, **args)
            assert _error(submit(c, {"size": 64, "iterations": 1}, upload), 422) == str(want.value)


# --- hostile requests -----------------------------------------------------------------------


def _raw(server: Server, head: bytes, chunks: list[bytes], pause: float = 0.0, read_timeout: float = 30.0) -> tuple[int, bytes]:
    """Send a request byte for byte (a pause between chunks: a slow client); (status, body)."""
    url = urlsplit(server.url)
    with socket.create_connection((url.hostname, url.port), timeout=read_timeout) as s:
        s.sendall(head)
        try:
            for chunk in chunks:
                time.sleep(pause)
                s.sendall(chunk)
        except OSError:  # the server answered and closed before the body ended: read its answer
            pass
        data = b""
        while b"\r\n\r\n" not in data or len(data) < _length(data):
            try:
                more = s.recv(65536)
            except ConnectionResetError:  # what it had sent before the reset is the answer
                break
            if not more:
                break
            data += more
    status = int(data.split(b" ", 2)[1])
    return status, data.split(b"\r\n\r\n", 1)[1]


def _length(data: bytes) -> int:
    head, _, _ = data.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(head) + 4 + int(line.split(b":")[1])
    return 1 << 60  # no length: read until the server closes


def _head(length: int | None, boundary: str | None = "b0undary", extra: str = "") -> bytes:
    kind = "multipart/form-data" + (f"; boundary={boundary}" if boundary else "")
    size = f"Content-Length: {length}\r\n" if length is not None else "Transfer-Encoding: chunked\r\n"
    return (f"POST /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n"
            f"Content-Type: {kind}\r\n{size}{extra}Connection: close\r\n\r\n").encode()


def _part(name: str, data: bytes, filename: bytes | None = None, boundary: str = "b0undary") -> bytes:
    disposition = f'Content-Disposition: form-data; name="{name}"'.encode()
    if filename is not None:
        disposition += b'; filename="' + filename + b'"'
    return f"--{boundary}\r\n".encode() + disposition + b"\r\nContent-Type: image/png\r\n\r\n" + data + b"\r\n"


def _multipart(*parts: bytes, boundary: str = "b0undary") -> bytes:
    return b"".join(parts) + f"--{boundary}--\r\n".encode()


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def _json_error(status: int, body: bytes) -> str:
    parsed = json.loads(body)
    assert list(parsed) == ["error"] and "\n" not in parsed["error"], parsed
    return f"{status} {parsed['error']}"


@pytest.fixture(scope="module")
def bystander(server: Server) -> Iterator[dict[str, Any]]:
    """A finished job that hostile requests must leave exactly as it was."""
    with server.client() as c:
        job = submit(c, SMALL).json()
        done = wait_status(c, job["id"], ("done", "failed"))
        assert done["status"] == "done", done
        result = c.get(f"/v1/jobs/{job['id']}/result").content
    yield {"job": done, "result": result}
    with server.client() as c:
        assert c.get(f"/v1/jobs/{job['id']}").json() == done, "another job's record changed"
        assert c.get(f"/v1/jobs/{job['id']}/result").content == result, "another job's result changed"
        assert c.get("/healthz").json()["status"] == "ok"
    assert server.process.poll() is None
    assert list((server.data / "jobs").glob("*/upload.tmp")) == []


def test_oversized_and_malformed_multipart_bodies(server: Server, bystander: dict[str, Any]) -> None:
    png = CONTENT.read_bytes()
    good = _multipart(_part("content", png, b"c.png"), _part("style", png, b"s.png"))
    over = 2 * 2**20
    cases = {
        "declared too large": (_head(over), [b"x" * 65536]),
        "streamed too large": (_head(None), [_chunk(_part("content", b"", b"c.png")[:-2])] + [_chunk(b"x" * 65536)] * 20),
        "no boundary": (_head(len(good), boundary=None), [good]),
        "other boundary": (_head(len(good), boundary="nope"), [good]),
        "truncated": (_head(len(good)), [good[: len(good) // 2]]),  # then the client goes quiet: 408
        "garbage": (_head(4096), [np.random.default_rng(1).bytes(4096)]),
        "unterminated headers": (_head(40), [b"--b0undary\r\nContent-Disposition: form-da"]),
        "unknown field": (_head(None), [b"%x\r\n%s\r\n0\r\n\r\n" % (len(g := _multipart(_part("content", png, b"c.png"),
                          _part("style", png, b"s.png"), _part("colour", b"red"))), g)]),
        "file as settings": (_head(len(m := _multipart(_part("content", png, b"c.png"), _part("style", png, b"s.png"),
                             _part("settings", b"\xff\xfe{}", b"s.json")))), [m]),
    }
    answers = {}
    for name, (head, chunks) in cases.items():
        status, body = _raw(server, head, chunks)
        answers[name] = _json_error(status, body)
    assert answers["declared too large"].startswith("413 ") and answers["streamed too large"].startswith("413 ")
    assert answers["truncated"].startswith("408 ")
    for name in ("no boundary", "other boundary", "garbage", "unterminated headers"):
        assert answers[name][:3] in ("400", "422"), answers
    assert answers["unknown field"] == "422 unknown form field 'colour': expected content, style and settings"
    assert answers["file as settings"] == "400 settings: not UTF-8 text"


def test_slow_and_stalled_bodies(server: Server, bystander: dict[str, Any]) -> None:
    png = CONTENT.read_bytes()
    body = _multipart(_part("content", png, b"c.png"), _part("style", png, b"s.png"),
                      _part("settings", json.dumps(SMALL).encode()))
    pieces = [body[i : i + len(body) // 8 + 1] for i in range(0, len(body), len(body) // 8 + 1)]
    t0 = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        # A slow client within --body-timeout is served; meanwhile others are answered at once.
        slow = pool.submit(_raw, server, _head(len(body)), pieces, (BODY_TIMEOUT * 0.6) / len(pieces))
        stalled = pool.submit(_raw, server, _head(len(body)), [body[:100]])
        with server.client() as c:
            quick = [c.get("/healthz").elapsed.total_seconds() for _ in range(5)]
        status, answer = slow.result()
        assert status == 202, answer
        stalled_status, stalled_body = stalled.result()
    assert max(quick) < 1.0, quick
    assert _json_error(stalled_status, stalled_body) == f"408 the request body did not arrive within {BODY_TIMEOUT} s (--body-timeout)"
    assert time.monotonic() - t0 < BODY_TIMEOUT + 10
    with server.client() as c:
        assert wait_status(c, json.loads(answer)["id"], ("done", "failed"))["status"] == "done"


def test_settings_deep_or_huge(server: Server, bystander: dict[str, Any]) -> None:
    with server.client() as c:
        assert "nested too deeply" in _error(submit(c, "[" * 50_000), 400)
        deep = '{"style_blend": ' + "[" * 200 + "1" + "]" * 200 + "}"
        assert _error(submit(c, deep), 422).startswith("settings.style_blend")
        assert "over the limit of 64 KB" in _error(submit(c, {"seed": 1, "pad": "x" * 100_000}), 413)
        as_file = files() + [("settings", ("s.json", b" " * 900_000 + b"{}", "application/json"))]
        assert "over the limit of 64 KB" in _error(c.post("/v1/jobs", files=as_file), 413)
        assert "limit of 1 MB" in _error(submit(c, {"pad": "x" * 3 * 2**20}), 413)  # the upload limit first
        assert "known settings" in _error(submit(c, {"size": 32, "colour": "red"}), 422)


@pytest.mark.parametrize(
    "filename",
    [b"\xff\xfe.png", b"caf\xe9.png", "日本.png".encode(), b"a\x00b.png", b"../../etc/passwd", b"x" * 900, b"x" * 5000],
    ids=["invalid-utf8", "latin1", "utf8", "nul", "traversal", "long", "over-header-limit"],
)
def test_file_names_that_are_not_utf8_or_not_names(server: Server, bystander: dict[str, Any], filename: bytes) -> None:
    """File names are never used (inputs are stored by the job's id): every such job is accepted,
    but for a part header over python-multipart's limit, refused as malformed."""
    png = CONTENT.read_bytes()
    body = _multipart(_part("content", png, filename), _part("style", png, filename), _part("settings", json.dumps(SMALL).encode()))
    status, answer = _raw(server, _head(len(body)), [body])
    if len(filename) > 4000:
        assert _json_error(status, answer) == "400 Invalid multipart data."
        return
    assert status == 202, answer
    with server.client() as c:
        job_id = json.loads(answer)["id"]
        assert wait_status(c, job_id, ("done", "failed"))["status"] == "done"
        assert c.delete(f"/v1/jobs/{job_id}").status_code == 200


def test_concurrent_delete_and_get_of_one_job(server: Server, bystander: dict[str, Any]) -> None:
    with server.client() as c:
        job_id = submit(c, SMALL).json()["id"]
        assert wait_status(c, job_id, ("done", "failed"))["status"] == "done"
    paths = [f"/v1/jobs/{job_id}{tail}" for tail in ("", "/result", "/preview", "/events")]
    calls = [("DELETE", paths[0])] * 6 + [("GET", p) for p in paths] * 6

    def call(method_path: tuple[str, str]) -> tuple[str, int, bytes]:
        with server.client() as client:
            r = client.request(*method_path)
            return f"{method_path[0]} {method_path[1].rsplit('/', 1)[-1]}", r.status_code, r.content

    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        outcomes = list(pool.map(call, calls * 2))
    deleted = 0
    for what, status, body in outcomes:
        assert status < 500, (what, status, body)
        if status >= 400:
            assert status == 404, (what, status, body)  # gone (never "not ready": the job was done)
            _json_error(status, body)
        elif what.startswith("DELETE"):
            deleted += json.loads(body) == {"id": job_id, "status": "deleted"}
    assert deleted >= 1
    with server.client() as c:
        _error(c.get(f"/v1/jobs/{job_id}"), 404)
    assert not (server.data / "jobs" / job_id).exists()
