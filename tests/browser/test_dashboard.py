"""The dashboard in a real browser against ``kegnet serve``: sign in, submit, watch, download."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from kegnet_core.spec import PresetName, Prior
from tests.browser.conftest import Blocked, Server

expect = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed").expect

if TYPE_CHECKING:
    from playwright.sync_api import Page, Request

pytestmark = pytest.mark.slow

JOB_TIMEOUT_MS = 240_000  # a quick job takes 10-60 s here; leave room for a busy machine


def submit_job(
    page: Page, model: Path, *, input_shape: str = "1,8,8", preset: str = "quick", quantize: str | None = None
) -> str:
    """Fill the new-job form, start the job, and return its id from the job page's URL."""
    page.click("a[href='#/new'] >> nth=0")
    page.set_input_files("#field-model", str(model))
    page.fill("#field-input_shape", input_shape)
    page.select_option("#field-preset", preset)
    if quantize is not None:
        page.select_option("#field-quantize", quantize)
    page.click("#submit-job")
    page.wait_for_url(re.compile(r"#/jobs/\w+$"))
    return page.url.rsplit("/", 1)[1]


def test_an_int8_job_shows_both_int8_files_and_offers_them(signed_in: Page, teacher_file: Path) -> None:
    page = signed_in
    submit_job(page, teacher_file, quantize="int8")
    expect(page.locator(".job-head .badge")).to_have_text("succeeded", timeout=JOB_TIMEOUT_MS)
    table = page.locator("#before-after")
    for label in ("Int8 student file size", "Int8 ONNX file size", "ONNX Runtime latency, batch 64"):
        expect(table).to_contain_text(label)
    with page.expect_download() as pending:
        page.click("[data-download='model_int8.onnx']")
    assert Path(pending.value.path()).stat().st_size > 0
    assert pending.value.suggested_filename.endswith("_int8.onnx"), pending.value.suggested_filename


def test_a_wrong_key_shows_the_servers_message(page: Page, server: Server) -> None:
    page.goto(f"{server.url}/")
    page.fill("#api-key", "kg_wrong-key-123456")
    page.click("#signin-form button[type=submit]")
    expect(page.locator("#signin-error")).to_have_text("the API key is not valid")
    assert page.evaluate("sessionStorage.length") == 0
    expect(page.locator("#sign-out")).to_be_hidden()


def test_a_key_refused_later_signs_the_user_out(signed_in: Page) -> None:
    page = signed_in
    page.evaluate("sessionStorage.setItem('kegnet.apiKey', 'kg_revoked-key-123456')")
    page.click("a[href='#/new'] >> nth=0")
    page.click("a[href='#/jobs'] >> nth=0")
    expect(page.locator("#signin-error")).to_have_text("the API key is not valid")
    assert page.evaluate("sessionStorage.length") == 0


def test_the_spec_rules(signed_in: Page) -> None:
    """The form's parsers turn text into the spec JSON the API takes."""
    results = signed_in.evaluate(
        """async () => {
            const spec = await import("./static/js/spec.js");
            return {
                shape: spec.parseInputShape(" 1, 28 ,28 "),
                vector: spec.parseInputShape("64"),
                two: spec.parseInputShape("1,8"),
                four: spec.parseInputShape("1,2,3,4"),
                auto: spec.parseRanks(""),
                evbmf: spec.parseRanks("EVBMF"),
                fraction: spec.parseRanks("0.5"),
                pairs: spec.parseRanks("conv3=11:7, layers3.0.conv1=4:2"),
                zero: spec.parseRanks("0"),
                layers: spec.parseLayers("conv3, layers3.0.conv1"),
                none: spec.parseLayers(" "),
                ratio: spec.parseTargetRatio("4"),
                budgets: ["15m", "1h30m", "90", "", "5s", "soon"].map(spec.parseBudget),
                left: (await import("./static/js/job.js")).timeLeft(
                    {started_at: "2026-01-01T00:00:00Z", metrics: {estimate_s: 300}, progress: 0.1},
                    Date.parse("2026-01-01T00:01:00Z"),
                ),
                field: [spec.fieldOf("spec.ranks.conv3"), spec.fieldOf("model"), spec.fieldOf("spec")],
            };
        }"""
    )
    assert results["shape"] == {"value": [1, 28, 28]}
    assert results["vector"] == {"value": [64]}
    assert results["two"] == {"value": [1, 8]}  # a signal: C,L
    assert "error" in results["four"]
    assert results["auto"] == {"value": "auto"}
    assert results["evbmf"] == {"value": "evbmf"}
    assert results["fraction"] == {"value": 0.5}
    assert results["pairs"] == {"value": {"conv3": [11, 7], "layers3.0.conv1": [4, 2]}}
    assert "error" in results["zero"]
    assert results["layers"] == {"value": ["conv3", "layers3.0.conv1"]}
    assert results["none"] == {"value": None}
    assert results["ratio"] == {"value": 4}
    assert results["budgets"][:4] == [{"value": 900}, {"value": 5400}, {"value": 90}, {"value": None}]
    assert all("error" in result for result in results["budgets"][4:])
    assert results["left"] == 240  # the worker's estimate, not the progress, once it has one
    assert results["field"] == ["ranks", "model", None]


def test_the_form_offers_the_servers_choices(signed_in: Page) -> None:
    """Tasks, presets and priors are read from /openapi.json, not copied into the page."""
    page = signed_in
    page.click("a[href='#/new'] >> nth=0")
    expect(page.locator("#field-prior option")).to_have_count(len(Prior))
    offered = page.locator("#field-prior option").evaluate_all("options => options.map(o => o.value)")
    assert offered == [prior.value for prior in Prior]
    assert page.locator("#field-prior").input_value() == Prior.AUTO.value
    presets = page.locator("#field-preset option").evaluate_all("options => options.map(o => o.value)")
    assert presets == [preset.value for preset in PresetName]
    assert page.locator("#field-preset").input_value() == PresetName.DEFAULT.value


def test_the_form_checks_the_spec_as_it_is_typed(signed_in: Page) -> None:
    page = signed_in
    page.click("a[href='#/new'] >> nth=0")
    cases = {
        "input_shape": ("1,x", "positive integers"),
        "ranks": ("2", "(0, 1]"),
        "target_ratio": ("1", "greater than 1"),
        "seed": ("-3", "integer"),
        "layers": ("conv 3", "module path"),
    }
    for name, (text, message) in cases.items():
        page.fill(f"#field-{name}", text)
        page.locator(f"#field-{name}").blur()
        expect(page.locator(f"#error-{name}")).to_contain_text(message)
    page.fill("#field-ranks", "stem.0=2:1, block.0=3:3")
    page.locator("#field-ranks").blur()
    expect(page.locator("#error-ranks")).to_be_empty()
    page.fill("#field-input_shape", "")
    page.click("#submit-job")
    expect(page.locator("#error-input_shape")).to_contain_text("required")
    expect(page.locator("#error-model")).to_contain_text("choose a TorchScript file")


def test_a_dropped_file_refused_by_the_server_shows_its_message(signed_in: Page) -> None:
    page = signed_in
    page.click("a[href='#/new'] >> nth=0")
    page.locator(".dropzone").wait_for()  # the form renders after the click
    page.evaluate(
        """() => {
            const data = new DataTransfer();
            data.items.add(new File(["not a TorchScript archive"], "junk.pt"));
            document.querySelector(".dropzone").dispatchEvent(
                new DragEvent("drop", { dataTransfer: data, bubbles: true, cancelable: true }));
        }"""
    )
    expect(page.locator(".dropzone .chosen")).to_contain_text("junk.pt")
    page.fill("#field-input_shape", "1,8,8")
    page.click("#submit-job")
    expect(page.locator("#error-model")).to_contain_text("not a zip archive")
    assert "#/new" in page.url


def test_a_quick_job_from_upload_to_download(
    signed_in: Page, server: Server, teacher_file: Path, blocked: Blocked
) -> None:
    page = signed_in
    v1_requests: list[Request] = []

    def record(request: Request) -> None:
        if "/v1/" in request.url:
            v1_requests.append(request)

    page.on("request", record)

    job_id = submit_job(page, teacher_file)

    # The list updates by itself while the job runs: no reload, no click.
    page.click("a[href='#/jobs'] >> nth=0")
    row = page.locator(f"#jobs-table tr[data-job-id='{job_id}']")
    expect(row.locator(".model a")).to_have_text("tiny.pt")
    expect(row).to_have_attribute("data-status", "succeeded", timeout=JOB_TIMEOUT_MS)
    expect(row.locator(".ratio")).to_have_text(re.compile(r"^\d+\.\d\d×$"))
    expect(row.locator("[role=progressbar]")).to_have_attribute("aria-valuenow", "100")

    page.select_option("#status-filter", "failed")
    expect(page.locator(".empty")).to_have_text("No failed jobs.")
    page.select_option("#status-filter", "succeeded")
    expect(row).to_be_visible()

    row.locator(".model a").click()
    page.wait_for_url(re.compile(f"#/jobs/{job_id}$"))
    expect(page.locator(".job-head .badge")).to_have_text("succeeded")
    expect(page.locator("#status-line")).to_contain_text("Finished in")
    samples = page.locator("img[data-artifact='samples.png']")
    expect(samples).to_be_visible()
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=samples.element_handle())
    # The tiny CNN has BatchNorm, so auto synthesised its inputs: steps and images say so.
    expect(page.locator(".stepper li")).to_have_text(
        ["validating", "extracting", "compressing", "distilling", "exporting"]
    )
    expect(page.locator("#latent-walk .placeholder")).to_contain_text("trained none (prior: synthesis)")

    table = page.locator("#before-after")
    for label in ("Parameters", "File size", "MACs per input", "CPU latency, batch 1", "batch 64"):
        expect(table).to_contain_text(label)
    expect(page.locator("#layers tbody tr")).not_to_have_count(0)
    expect(page.locator("#student-form")).to_contain_text("BatchNorm layers folded")
    expect(page.locator("#curves svg.chart").first).to_be_visible()

    with page.expect_download() as pending:
        page.click("[data-download='model']")
    student = Path(pending.value.path()).read_bytes()
    assert student.startswith(b"PK"), "the student is not a TorchScript zip"
    assert pending.value.suggested_filename == "tiny-student.pt"

    key = server.key
    assert key not in page.url
    assert v1_requests, "the dashboard made no API call"
    for request in v1_requests:
        assert request.headers.get("authorization") == f"Bearer {key}", request.url
    assert not blocked.urls, f"the dashboard tried to reach the internet: {blocked.urls}"

    page.click("#sign-out")
    expect(page.locator("#api-key")).to_be_visible()
    assert page.evaluate("sessionStorage.length") == 0


def test_cancel_a_job(signed_in: Page, teacher_file: Path) -> None:
    page = signed_in
    submit_job(page, teacher_file, preset="paper")
    cancel = page.locator("#cancel-job")
    expect(cancel).to_be_visible()
    cancel.click()
    expect(page.locator(".job-head .badge")).to_have_text("cancelled", timeout=JOB_TIMEOUT_MS)
    expect(cancel).to_be_hidden()
