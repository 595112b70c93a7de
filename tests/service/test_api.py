"""Every endpoint and error path of the v1 API, on real SQLite, file store and broker folder."""

from __future__ import annotations

import io
import itertools
import json
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from api.app import create_app
from kegnet_core.config import RECIPES
from kegnet_core.spec import Prior, Stage, parse_spec
from kegnet_service import jobs
from kegnet_service.db import session_scope
from kegnet_service.models import Job
from kegnet_service.settings import Settings
from tests.core.models import TinySignalCNN, torchscript_bytes
from worker.tasks import execute_job

from .conftest import ALICE, BOB, auth, submit


def _job_rows(settings: Settings) -> list[Job]:
    with session_scope(settings.resolved_database_url) as session:
        return list(session.query(Job))


def _stored_objects(settings: Settings) -> list[Path]:
    root = settings.home / "store"
    return [path for path in root.rglob("*") if path.is_file()] if root.exists() else []


def _queued_messages(settings: Settings) -> list[Path]:
    return list((settings.home / "broker" / "queue").glob("*.msg"))


def test_health_and_readiness(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"ready": True, "checks": {"database": "ok", "broker": "ok", "store": "ok"}}


def test_submit_queues_a_job(client, settings, tiny_model_bytes):
    response = submit(client, tiny_model_bytes)
    assert response.status_code == 202, response.text
    job = response.json()
    assert response.headers["location"] == f"/v1/jobs/{job['id']}"
    assert job["status"] == "queued" and job["progress"] == 0 and job["stage"] is None
    assert job["spec"]["input_shape"] == [1, 8, 8] and job["spec"]["prior"] == "auto"
    assert job["model_name"] == "tiny.pt" and job["model_size"] == len(tiny_model_bytes)
    assert (settings.home / "store" / "jobs" / job["id"] / "teacher.pt").read_bytes() == tiny_model_bytes
    assert len(_queued_messages(settings)) == 1
    assert client.get(f"/v1/jobs/{job['id']}", headers=auth()).json()["id"] == job["id"]


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        (None, "spec"),
        ("{not json", "spec"),
        ("{}", "spec.input_shape"),
        ('{"input_shape": [1, 8, 8], "colour": "red"}', "spec.colour"),
        ('{"input_shape": [1, 2, 8, 8]}', "spec.input_shape"),
        ('{"input_shape": [2, 16], "prior": "strokes"}', "spec.prior"),
        ('{"input_shape": [1, 0, 8]}', "spec.input_shape"),
        ('{"input_shape": [1, 8, 8], "prior": "laplace"}', "spec.prior"),
        ('{"input_shape": [12], "prior": "strokes"}', "spec.prior"),
        ('{"input_shape": [1, 8, 8], "overrides": {"sampling.stroke_share": 2}}', "spec.overrides"),
        ('{"input_shape": [1, 8, 8], "overrides": {"distill.stroke_share": 0.5}}', "spec.overrides"),
        ('{"input_shape": [1, 8, 8], "overrides": {"distill.steps": "many"}}', "spec.overrides"),
        ('{"input_shape": [1, 8, 8], "ranks": 1.5}', "spec.ranks"),
        ('{"input_shape": [1, 8, 8], "ranks": {"stem.0": [2]}}', "spec.ranks"),
        ('{"input_shape": [1, 8, 8], "target_ratio": 0.5}', "spec.target_ratio"),
        ('{"input_shape": [1, 8, 8], "target_ratio": 2, "ranks": "evbmf"}', "spec.target_ratio"),
        ('{"input_shape": [1, 8, 8], "ranks": {"": [2, 2]}}', "spec.ranks"),
        ('{"input_shape": [1, 8, 8], "prior": "synthesis", "preset": "paper"}', "spec.prior"),
        ('{"input_shape": [3, 65536, 65536]}', "spec.input_shape"),
        ('{"input_shape": [1, 8, 8], "layers": []}', "spec.layers"),
        ('{"input_shape": [1, 8, 8], "preset": "huge"}', "spec.preset"),
        ('{"input_shape": [1, 8, 8], "seed": -1}', "spec.seed"),
        ('{"input_shape": [1, 8, 8], "budget_s": 3}', "spec.budget_s"),
        ('{"input_shape": [1, 8, 8], "budget_s": "15m"}', "spec.budget_s"),
        # Over the service's job time limit (6 h by default): it would be killed before its end.
        ('{"input_shape": [1, 8, 8], "budget_s": 36000}', "spec.budget_s"),
    ],
)
def test_bad_specs_are_422_naming_the_field(client, settings, tiny_model_bytes, spec, field):
    response = submit(client, tiny_model_bytes, spec)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["field"] == field
    assert field in error["message"]
    assert _job_rows(settings) == [] and _stored_objects(settings) == []


def _state_dict_bytes() -> bytes:
    buffer = io.BytesIO()
    torch.save({"weight": torch.randn(3, 3)}, buffer)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (_state_dict_bytes(), "torch.save checkpoint"),
        (pickle.dumps({"a": 1}), "pickle"),
        (b"", "empty"),
        (b"PK\x03\x04 truncated", "truncated or corrupt"),
    ],
    ids=["state-dict", "pickle", "empty", "truncated"],
)
def test_non_torchscript_uploads_are_refused(client, settings, content, message):
    response = submit(client, content)
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["field"] == "model" and message in error["message"]
    assert _job_rows(settings) == [] and _stored_objects(settings) == []
    assert list((settings.home / "tmp").iterdir()) == []


def test_missing_model_and_wrong_content_type(client):
    response = client.post("/v1/jobs", data={"spec": '{"input_shape": [3]}'}, headers=auth())
    assert response.status_code in (415, 422)
    response = client.post("/v1/jobs", files={"spec": (None, '{"input_shape": [3]}')}, headers=auth())
    assert response.status_code == 422 and response.json()["error"]["field"] == "model"
    response = client.post("/v1/jobs", json={"input_shape": [3]}, headers=auth())
    assert response.status_code == 415


def test_upload_over_the_limit_is_413_and_leaves_nothing(tmp_path, tiny_model_bytes):
    limited = Settings(home=tmp_path / "small", api_keys=f"alice:{ALICE}", max_upload_bytes=1000)
    limited.home.mkdir()
    import migrations

    migrations.upgrade(limited.resolved_database_url)
    with TestClient(create_app(limited)) as small:
        response = submit(small, tiny_model_bytes)
    assert response.status_code == 413
    assert response.json()["error"]["field"] == "model"
    assert _job_rows(limited) == [] and _stored_objects(limited) == []
    assert list((limited.home / "tmp").iterdir()) == []


def _multipart(parts: list[tuple[bytes, bytes]]) -> tuple[bytes, dict[str, str]]:
    """A hand-made multipart body of (headers, content) parts."""
    boundary = b"kegnetboundary"
    body = b"".join(
        b"--" + boundary + b"\r\n" + head + b"\r\n\r\n" + content + b"\r\n" for head, content in parts
    )
    return body + b"--" + boundary + b"--\r\n", {
        "Content-Type": "multipart/form-data; boundary=kegnetboundary"
    }


@pytest.mark.parametrize(
    ("parts", "status", "code", "fine"),
    [
        (
            [(b'Content-Disposition: form-data; name="f%d"' % i, b"x") for i in range(40)],
            413,
            "too_many_fields",
            3,
        ),
        (
            [(b'Content-Disposition: form-data; name="f%d"' % i, b"x" * 60_000) for i in range(6)],
            413,
            "fields_too_large",
            3,
        ),
        (
            [(b'Content-Disposition: form-data; name="spec"\r\nX-Pad: ' + b"p" * 20_000, b"{}")],
            400,
            "bad_multipart",
            0,
        ),
    ],
    ids=["many-fields", "many-large-fields", "endless-header"],
)
def test_what_a_form_may_carry_besides_the_model_is_bounded(
    client, settings, tiny_model_bytes, parts, status, code, fine
):
    model = (b'Content-Disposition: form-data; name="model"; filename="m.pt"', tiny_model_bytes)
    body, headers = _multipart([model, *parts])
    response = client.post("/v1/jobs", content=body, headers={**auth(), **headers})
    assert response.status_code == status and response.json()["error"]["code"] == code
    assert _job_rows(settings) == [] and list((settings.home / "tmp").iterdir()) == []
    # A form within the bounds is taken (the same kind of parts, fewer of them).
    spec = (b'Content-Disposition: form-data; name="spec"', b'{"input_shape": [1, 8, 8], "preset": "quick"}')
    body, headers = _multipart([model, spec, *parts[:fine]])
    assert client.post("/v1/jobs", content=body, headers={**auth(), **headers}).status_code == 202


def test_listing_is_newest_first_filtered_and_paginated(client, tiny_model_bytes):
    ids = [submit(client, tiny_model_bytes).json()["id"] for _ in range(3)]
    page = client.get("/v1/jobs", headers=auth(), params={"limit": 2}).json()
    assert [job["id"] for job in page["items"]] == ids[::-1][:2]
    assert page["total"] == 3 and page["limit"] == 2
    second = client.get("/v1/jobs", headers=auth(), params={"limit": 2, "offset": 2}).json()
    assert [job["id"] for job in second["items"]] == [ids[0]]
    client.post(f"/v1/jobs/{ids[1]}/cancel", headers=auth())
    cancelled = client.get("/v1/jobs", headers=auth(), params={"status": "cancelled"}).json()
    assert [job["id"] for job in cancelled["items"]] == [ids[1]]
    bad = client.get("/v1/jobs", headers=auth(), params={"status": "sleeping"})
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "status"
    # Past what the databases' 64-bit OFFSET holds: a 422 that names the field, not a 500.
    huge = client.get("/v1/jobs", headers=auth(), params={"offset": 2**63})
    assert huge.status_code == 422 and huge.json()["error"]["field"] == "offset"


def test_unknown_job_is_404(client):
    response = client.get("/v1/jobs/nope", headers=auth())
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "job_not_found"


def test_artifacts_before_success_are_409(client, tiny_model_bytes):
    job_id = submit(client, tiny_model_bytes).json()["id"]
    for name in ("model", "report", "samples.png", "latent_walk.png", "generators"):
        response = client.get(f"/v1/jobs/{job_id}/{name}", headers=auth())
        assert response.status_code == 409, name
        assert "queued" in response.json()["error"]["message"]


def test_cancel_a_queued_job_then_409(client, settings, tiny_model_bytes):
    job_id = submit(client, tiny_model_bytes).json()["id"]
    response = client.post(f"/v1/jobs/{job_id}/cancel", headers=auth())
    assert response.status_code == 202 and response.json()["status"] == "cancelled"
    assert execute_job(job_id, settings) == "skipped"  # the queued message finds it cancelled
    again = client.post(f"/v1/jobs/{job_id}/cancel", headers=auth())
    assert again.status_code == 409


def test_a_budget_job_answers_with_its_estimate_then_the_workers(client, settings, tiny_model_bytes):
    response = submit(client, tiny_model_bytes, '{"input_shape": [1, 8, 8], "budget_s": 20}')
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["estimated_duration_s"] == 20  # before any worker has measured: the budget itself
    assert execute_job(job["id"], settings) == "succeeded"
    job = client.get(f"/v1/jobs/{job['id']}", headers=auth()).json()
    budget = job["report"]["budget"]
    assert job["estimated_duration_s"] == job["metrics"]["estimate_s"]
    assert job["estimated_duration_s"] == pytest.approx(budget["estimated_s"], abs=0.05)
    assert budget["estimated_s"] <= 22  # over the budget only where the least work is
    assert job["report"]["timings_s"]["total"] <= 20 * 1.15
    plain = submit(client, tiny_model_bytes).json()
    assert plain["estimated_duration_s"] is None


def test_a_job_runs_and_its_artifacts_download(client, settings, tiny_model_bytes, tmp_path):
    job_id = submit(client, tiny_model_bytes).json()["id"]
    assert execute_job(job_id, settings) == "succeeded"
    job = client.get(f"/v1/jobs/{job_id}", headers=auth()).json()
    assert job["status"] == "succeeded" and job["progress"] == 1.0 and job["error"] is None
    assert job["report"]["params_after"] < job["report"]["params_before"]
    # The tiny CNN has BatchNorm: auto synthesises inputs, so no generators, but a grid of what
    # the student trained on.
    assert job["report"]["prior"] == "synthesis"
    assert {"model", "model.onnx", "report", "samples.png"} <= set(job["links"])
    assert not {"latent_walk.png", "generators", "model_int8"} & set(job["links"])
    assert job["metrics"]["curves"]["distilling"]
    assert job["metrics"]["preview_version"] >= 1  # live sample grids were saved while training
    live = settings.home / "store" / "jobs" / job_id / "live" / "samples.png"
    assert live.read_bytes().startswith(b"\x89PNG")

    model = client.get(f"/v1/jobs/{job_id}/model", headers=auth())
    assert model.status_code == 200
    assert model.headers["content-disposition"].startswith('attachment; filename="tiny-student.pt"')
    path = tmp_path / "student.pt"
    path.write_bytes(model.content)
    student = torch.jit.load(str(path))
    assert student(torch.randn(5, 1, 8, 8)).shape == (5, 3)

    report = client.get(f"/v1/jobs/{job_id}/report", headers=auth())
    assert report.json()["compression_ratio"] == job["report"]["compression_ratio"]
    samples = client.get(f"/v1/jobs/{job_id}/samples.png", headers=auth())
    assert samples.headers["content-type"] == "image/png" and samples.content.startswith(b"\x89PNG")
    assert client.get(f"/v1/jobs/{job_id}/generators", headers=auth()).status_code == 404


def test_an_int8_job_serves_an_int8_student_and_onnx(client, settings, tiny_model_bytes, tmp_path):
    import onnxruntime

    spec = '{"input_shape": [1, 8, 8], "preset": "quick", "quantize": "int8"}'
    job_id = submit(client, tiny_model_bytes, spec).json()["id"]
    assert execute_job(job_id, settings) == "succeeded"
    job = client.get(f"/v1/jobs/{job_id}", headers=auth()).json()
    assert {"model", "model_int8", "model.onnx"} <= set(job["links"]), job["report"].get("int8_error")
    int8 = client.get(f"/v1/jobs/{job_id}/model_int8", headers=auth())
    assert int8.status_code == 200 and len(int8.content) == job["report"]["int8"]["file_size"]
    (tmp_path / "int8.pt").write_bytes(int8.content)
    assert torch.jit.load(str(tmp_path / "int8.pt"))(torch.randn(4, 1, 8, 8)).shape == (4, 3)
    onnx = client.get(f"/v1/jobs/{job_id}/model.onnx", headers=auth())
    session = onnxruntime.InferenceSession(onnx.content, providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {"input": torch.randn(6, 1, 8, 8).numpy()})
    assert logits.shape == (6, 3)
    int8_onnx = client.get(f"/v1/jobs/{job_id}/model_int8.onnx", headers=auth())
    assert len(int8_onnx.content) == job["report"]["int8"]["onnx"]["file_size"]
    session = onnxruntime.InferenceSession(int8_onnx.content, providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {"input": torch.randn(5, 1, 8, 8).numpy()})
    assert logits.shape == (5, 3)


def test_a_quantize_job_serves_the_int8_teacher_only(client, settings, tiny_model_bytes, tmp_path):
    spec = '{"input_shape": [1, 8, 8], "preset": "quick", "task": "quantize"}'
    job_id = submit(client, tiny_model_bytes, spec).json()["id"]
    assert execute_job(job_id, settings) == "succeeded"
    job = client.get(f"/v1/jobs/{job_id}", headers=auth()).json()
    assert job["spec"]["quantize"] == "int8" and job["progress"] == 1.0
    assert {"model_int8", "model_int8.onnx"} <= set(job["links"]) and not {"model", "model.onnx"} & set(
        job["links"]
    )
    (tmp_path / "int8.pt").write_bytes(client.get(f"/v1/jobs/{job_id}/model_int8", headers=auth()).content)
    assert torch.jit.load(str(tmp_path / "int8.pt"))(torch.randn(2, 1, 8, 8)).shape == (2, 3)


def test_extract_jobs_have_generators_but_no_student(client, settings, tiny_model_bytes):
    spec = '{"input_shape": [1, 8, 8], "preset": "quick", "task": "extract"}'
    job_id = submit(client, tiny_model_bytes, spec).json()["id"]
    assert execute_job(job_id, settings) == "succeeded"
    response = client.get(f"/v1/jobs/{job_id}/model", headers=auth())
    assert response.status_code == 404 and "no student" in response.json()["error"]["message"]
    bundle = zipfile.ZipFile(io.BytesIO(client.get(f"/v1/jobs/{job_id}/generators", headers=auth()).content))
    assert {"generator_0.pt", "latent_walk.png", "samples.png"} <= set(bundle.namelist())


def test_a_bad_layer_fails_the_job_naming_the_field(client, settings, tiny_model_bytes):
    spec = '{"input_shape": [1, 8, 8], "preset": "quick", "layers": ["conv9"]}'
    job_id = submit(client, tiny_model_bytes, spec).json()["id"]
    assert execute_job(job_id, settings) == "failed"
    job = client.get(f"/v1/jobs/{job_id}", headers=auth()).json()
    assert job["error"]["code"] == "invalid_spec"
    assert job["error"]["message"].startswith("layers:") and "conv9" in job["error"]["message"]


def test_a_shape_that_does_not_fit_fails_the_job(client, settings, tiny_model_bytes):
    job_id = submit(client, tiny_model_bytes, '{"input_shape": [3, 8, 8], "preset": "quick"}').json()["id"]
    assert execute_job(job_id, settings) == "failed"
    error = client.get(f"/v1/jobs/{job_id}", headers=auth()).json()["error"]
    assert error["code"] == "model_run_failed" and error["message"].startswith("input_shape:")


@pytest.mark.parametrize("path", ["/v1/jobs", "/v1/jobs/x", "/v1/jobs/x/model"])
def test_keys_are_required(client, path):
    assert client.get(path).status_code == 401
    wrong = client.get(path, headers=auth("wrong-key-0123456789"))
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "unauthorized"


def test_owners_see_only_their_jobs(client, tiny_model_bytes):
    job_id = submit(client, tiny_model_bytes).json()["id"]
    assert client.get(f"/v1/jobs/{job_id}", headers=auth(BOB)).status_code == 404
    assert client.post(f"/v1/jobs/{job_id}/cancel", headers=auth(BOB)).status_code == 404
    assert client.get("/v1/jobs", headers=auth(BOB)).json()["total"] == 0
    assert client.get("/v1/jobs", headers=auth(ALICE)).json()["total"] == 1


def test_a_poll_answers_what_the_listing_does_and_a_revoked_key_at_once(client, settings, tiny_model_bytes):
    from kegnet_service.keys import revoke_keys

    job_id = submit(client, tiny_model_bytes).json()["id"]
    polled = client.get(f"/v1/jobs/{job_id}", headers=auth())
    assert polled.status_code == 200 and polled.headers["content-type"] == "application/json"
    assert polled.json() == client.get("/v1/jobs", headers=auth()).json()["items"][0]
    with session_scope(settings.resolved_database_url) as session:
        assert revoke_keys(session, prefix=ALICE[:8]) == 1
    refused = client.get(f"/v1/jobs/{job_id}", headers=auth())
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "unauthorized"


def test_idempotent_submit(client, settings, tiny_model_bytes):
    first = submit(client, tiny_model_bytes, headers={"Idempotency-Key": "abc"})
    second = submit(client, tiny_model_bytes, headers={"Idempotency-Key": "abc"})
    assert first.status_code == 202 and second.status_code == 200
    assert first.json()["id"] == second.json()["id"]
    assert len(_job_rows(settings)) == 1 and len(_queued_messages(settings)) == 1
    other = submit(client, tiny_model_bytes, headers={"Idempotency-Key": "abc", **auth(BOB)})
    assert other.json()["id"] != first.json()["id"]  # keys are per owner


def test_broker_down_is_503_and_leaves_nothing(tmp_path, tiny_model_bytes):
    down = Settings(home=tmp_path / "down", api_keys=f"alice:{ALICE}", broker_url="redis://127.0.0.1:9/0")
    down.home.mkdir()
    import migrations

    migrations.upgrade(down.resolved_database_url)
    with TestClient(create_app(down)) as broken:
        response = submit(broken, tiny_model_bytes)
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "broker_unavailable"
        ready = broken.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["checks"]["broker"].startswith("unavailable")
        assert ready.json()["checks"]["database"] == "ok"
    assert _job_rows(down) == [] and _stored_objects(down) == []


def test_openapi_documents_the_upload(client):
    schema = client.get("/openapi.json").json()
    body = schema["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert set(body["required"]) == {"model", "spec"}
    components = schema["components"]["schemas"]
    spec_ref = body["properties"]["spec"]["contentSchema"]["$ref"]
    spec_schema = components[spec_ref.rsplit("/", 1)[-1]]
    # The dashboard reads the allowed values from here: every $ref must resolve to the core's enums.
    prior_ref = spec_schema["properties"]["prior"]["$ref"]
    assert components[prior_ref.rsplit("/", 1)[-1]]["enum"] == [prior.value for prior in Prior]
    preset_ref = spec_schema["properties"]["preset"]["$ref"]
    assert components[preset_ref.rsplit("/", 1)[-1]]["enum"] == list(RECIPES)


def test_overrides_work_end_to_end(client, settings, tiny_model_bytes):
    spec = '{"input_shape": [1, 8, 8], "overrides": {"distill.steps": 5, "sampling.noise_scale": 2}}'
    response = submit(client, tiny_model_bytes, spec)
    assert response.status_code == 202, response.text
    stored = response.json()["spec"]
    assert stored["overrides"] == {"distill.steps": 5, "sampling.noise_scale": 2}
    assert parse_spec(stored).recipe().distill.steps == 5


def test_the_api_never_imports_torch(settings):
    script = (
        "import sys\n"
        "from api.app import create_app\n"
        "from kegnet_service.settings import Settings\n"
        f"create_app(Settings(home={str(settings.home)!r}))\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True)


def test_progress_maps_stages_onto_the_whole_job():
    assert jobs.overall_progress("compress", "validating", 0) == 0
    assert jobs.overall_progress("compress", "exporting", 1) == 1
    halfway = jobs.overall_progress("compress", "distilling", 0.5)
    assert (
        jobs.overall_progress("compress", "extracting", 1)
        < halfway
        < jobs.overall_progress("compress", "exporting", 0)
    )
    for task, spans in jobs.STAGE_SPANS.items():
        # Every stage the core runs for the task has a span, in the core's order, the spans
        # tile [0, 1] without gaps, so progress never jumps back between stages.
        assert list(spans) == [stage.value for stage in Stage if stage.value in spans]
        assert {Stage.VALIDATING.value, Stage.EXTRACTING.value, Stage.EXPORTING.value} <= set(spans), task
        bounds = list(spans.values())
        assert bounds[0][0] == 0 and bounds[-1][1] == 1
        assert all(end == start for (_, end), (start, _) in itertools.pairwise(bounds))


def test_metrics_in_prometheus_format(client, settings, tiny_model_bytes):
    job_id = submit(client, tiny_model_bytes).json()["id"]
    execute_job(job_id, settings)
    submit(client, tiny_model_bytes)
    client.get("/v1/jobs", headers=auth())
    text = client.get("/metrics").text
    assert 'kegnet_jobs{status="succeeded"} 1.0' in text
    assert 'kegnet_jobs{status="queued"} 1.0' in text
    assert "kegnet_queue_depth 1.0" in text
    assert 'kegnet_stage_duration_seconds_count{stage="distilling"} 1.0' in text
    assert "kegnet_upload_bytes_count 2.0" in text
    assert (
        'kegnet_http_request_duration_seconds_count{method="GET",route="/v1/jobs",status="200"} 1.0' in text
    )


def test_logs_carry_the_job_id_as_json(capsys):
    import logging

    from kegnet_service.logs import bound_job, configure_logging

    configure_logging("INFO", json_lines=True)
    with bound_job("abc123"):
        logging.getLogger("kegnet.test").info("hello", extra={"stage": "distilling"})
    line = capsys.readouterr().err.strip().splitlines()[-1]
    entry = json.loads(line)
    assert entry["message"] == "hello" and entry["job_id"] == "abc123" and entry["stage"] == "distilling"
    logging.getLogger().handlers.clear()


ENDPOINTS = [
    ("GET", "/v1/jobs/{id}"),
    ("POST", "/v1/jobs/{id}/cancel"),
    ("GET", "/v1/jobs/{id}/model"),
    ("GET", "/v1/jobs/{id}/report"),
    ("GET", "/v1/jobs/{id}/samples.png"),
    ("GET", "/v1/jobs/{id}/latent_walk.png"),
    ("GET", "/v1/jobs/{id}/generators"),
]


def test_auth_matrix_for_every_endpoint(client, settings, tiny_model_bytes):
    kegnet = '{"input_shape": [1, 8, 8], "preset": "quick", "prior": "kegnet"}'  # every artifact exists
    job_id = submit(client, tiny_model_bytes, kegnet).json()["id"]
    execute_job(job_id, settings)
    for method, template in [("GET", "/v1/jobs"), ("POST", "/v1/jobs"), *ENDPOINTS]:
        path = template.format(id=job_id)
        assert client.request(method, path).status_code == 401, (method, path)
        assert client.request(method, path, headers=auth("not-a-key-0123456789")).status_code == 401, path
    for method, template in ENDPOINTS:
        path = template.format(id=job_id)
        assert client.request(method, path, headers=auth(BOB)).status_code == 404, (method, path)
        own = client.request(method, path, headers=auth(ALICE)).status_code
        assert own == (409 if method == "POST" else 200), (method, path, own)  # cancel: already finished
    assert client.get("/healthz").status_code == 200 and client.get("/readyz").status_code == 200


def test_a_job_past_its_time_limit_fails_with_a_code(tmp_path, tiny_model_bytes):
    limited = Settings(home=tmp_path / "limited", api_keys=f"alice:{ALICE}", job_time_limit_s=3)
    limited.home.mkdir()
    import migrations

    migrations.upgrade(limited.resolved_database_url)
    with TestClient(create_app(limited)) as small:
        job_id = submit(small, tiny_model_bytes, '{"input_shape": [1, 8, 8], "preset": "default"}').json()[
            "id"
        ]
        assert execute_job(job_id, limited) == "failed"
        job = small.get(f"/v1/jobs/{job_id}", headers=auth()).json()
    assert job["error"]["code"] == "time_limit" and "time limit" in job["error"]["message"], job["error"]
    assert not (limited.home / "store" / "jobs" / job_id / "out").exists()


def test_a_job_that_keeps_killing_workers_fails_after_max_attempts(client, settings, tiny_model_bytes):
    from datetime import timedelta

    from kegnet_service.reaper import reap_once

    job_id = submit(client, tiny_model_bytes).json()["id"]
    celery = client.app.state.services.celery
    for attempt in range(1, settings.max_attempts + 1):
        with session_scope(settings.resolved_database_url) as session:
            claimed = jobs.claim_job(
                session, job_id=job_id, worker=f"w{attempt}", max_attempts=settings.max_attempts
            )
            assert claimed is not None and claimed.attempts == attempt
            claimed.heartbeat_at = jobs.now() - timedelta(hours=1)  # the worker died silently
        # ... leaving a checkpoint and half its results behind
        for key in (
            f"{jobs.checkpoint_prefix(job_id)}/distill.pt",
            f"{jobs.attempt_prefix(job_id, attempt)}/x.pt",
        ):
            (settings.home / "store" / key).parent.mkdir(parents=True, exist_ok=True)
            (settings.home / "store" / key).write_bytes(b"partial")
        requeued = reap_once(settings, celery)
        expected = [job_id] if attempt < settings.max_attempts else []
        assert requeued == expected
    job = client.get(f"/v1/jobs/{job_id}", headers=auth()).json()
    assert job["status"] == "failed" and job["error"]["code"] == "worker_lost"
    assert job["attempts"] == settings.max_attempts
    # Given up on, it keeps only its upload: no worker of it is left to delete the rest.
    assert [path.name for path in _stored_objects(settings)] == ["teacher.pt"]


def test_a_queued_job_whose_message_was_lost_is_sent_again(client, settings, tiny_model_bytes):
    from datetime import timedelta

    from sqlalchemy import update

    from kegnet_service.reaper import reap_once

    job_id = submit(client, tiny_model_bytes).json()["id"]
    celery = client.app.state.services.celery
    for message in _queued_messages(settings):
        message.unlink()  # the broker lost it (a restart without persistence)
    assert reap_once(settings, celery) == []  # still young: nothing to do
    with session_scope(settings.resolved_database_url) as session:
        stamp = jobs.now() - timedelta(seconds=settings.queued_resend_s + 1)
        session.execute(update(Job).where(Job.id == job_id).values(updated_at=stamp))
    assert reap_once(settings, celery) == [job_id]
    assert len(_queued_messages(settings)) == 1
    assert reap_once(settings, celery) == []  # touched when sent: not again at once
    assert execute_job(job_id, settings) == "succeeded"


def test_a_signal_classifier_is_compressed_through_the_service(client, settings, tmp_path):
    # A Conv1d model over (C, L) inputs goes the whole way: upload, worker, download.
    torch.manual_seed(0)
    model_bytes = torchscript_bytes(TinySignalCNN(), (2, 32))
    spec = '{"input_shape": [2, 32], "preset": "quick", "layers": ["conv2", "conv3"], "ranks": 0.5}'
    job_id = submit(client, model_bytes, spec).json()["id"]
    assert execute_job(job_id, settings) == "succeeded"
    job = client.get(f"/v1/jobs/{job_id}", headers=auth()).json()
    assert [layer["kind"] for layer in job["report"]["layers"]] == ["conv1d", "conv1d"]
    assert job["report"]["quality"]["estimated_loss"] is None  # withheld on signals
    path = tmp_path / "student.pt"
    path.write_bytes(client.get(f"/v1/jobs/{job_id}/model", headers=auth()).content)
    assert torch.jit.load(str(path))(torch.randn(4, 2, 32)).shape == (4, 3)


def _claim(settings, job_id: str, worker: str):
    with session_scope(settings.resolved_database_url) as session:
        return jobs.claim_job(session, job_id=job_id, worker=worker, max_attempts=settings.max_attempts)


def test_a_worker_that_lost_its_job_cannot_write_over_the_worker_that_holds_it(
    client, settings, tiny_model_bytes
):
    job_id = submit(client, tiny_model_bytes).json()["id"]
    assert _claim(settings, job_id, "w1") is not None
    with session_scope(settings.resolved_database_url) as session:
        assert jobs.requeue_job(session, job_id=job_id)  # w1 went silent; the reaper handed it back
    assert _claim(settings, job_id, "w2") is not None
    with session_scope(settings.resolved_database_url) as session:
        jobs.record_progress(session, job_id=job_id, stage="distilling", progress=0.9, worker="w1")
        assert not jobs.finish_job(session, job_id=job_id, status="failed", error_code="x", worker="w1")
        assert not jobs.requeue_job(session, job_id=job_id, worker="w1")
    job = client.get(f"/v1/jobs/{job_id}", headers=auth()).json()
    assert job["status"] == "running" and job["stage"] == "validating"
    with session_scope(settings.resolved_database_url) as session:
        assert jobs.finish_job(session, job_id=job_id, status="cancelled", worker="w2")


def test_a_cancel_asked_of_a_job_whose_worker_died_ends_it_instead_of_leaving_it_queued(
    client, settings, tiny_model_bytes
):
    job_id = submit(client, tiny_model_bytes).json()["id"]
    assert _claim(settings, job_id, "w1") is not None
    assert client.post(f"/v1/jobs/{job_id}/cancel", headers=auth()).json()["status"] == "running"
    with session_scope(settings.resolved_database_url) as session:
        assert not jobs.requeue_job(session, job_id=job_id)  # nothing to send again
    assert client.get(f"/v1/jobs/{job_id}", headers=auth()).json()["status"] == "cancelled"


def test_a_queued_job_with_a_cancel_asked_is_cancelled_when_a_worker_comes_for_it(
    client, settings, tiny_model_bytes
):
    from sqlalchemy import update

    job_id = submit(client, tiny_model_bytes).json()["id"]
    with session_scope(settings.resolved_database_url) as session:  # left so by an older release
        session.execute(update(Job).where(Job.id == job_id).values(cancel_requested=True))
    assert _claim(settings, job_id, "w1") is None
    assert client.get(f"/v1/jobs/{job_id}", headers=auth()).json()["status"] == "cancelled"


def test_a_cancel_read_as_queued_reaches_the_job_a_worker_claimed_meanwhile(
    client, settings, tiny_model_bytes
):
    job_id = submit(client, tiny_model_bytes).json()["id"]
    with session_scope(settings.resolved_database_url) as session:
        stale = jobs.get_job(session, job_id=job_id)
        assert stale is not None and stale.status == "queued"
        session.expunge(stale)
    assert _claim(settings, job_id, "w1") is not None
    with session_scope(settings.resolved_database_url) as session:
        job = session.merge(stale, load=False)
        job = jobs.request_cancel(session, job=job)
        assert job.status == "running" and job.cancel_requested


def test_an_empty_idempotency_key_is_no_key(client, settings, tiny_model_bytes):
    first = submit(client, tiny_model_bytes, headers={"Idempotency-Key": ""})
    second = submit(client, tiny_model_bytes, headers={"Idempotency-Key": ""})
    assert first.status_code == second.status_code == 202
    assert first.json()["id"] != second.json()["id"]


def test_a_job_id_no_job_could_have_is_404_not_a_database_outage(client):
    for path in ("/v1/jobs/a%00b", "/v1/jobs/a%00b/model", "/v1/jobs/" + "x" * 300):
        assert client.get(path, headers=auth()).status_code == 404, path
    assert client.post("/v1/jobs/a%00b/cancel", headers=auth()).status_code == 404


def test_a_download_named_after_any_upload_has_a_header_latin_1_can_carry():
    from fastapi import Response

    from api.routes import _attachment

    header = _attachment('модель "v2".pt-student.pt')
    assert header.startswith('attachment; filename="')
    assert "filename*=UTF-8''%D0%BC%D0%BE%D0%B4" in header
    Response(headers={"Content-Disposition": header})  # a Cyrillic name raised here: a 500
    assert (
        _attachment("tiny-student.pt")
        == "attachment; filename=\"tiny-student.pt\"; filename*=UTF-8''tiny-student.pt"
    )


def test_a_worker_that_loses_its_job_while_uploading_leaves_the_holders_results_alone(
    client, settings, tiny_model_bytes, monkeypatch
):
    import worker.tasks as tasks

    job_id = submit(client, tiny_model_bytes).json()["id"]
    upload = tasks._upload_outputs

    def taken_away_first(*args, **kwargs):
        # While this worker ran, the reaper took its job back and worker w2 claimed it.
        with session_scope(settings.resolved_database_url) as session:
            assert jobs.requeue_job(session, job_id=job_id)
        assert _claim(settings, job_id, "w2") is not None
        return upload(*args, **kwargs)

    monkeypatch.setattr(tasks, "_upload_outputs", taken_away_first)
    assert execute_job(job_id, settings) == "skipped"  # its end is not recorded ...
    out = settings.home / "store" / "jobs" / job_id / "out"
    assert not out.exists() or not any(out.rglob("*.pt"))  # ... and its uploads are removed
    monkeypatch.setattr(tasks, "_upload_outputs", upload)
    with session_scope(settings.resolved_database_url) as session:
        assert jobs.requeue_job(session, job_id=job_id, worker="w2")  # w2 died in turn
    (out / "2").mkdir(parents=True)
    (out / "2" / "student.pt").write_bytes(b"half an upload of w2's")
    assert execute_job(job_id, settings) == "succeeded"
    assert sorted(path.name for path in out.iterdir()) == ["3"]  # earlier attempts' files gone
    model = client.get(f"/v1/jobs/{job_id}/model", headers=auth())
    student = torch.jit.load(io.BytesIO(model.content))
    assert student(torch.randn(2, 1, 8, 8)).shape == (2, 3)


def test_a_bare_seeded_key_works_but_is_never_stored_or_shown_as_its_owner(tmp_path, tiny_model_bytes):
    from kegnet_service.keys import parse_seed

    bare = "carol-bare-key-0123456789"
    seeded = Settings(home=tmp_path / "bare", api_keys=f"alice:{ALICE},{bare}")
    seeded.home.mkdir()
    import migrations

    migrations.upgrade(seeded.resolved_database_url)
    with TestClient(create_app(seeded)) as bare_client:
        job = submit(bare_client, tiny_model_bytes, headers=auth(bare)).json()
        assert bare_client.get(f"/v1/jobs/{job['id']}", headers=auth(bare)).status_code == 200
        assert bare_client.get(f"/v1/jobs/{job['id']}", headers=auth(ALICE)).status_code == 404
    (row,) = _job_rows(seeded)
    assert bare not in row.owner and row.owner.startswith("key-")
    # A bare key an earlier release stored as its own owner moves, jobs and all, when seeded.
    from kegnet_service.keys import seed_keys
    from kegnet_service.models import ApiKey

    with session_scope(seeded.resolved_database_url) as session:
        session.query(Job).update({Job.owner: bare})
        session.query(ApiKey).filter(ApiKey.owner == row.owner).update({ApiKey.owner: bare})
    with session_scope(seeded.resolved_database_url) as session:
        seed_keys(session, seeded.api_keys)
    with session_scope(seeded.resolved_database_url) as session:
        owners = {owner for (owner,) in session.query(ApiKey.owner)} | {
            job.owner for job in session.query(Job)
        }
    assert owners == {"alice", row.owner}
    with pytest.raises(ValueError, match="no owner"):
        parse_seed(f":{bare}")


def test_a_job_given_up_at_its_claim_leaves_only_its_upload(client, settings, tiny_model_bytes):
    job_id = submit(client, tiny_model_bytes).json()["id"]
    for attempt in range(1, settings.max_attempts + 1):
        assert _claim(settings, job_id, f"w{attempt}") is not None
        key = settings.home / "store" / jobs.attempt_prefix(job_id, attempt) / "student.pt"
        key.parent.mkdir(parents=True, exist_ok=True)
        key.write_bytes(b"half an upload")
        with session_scope(settings.resolved_database_url) as session:
            assert jobs.requeue_job(session, job_id=job_id)  # handed back (a store outage, say)
    assert execute_job(job_id, settings) == "skipped"
    job = client.get(f"/v1/jobs/{job_id}", headers=auth()).json()
    assert job["status"] == "failed" and job["error"]["code"] == "too_many_attempts"
    assert [path.name for path in _stored_objects(settings)] == ["teacher.pt"]
