"""The dashboard in a real browser: sign-in, live jobs, an experiment's charts, compare,
service, keyboard use. Each page leaves a screenshot (see `tests.browser.conftest`)."""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from llem_service.energy.meter import NvmlEnergyMeter
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

from tests.browser.conftest import Page
from tests.conftest import LiveServer, make_config
from tests.fake_nvml import FakeGpu, FakeNvml, PowerProfile
from tests.fakes import FAKE_DEVICE, FakeInferenceBackend

pytestmark = pytest.mark.browser

TOKEN = "browser-test-token-0123456789"

#: A scripted GPU whose power moves: idle, a load ramp, then prefill peaks over decode.
BUSY_GPU = FakeGpu(
    uuid=FAKE_DEVICE.uuid,
    name=FAKE_DEVICE.name,
    counter_period_s=0.005,
    temperature_c=(38, 4.0),
    profile=PowerProfile(
        (
            (0.9, 68.0),
            (0.5, 140.0),
            (0.4, 260.0),
            *((0.12, 430.0), (0.28, 315.0)) * 40,
            (1.0, 90.0),
        )
    ),
)


def busy_meter() -> NvmlEnergyMeter:
    return NvmlEnergyMeter(library=FakeNvml(gpus=(BUSY_GPU,)))


def submit(server: LiveServer, token: str | None = None, **overrides: Any) -> str:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    body = make_config(**overrides).model_dump(mode="json", exclude_unset=True)
    response = httpx.post(f"{server.base_url}/v1/experiments", json=body, headers=headers)
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def wait_done(
    server: LiveServer, job_id: str, token: str | None = None, timeout_s: float = 60
) -> str:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = httpx.get(f"{server.base_url}/v1/experiments/{job_id}", headers=headers).json()
        if status["status"] in {"succeeded", "failed", "cancelled"}:
            return str(status["status"])
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not end")


def sign_in(p: Page, token: str) -> None:
    field = p.driver.find_element(By.ID, "token")
    field.send_keys(token, Keys.ENTER)


def test_the_page_asks_for_the_token_and_refuses_a_wrong_one(
    start_server: Callable[..., LiveServer], page: Callable[[str], Page]
) -> None:
    server = start_server(token=TOKEN)
    p = page(server.base_url)
    # The refused sign-in is a 401 the browser reports on its console: expected here only.
    p.allowed.append(
        "/ui/session - Failed to load resource: the server responded with a status of 401"
    )

    p.open("/")

    assert p.driver.current_url == f"{server.base_url}/ui"
    assert p.js("return document.activeElement.id") == "token"
    p.screenshot("sign-in")
    sign_in(p, "not-the-token")
    error = p.wait(lambda: p.driver.find_element(By.ID, "sign-in-error").text, what="the refusal")
    assert "Refused: that is not this server's token" in error
    p.screenshot("sign-in-refused")
    assert p.driver.get_cookies() == []

    sign_in(p, TOKEN)
    p.wait(
        lambda: p.js("return document.getElementById('main').dataset.view") == "jobs", what="jobs"
    )
    p.wait_ready()

    cookie = p.driver.get_cookie("llem_session")
    assert cookie["httpOnly"] is True
    assert cookie["sameSite"] == "Strict"
    assert p.js("return document.cookie") == ""  # scripts cannot read the session
    assert TOKEN not in p.driver.page_source
    assert TOKEN not in p.driver.current_url
    assert TOKEN not in p.js("return JSON.stringify(sessionStorage) + JSON.stringify(localStorage)")
    # A reload keeps the session: the page does not ask again.
    p.open("/ui/service")
    assert p.js("return document.getElementById('main').dataset.view") == "service"
    p.screenshot("service")


def test_a_job_submitted_through_the_api_appears_and_moves_without_a_reload(
    start_server: Callable[..., LiveServer], page: Callable[[str], Page]
) -> None:
    server = start_server(backend=FakeInferenceBackend(sleep_s=3.0), token=TOKEN)
    p = page(server.base_url)
    p.open("/ui")
    sign_in(p, TOKEN)
    p.wait(
        lambda: p.js("return document.getElementById('main').dataset.view") == "jobs", what="jobs"
    )
    p.wait_ready()
    p.js("window.__noReload = true")

    job_id = submit(server, TOKEN)

    seen: list[str] = []

    row = f"document.querySelector('tr[data-job-id=\"{job_id}\"]')"

    def status() -> str | None:
        value: str | None = p.js(f"const r = {row}; return r && r.dataset.status")
        if value and (not seen or seen[-1] != value):
            seen.append(value)
            if value == "running":
                p.screenshot("jobs-running")
        return value

    p.wait(
        lambda: status() == "succeeded", timeout_s=60, what=f"job {job_id} to succeed in the list"
    )
    assert "running" in seen, seen
    assert seen[-1] == "succeeded"
    assert p.js("return window.__noReload") is True
    progress = p.js(f"return {row}.querySelector('.progress').textContent")
    assert progress == "done 4/4 requests"
    p.screenshot("jobs")


def _timeline_rows(server: LiveServer, job_id: str) -> dict[str, list[Any]]:
    """The GPU's rows of the timeline, as the API serves them in CSV."""
    text = httpx.get(f"{server.base_url}/v1/experiments/{job_id}/timeseries?format=csv").text
    rows = [r for r in csv.DictReader(io.StringIO(text)) if r["device_uuid"] == FAKE_DEVICE.uuid]
    return {
        "t_s": [float(r["t_s"]) for r in rows],
        "power_w": [float(r["power_w"]) for r in rows],
        "phase": [r["phase"] for r in rows],
    }


def test_an_experiment_page_draws_every_point_of_the_power_timeline(
    start_server: Callable[..., LiveServer], page: Callable[[str], Page]
) -> None:
    # The fake reports the time it really takes, so the figures agree with the timeline.
    backend = FakeInferenceBackend(sleep_s=3.0, measured_time_s=3.0)
    server = start_server(backend=backend, meter=busy_meter())
    job_id = submit(
        server,
        name="timeline",
        n_prompts=8,
        repeats=2,
        baseline={"enabled": True, "duration_s": 0.6},
    )
    assert wait_done(server, job_id) == "succeeded"
    expected = _timeline_rows(server, job_id)
    p = page(server.base_url)

    p.open(f"/ui/experiments/{job_id}")

    name = f"power:{job_id}:{FAKE_DEVICE.uuid}"
    p.wait(lambda: p.js("return !!window.llem.charts[arguments[0]]", name), what="the power chart")
    xs, power = p.js(
        "const c = window.llem.charts[arguments[0]]; return [c.data[0], c.data[1]]", name
    )
    assert len(xs) == len(expected["t_s"]) > 100
    assert xs == pytest.approx(expected["t_s"])
    assert power == pytest.approx(expected["power_w"])
    # The phases are shaded, run by run as the timeline labels its samples, and the measured
    # window is the span of the measured phases.
    runs = p.js("return window.llem.charts[arguments[0]].llem.runs.map(r => r.phase)", name)
    assert runs == [
        ph for i, ph in enumerate(expected["phase"]) if i == 0 or expected["phase"][i - 1] != ph
    ]
    assert {"baseline", "prefill", "decode"} <= set(runs)
    window = p.js("return window.llem.charts[arguments[0]].llem.measuredWindow", name)
    measured = [
        t
        for t, ph in zip(expected["t_s"], expected["phase"], strict=True)
        if ph in {"prefill", "decode", "between_batches"}
    ]
    assert window == {"start": pytest.approx(measured[0]), "end": pytest.approx(measured[-1])}
    p.screenshot("experiment")
    p.screenshot_top("experiment-summary-and-timeline", 1420)

    # Temperature on demand: a second series, the timeline's own values.
    p.driver.find_element(By.CSS_SELECTOR, "input[name='temperature_c']").click()
    p.wait(
        lambda: p.js(
            "const c = window.llem.charts[arguments[0]]; return c && c.data.length === 3", name
        ),
        what="temperature",
    )
    temperature = p.js("return window.llem.charts[arguments[0]].data[2]", name)
    assert len(temperature) == len(xs)
    assert max(temperature) > min(temperature)  # the scripted GPU warms up
    per_request = p.js(f"return window.llem.charts['per-request:{job_id}'].data[1]")
    result = httpx.get(f"{server.base_url}/v1/experiments/{job_id}/result").json()
    assert per_request == pytest.approx(result["energy"]["per_request_energy_j"])
    texts = p.driver.find_element(By.ID, "uncertainty").text
    assert "Raw energy, stated" in texts
    p.screenshot("experiment-temperature")


def test_compare_highlights_what_differs(
    start_server: Callable[..., LiveServer], page: Callable[[str], Page]
) -> None:
    server = start_server()
    first = submit(server, name="batch 2", batch_size=2)
    second = submit(server, name="batch 4", batch_size=4)
    assert wait_done(server, first) == wait_done(server, second) == "succeeded"
    p = page(server.base_url)

    p.open(f"/ui/compare?ids={first},{second}")

    differing = p.js(
        "return [...document.querySelectorAll('#compare-config tr.row-differs th')]"
        ".map(th => th.textContent)"
    )
    assert "batch_size" in differing
    assert "name" in differing
    assert "model" not in differing
    p.screenshot("compare")
    p.driver.find_element(By.ID, "only-differences").click()
    hidden = p.js(
        "return getComputedStyle(document.querySelector('#compare-config tr.row-same')).display"
    )
    assert hidden == "none"


def test_every_view_is_usable_from_the_keyboard(
    start_server: Callable[..., LiveServer], page: Callable[[str], Page]
) -> None:
    server = start_server()
    job_id = submit(server)
    assert wait_done(server, job_id) == "succeeded"
    p = page(server.base_url)
    views = ("/ui", f"/ui/experiments/{job_id}", "/ui/compare", "/ui/service", "/ui/studies")
    for path in (*views, "/ui/nowhere"):
        p.open(path)
        assert p.unlabelled_controls() == [], path
        assert p.js("return document.activeElement.tagName") == "H1", path

    # The skip link comes first in the tab order, and takes the focus to the content.
    p.open("/ui")
    p.js("document.querySelector('header .brand').focus()")
    p.driver.switch_to.active_element.send_keys(Keys.SHIFT, Keys.TAB)
    assert p.js("return document.activeElement.className") == "skip-link"
    p.driver.switch_to.active_element.send_keys(Keys.ENTER)
    p.wait(lambda: p.js("return document.activeElement.id") == "main", what="focus on the content")
    # Tab walks the views from the brand on; Enter follows one.
    p.js("document.querySelector('header .brand').focus()")
    for _ in range(5):
        p.driver.switch_to.active_element.send_keys(Keys.TAB)
        if p.js("return document.activeElement.textContent") == "Service":
            break
    p.driver.switch_to.active_element.send_keys(Keys.ENTER)
    p.wait(
        lambda: p.js("return document.getElementById('main').dataset.view") == "service",
        what="service",
    )
    p.wait_ready()
    assert p.js("return document.activeElement.textContent") == "Service"  # the view's heading
    # The jobs table: its checkboxes and buttons are reachable and named.
    p.open("/ui")
    names = p.js(
        "return [...document.querySelectorAll('#jobs button, #jobs input')]"
        ".map(e => e.getAttribute('aria-label'))"
    )
    assert f"Run job {job_id[:8]} again with the same config" in names
