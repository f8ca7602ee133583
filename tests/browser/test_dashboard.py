"""The dashboard in a real browser: sign-in, live jobs, an experiment's charts, compare,
service, keyboard use. Each page leaves a screenshot (see `tests.browser.conftest`)."""

from __future__ import annotations

import csv
import io
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from llem_service.energy.meter import NvmlEnergyMeter
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

from tests.browser.conftest import Page
from tests.conftest import LiveServer, make_config
from tests.fake_nvml import FakeGpu, FakeNvml, PowerProfile
from tests.fake_powercap import ScriptedPowercap, SteadyDraw
from tests.fakes import FAKE_DEVICE, FAKE_SENSOR, FakeInferenceBackend, fake_meter

pytestmark = pytest.mark.browser

TOKEN = "browser-test-token-0123456789"

#: A scripted GPU whose power moves: idle through the baseline, ramping up while the model
#: loads, then prefill peaks over decode in the rhythm of the fake's batches, then idle
#: again. Its temperature rises slowly (warming, not yet a drift the result warns about).
#: Times count from the experiment's first NVML call; its first counter mark comes up to a
#: second later (the sampler's process starts in between), hence the margins: the baseline
#: (0.6 s) ends before 1.6 s, and the window opens after the load (1.5 s), past the ramp.
BUSY_GPU = FakeGpu(
    uuid=FAKE_DEVICE.uuid,
    name=FAKE_DEVICE.name,
    counter_period_s=0.005,
    temperature_c=(38, 1.0),
    profile=PowerProfile(
        (
            (1.6, 68.0),
            (0.25, 140.0),
            (0.25, 260.0),
            *((0.094, 430.0), (0.281, 315.0)) * 20,
            (1.0, 90.0),
        )
    ),
)


def busy_meter(powercap: ScriptedPowercap) -> NvmlEnergyMeter:
    """The real meter over `BUSY_GPU`, its sensor described as the operator would (the fake's
    accuracy, whole-period sensing), the host's RAPL counters in ``powercap``."""
    return NvmlEnergyMeter(
        library=FakeNvml(gpus=(BUSY_GPU,)),
        sensors=FAKE_SENSOR,
        powercap_root=str(powercap.class_root),
    )


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
    # What the service says of itself: its executor, each GPU's MIG mode and what runs on it,
    # and the CUDA device order the indices follow.
    info = httpx.get(
        f"{server.base_url}/v1/info", headers={"Authorization": f"Bearer {TOKEN}"}
    ).json()
    about = p.driver.find_element(By.ID, "about").text
    assert f"Executor\n{info['executor']} available" in about
    devices = p.driver.find_element(By.ID, "devices").text
    assert f"CUDA_DEVICE_ORDER={info['cuda_device_order']}" in devices
    assert f"GPUs in use\n0 of {len(info['gpus'])}" in devices
    cells = p.js(
        "return [...document.querySelectorAll('#devices-table tbody tr')]"
        ".map(r => [...r.cells].map(c => c.textContent))"
    )
    assert [(c[2], c[4], c[5]) for c in cells] == [
        (d["uuid"], d["mig_mode"], "free") for d in info["devices"]
    ]
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
    progress: list[str] = []

    row = f"document.querySelector('tr[data-job-id=\"{job_id}\"]')"

    def status() -> str | None:
        value, text = p.js(
            f"const r = {row}; return r ? [r.dataset.status, "
            "r.querySelector('.progress').textContent] : [null, null]"
        )
        if value and (not seen or seen[-1] != value):
            seen.append(value)
            if value == "running":
                p.screenshot("jobs-running")
        if text and (not progress or progress[-1] != text):
            progress.append(text)
        return str(value) if value else None

    p.wait(
        lambda: status() == "succeeded", timeout_s=60, what=f"job {job_id} to succeed in the list"
    )
    assert "running" in seen, seen
    assert seen[-1] == "succeeded"
    assert p.js("return window.__noReload") is True
    # The progress moved through the measured requests as the job's stream told it (the fake
    # finishes a batch of 2 every 1.5 s), and ends as done.
    assert "measuring 2/4 requests" in progress, progress
    assert progress[-1] == "done", progress
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
    start_server: Callable[..., LiveServer], page: Callable[[str], Page], tmp_path: Path
) -> None:
    # The fake reports the time it really takes, so the figures agree with the timeline, and
    # takes long enough (3 s on a counter updating every 5 ms) for the figures to be published.
    backend = FakeInferenceBackend(
        sleep_s=1.5, measured_time_s=1.5, load_sleep_s=1.5, load_time_s=1.5
    )
    powercap = ScriptedPowercap(tmp_path / "powercap")
    server = start_server(backend=backend, meter=busy_meter(powercap))
    # The CPU package draws 45 W (its cores 30 W of it), the DRAM 6 W, all along.
    draw = {"intel-rapl:0": 45.0, "intel-rapl:0:0": 30.0, "intel-rapl:0:2": 6.0}
    with SteadyDraw(powercap, draw):
        job_id = submit(
            server,
            name="timeline",
            n_prompts=8,
            repeats=2,
            # No settling wait: the scripted GPU is idle from the start (the wait fits a trend
            # over 15 s at least).
            baseline={"enabled": True, "duration_s": 0.6, "settle_max_s": 0},
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
    p.screenshot("experiment-temperature")
    energy = httpx.get(f"{server.base_url}/v1/experiments/{job_id}/result").json()["energy"]
    _check_energy_sections(p, job_id, energy)


def _estimates(p: Page, css: str) -> list[dict[str, float] | None]:
    """The Estimates the page shows in ``css`` cells, in order: None where it says "not
    published"."""
    cells = p.js(
        "return [...document.querySelectorAll(arguments[0])].map(c => {"
        "  const e = c.querySelector('.estimate');"
        "  if (e) return {value: +e.dataset.value, total: +e.dataset.total,"
        "    random: +e.dataset.random, systematic: +e.dataset.systematic, title: e.title};"
        "  return c.querySelector('.unpublished') ? null : 'neither';"
        "})",
        css,
    )
    assert "neither" not in cells, cells
    return list(cells)


def _as_shown(e: dict[str, float] | None) -> dict[str, Any] | None:
    return None if e is None else {k: pytest.approx(e[k]) for k in e}


def _check_energy_sections(p: Page, job_id: str, energy: dict[str, Any]) -> None:
    """Every section drawn from the result's energy shows the result's own figures."""
    _check_requests(p, job_id, energy)
    _check_budget_and_figures(p, energy)
    _check_phases(p, job_id, energy)
    _check_acquisition(p, energy)
    for section in ("energy", "uncertainty", "requests", "baseline", "acquisition"):
        p.screenshot_of(f"experiment-{section}", f"#{section}")


def _check_requests(p: Page, job_id: str, energy: dict[str, Any]) -> None:
    # Each request's energy, raw as bars and adjusted as dots, each with its ± total.
    requests = energy["requests"]
    assert requests is not None
    assert requests["adjusted_energy_j"] is not None
    chart = f"window.llem.charts['per-request:{job_id}']"
    raw, adjusted = p.js(f"return [{chart}.data[1], {chart}.data[2]]")
    assert raw == pytest.approx([e["value"] for e in requests["energy_j"]])
    assert adjusted == pytest.approx([e["value"] for e in requests["adjusted_energy_j"]])
    totals = p.js(f"return {chart}.llem.totals[1]")
    assert totals == pytest.approx([e["total"] for e in requests["energy_j"]])
    shown = _estimates(p, "#request-percentiles tbody td:nth-child(2)")
    wanted = [requests["energy_per_output_token_j"][k] for k in ("mean", "p50", "p90", "p99")]
    assert [{k: e[k] for k in ("value", "total")} for e in shown if e] == [
        {"value": pytest.approx(e["value"]), "total": pytest.approx(e["total"])} for e in wanted
    ]
    steady = _estimates(p, "#steady-state dd[data-figure='steady_state']")
    steady_state = requests["steady_state"]["energy_per_output_token_j"]
    assert steady[0] is not None
    assert steady[0]["value"] == pytest.approx(steady_state["value"])
    assert "does not add up" in p.driver.find_element(By.ID, "steady-state").text


def _check_budget_and_figures(p: Page, energy: dict[str, Any]) -> None:
    # The uncertainty budget: the result's terms, in its order, with their contributions.
    terms = p.js(
        "return [...document.querySelectorAll('#budget tbody tr[data-term]')]"
        ".map(r => [r.dataset.term, r.dataset.kind, +r.dataset.contribution, +r.dataset.share])"
    )
    budget = energy["uncertainty"]
    assert terms == [
        [t["name"], t["kind"], pytest.approx(t["contribution"]), pytest.approx(t["share"])]
        for t in budget["terms"]
    ]
    assert len(terms) >= 3

    # The headline figures, their random and systematic parts on hover.
    figures = _estimates(p, "#energy-figures tbody td:nth-child(2)")
    keys = ["energy_j", "adjusted_energy_j", "baseline_power_w"]
    keys += ["energy_per_output_token_j", "adjusted_energy_per_output_token_j"]
    for key, e in zip(keys, figures, strict=True):
        assert e is not None, key
        assert {k: e[k] for k in ("value", "total", "random", "systematic")} == _as_shown(
            energy[key]
        ), key
        assert "random" in str(e["title"])
        assert "systematic" in str(e["title"])


def _check_phases(p: Page, job_id: str, energy: dict[str, Any]) -> None:
    # A phase the run could not bound: "not published", beside the warning that says why.
    phases = p.js(
        "return [...document.querySelectorAll('#phases tbody tr')].map(r => r.textContent)"
    )
    warnings = httpx.get(p.base_url + f"/v1/experiments/{job_id}/result").json()["warnings"]
    null_phases = [ph for ph in energy["phases"] if ph["energy_j"] is None]
    assert null_phases, "the fake's warm-up takes no time: its energy cannot be bounded"
    for phase, text in zip(energy["phases"], phases, strict=True):
        if phase["energy_j"] is None:
            why = next(
                w["message"]
                for w in warnings
                if w["message"].startswith(f"The {phase['phase']} phase's energy is null")
            )
            assert "not published" in text, phase["phase"]
            assert why in text, phase["phase"]
        else:
            assert "not published" not in text, phase["phase"]
        assert phase["method"] in text


def _check_acquisition(p: Page, energy: dict[str, Any]) -> None:
    # Baselines, acquisition and placement, as the result has them.
    base = energy["baselines"][0]
    baseline_row = p.driver.find_element(By.CSS_SELECTOR, "#baselines tbody tr").text
    assert "(settled)" in baseline_row
    assert f"±{base['drift_bound_w']:.3g} W" in baseline_row
    readings = energy["acquisition"]["power"][0]
    row = p.js(
        "return [...document.querySelectorAll('#power-readings tbody td')].map(c => c.textContent)"
    )
    assert row[4:] == [
        f"{readings[k]:,}"
        for k in ("readings", "kept", "repeats_dropped", "nonpositive_dropped", "failed")
    ]
    throttled = p.js(
        "return [...document.querySelectorAll('#throttling [data-cause]')]"
        ".map(c => [c.dataset.cause, c.textContent])"
    )
    causes = energy["acquisition"]["throttling"][0]
    assert [c for c, _ in throttled] == [
        "power_capped",
        "thermal",
        "hardware_slowdown",
        "clock_limited",
    ]
    for cause, text in throttled:
        fraction = causes[cause]["fraction"]
        assert text.startswith("unknown" if fraction is None else f"{fraction * 100:.3g} %")
    detection = p.driver.find_element(By.ID, "process-detection").text
    assert energy["acquisition"]["process_detection"][0]["detection"] in detection
    own = energy["acquisition"]["processes"][0]
    assert str(own["pid"]) in p.driver.find_element(By.ID, "processes").text
    placement = p.driver.find_element(By.ID, "placement").text
    assert FAKE_DEVICE.uuid in placement
    assert "No other experiment overlapped this one." in placement
    host = energy["host"]
    assert host["available"] is True
    assert host["cpu_energy_j"]["value"] == pytest.approx(45 * energy["window_s"], rel=0.05)
    shown = p.driver.find_element(By.ID, "host").text
    # packages + DRAM first, an Estimate like any other energy figure
    first = p.js("return {...document.querySelector('#host dd .estimate').dataset}")
    assert {k: float(v) for k, v in first.items()} == _as_shown(host["energy_j"])
    assert "package-0" in shown
    assert "dram-0" in shown


#: Energy rows of the compare table and where each figure lives in a result's energy.
COMPARED = {
    "Energy (J)": ("energy_j",),
    "J per output token": ("energy_per_output_token_j",),
    "Per-request J/token p50": ("requests", "energy_per_output_token_j", "p50"),
    "Per-request J/token p90": ("requests", "energy_per_output_token_j", "p90"),
    "Steady-state decode J/token": ("requests", "steady_state", "energy_per_output_token_j"),
}


def _figure(result: dict[str, Any], path: tuple[str, ...]) -> dict[str, float]:
    value: Any = result["energy"]
    for key in path:
        value = value[key]
    assert value is not None, path
    return dict(value)


def test_compare_highlights_what_differs(
    start_server: Callable[..., LiveServer], page: Callable[[str], Page]
) -> None:
    # Fakes that take real time on a fast counter: every figure compared is published.
    server = start_server(
        backend=FakeInferenceBackend(sleep_s=0.25), meter=fake_meter(counter_period_s=0.001)
    )
    first = submit(server, name="batch 2", batch_size=2)
    second = submit(server, name="batch 4", batch_size=4, max_output_tokens=8)
    assert wait_done(server, first) == wait_done(server, second) == "succeeded"
    results = [
        httpx.get(f"{server.base_url}/v1/experiments/{i}/result").json() for i in (first, second)
    ]
    p = page(server.base_url)

    p.open(f"/ui/compare?ids={first},{second}")

    differing = p.js(
        "return [...document.querySelectorAll('#compare-config tr.row-differs th')]"
        ".map(th => th.textContent)"
    )
    assert "batch_size" in differing
    assert "name" in differing
    assert "model" not in differing
    # An energy figure differs significantly when the gap exceeds the two Estimates' totals
    # in quadrature, and is marked within uncertainty otherwise.
    cells = p.js(
        "const out = {};"
        "for (const r of document.querySelectorAll('#compare-figures tbody tr'))"
        "  out[r.dataset.metric] = [...r.querySelectorAll('td')].map(c => [c.className, c.title]);"
        "return out"
    )
    significant = {}
    for label, path in COMPARED.items():
        ref, other = (_figure(r, path) for r in results)
        (_, ref_title), (classes, title) = cells[label]
        assert "random" in ref_title, label
        assert "systematic" in title, label
        if other["value"] == ref["value"]:
            assert "differs" not in classes, label
            continue
        significant[label] = abs(other["value"] - ref["value"]) > math.hypot(
            ref["total"], other["total"]
        )
        assert ("significant" in classes) == significant[label], (label, classes)
        assert ("within" in classes) == (not significant[label]), (label, classes)
    # Twice the tokens for the same time: J/token halves, far beyond its uncertainty.
    assert significant["J per output token"] is True
    assert "worse" not in cells["J per output token"][1][0]
    # No baseline on either: the adjusted figures are not published, alike.
    assert cells["Adjusted J per output token"][1][0].split() == ["num", "unpublished"]
    p.screenshot("compare")
    p.driver.find_element(By.ID, "only-differences").click()
    hidden = p.js(
        "return getComputedStyle(document.querySelector('#compare-config tr.row-same')).display"
    )
    assert hidden == "none"


def test_a_figure_the_run_could_not_bound_is_not_published_and_says_why(
    start_server: Callable[..., LiveServer], page: Callable[[str], Page]
) -> None:
    # The default fake's measured window takes no real time: its per-token energy cannot be
    # bounded, and the result says so in a warning instead of giving a number.
    server = start_server()
    job_id = submit(server)
    assert wait_done(server, job_id) == "succeeded"
    result = httpx.get(f"{server.base_url}/v1/experiments/{job_id}/result").json()
    assert result["energy"]["energy_per_output_token_j"] is None
    why = next(w["message"] for w in result["warnings"] if w["message"].startswith("J/token is"))
    p = page(server.base_url)

    p.open(f"/ui/experiments/{job_id}")

    row = p.driver.find_element(
        By.CSS_SELECTOR, "#energy-figures tr[data-figure='energy_per_output_token_j']"
    ).text
    assert "not published" in row
    assert why in row
    assert why in p.driver.find_element(By.ID, "summary").text
    # No baseline was asked for: the adjusted figures say that, not a guess.
    adjusted = p.driver.find_element(
        By.CSS_SELECTOR, "#energy-figures tr[data-figure='adjusted_energy_j']"
    ).text
    assert "no idle baseline was taken (baseline.enabled is false)" in adjusted
    # The budget still shows what the unpublished figure's uncertainty is made of.
    headline = p.driver.find_element(By.CSS_SELECTOR, "#uncertainty [data-unpublished]").text
    assert "is not published" in headline
    assert why in headline
    assert p.js("return document.querySelectorAll('#budget tr[data-term]').length") == len(
        result["energy"]["uncertainty"]["terms"]
    )
    p.screenshot("experiment-not-published")


def test_an_experiment_without_energy_says_not_measured_on_every_view(
    start_server: Callable[..., LiveServer], page: Callable[[str], Page]
) -> None:
    # On the CPU there is no GPU to meter: the result's energy is null, with a warning.
    server = start_server(backend=FakeInferenceBackend(gpu=False))
    first, second = submit(server, name="cpu 1"), submit(server, name="cpu 2")
    assert wait_done(server, first) == wait_done(server, second) == "succeeded"
    result = httpx.get(f"{server.base_url}/v1/experiments/{first}/result").json()
    assert result["energy"] is None
    p = page(server.base_url)

    p.open(f"/ui/experiments/{first}")

    why = next(w["message"] for w in result["warnings"] if w["code"] == "energy_unavailable")
    assert f"Energy\nnot measured\n{why}" in p.driver.find_element(By.ID, "summary").text
    assert why in p.driver.find_element(By.ID, "energy").text
    sections = p.js("return [...document.querySelectorAll('main section')].map(s => s.id)")
    assert "requests" not in sections
    assert "acquisition" not in sections
    p.open(f"/ui/compare?ids={first},{second}")
    row = p.driver.find_element(By.CSS_SELECTOR, "#compare-figures tr[data-metric='Energy (J)']")
    assert row.text == "Energy (J) not measured not measured"


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
