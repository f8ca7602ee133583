"""A study in the browser: its runs, the ranked table, and the time-energy frontier charts
marking exactly the points no other point beats."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
from selenium.webdriver.common.by import By

from tests.browser.conftest import Page
from tests.conftest import LiveServer
from tests.fakes import FakeInferenceBackend, fake_meter

BASE: dict[str, Any] = {
    "model": "tiny-test-model",
    "precision": "fp32",
    "prompts": {"input_len": 8},
    "n_prompts": 4,
    "warmup": {"batches": 1},
    "baseline": {"enabled": False},
}


def dominated(p: dict[str, Any], q: dict[str, Any], x: str, larger_x_better: bool) -> bool:
    """q beats p: no worse on J/token and on ``x``, better on one."""
    e = "energy_per_output_token_j"
    better_x = q[x] > p[x] if larger_x_better else q[x] < p[x]
    same_x = q[x] == p[x]
    return bool((q[e] < p[e] and (better_x or same_x)) or (q[e] == p[e] and better_x))


def frontier(points: list[dict[str, Any]], x: str, larger_x_better: bool) -> set[int]:
    return {
        p["point"]
        for p in points
        if not any(dominated(p, q, x, larger_x_better) for q in points if q is not p)
    }


def test_a_studys_frontier_charts_mark_the_points_no_other_beats(
    start_server: Callable[..., LiveServer], page: Callable[[str], Page]
) -> None:
    # The fake backend reports a fixed measured time, so output length moves tokens/s and
    # J/token, and batch size moves the time to first token: a real trade-off to chart. Its
    # runs take real time on a counter updating every millisecond, so every point's J/token
    # is published.
    server = start_server(
        backend=FakeInferenceBackend(sleep_s=0.3), meter=fake_meter(counter_period_s=0.001)
    )
    document = {
        "name": "frontier",
        "base": BASE,
        "sweep": {"batch_size": [1, 2, 4], "max_output_tokens": [2, 4, 8]},
    }
    study = httpx.post(f"{server.base_url}/v1/studies", json=document).json()
    p = page(server.base_url)
    p.open(f"/ui/studies/{study['id']}")
    p.screenshot("study-running")
    deadline = time.monotonic() + 90
    while httpx.get(f"{server.base_url}/v1/studies/{study['id']}").json()["status"] != "succeeded":
        assert time.monotonic() < deadline, "the study did not finish"
        time.sleep(0.2)
    results = httpx.get(f"{server.base_url}/v1/studies/{study['id']}/results").json()
    points = [r for r in results["rows"] if r["kind"] == "point"]
    assert len(points) == 9
    assert all(r["energy_per_output_token_j"] is not None for r in points)

    # The page follows the study to its end without a reload.
    p.wait(
        lambda: p.js("return document.getElementById('main').dataset.status") == "succeeded",
        30,
        "the study to end on the page",
    )

    for chart_id, x, larger in (
        ("frontier-tps", "tokens_per_s", True),
        ("frontier-ttft", "ttft_p90_s", False),
    ):
        name = f"frontier:{study['id']}:{chart_id}"
        drawn_all = "return (window.llem.charts[arguments[0]]?.llem.points.length || 0) === 9"
        p.wait(lambda: p.js(drawn_all, name), what=name)  # noqa: B023 (called at once)
        marked = p.js(
            "const c = window.llem.charts[arguments[0]];"
            "return c.llem.points.filter((pt, i) => c.data[2][i] !== null).map(pt => pt.point)",
            name,
        )
        xs, ys = p.js(
            "const c = window.llem.charts[arguments[0]]; return [c.data[0], c.data[1]]", name
        )
        by_point = {r["point"]: r for r in points}
        drawn = p.js(
            "return window.llem.charts[arguments[0]].llem.points.map(pt => pt.point)", name
        )
        assert ys == [by_point[i]["energy_per_output_token_j"] for i in drawn]
        assert xs == [by_point[i][x] for i in drawn]
        assert set(marked) == frontier(points, x, larger), chart_id
        assert 0 < len(marked) < 9  # a real frontier: some points are beaten
    p.screenshot("study")
    p.screenshot_of("study-frontier", "#frontier")

    # The cheapest point under a latency target: the server's answer, highlighted in the table.
    ttfts = sorted(r["ttft_p90_s"] for r in points)
    limit_ms = (ttfts[0] + ttfts[-1]) / 2 * 1000
    p.driver.find_element(By.ID, "max-ttft").send_keys(f"{limit_ms:.3f}")
    p.driver.find_element(By.CSS_SELECTOR, "#targets button[type=submit]").click()
    meeting = [r for r in points if r["ttft_p90_s"] * 1000 <= float(f"{limit_ms:.3f}")]
    best = min(meeting, key=lambda r: r["energy_per_output_token_j"])
    p.wait(
        lambda: (
            p.js("return document.getElementById('pareto-answer').dataset.best")
            == str(best["point"])
        ),
        what="the answer",
    )
    dimmed = p.js(
        "return [...document.querySelectorAll('#study-ranked tr.excluded')]"
        ".map(r => Number(r.dataset.point))"
    )
    assert sorted(dimmed) == sorted(r["point"] for r in points if r not in meeting)
    p.screenshot("study-targets")
    p.open("/ui/studies")
    listed = p.js(
        "return [...document.querySelectorAll('#studies tbody tr')].map(r => r.textContent)"
    )
    assert len(listed) == 1
    assert "frontier" in listed[0]
    assert "9 / 9" in listed[0]
    p.screenshot("studies")
