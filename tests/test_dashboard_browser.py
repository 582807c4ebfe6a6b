"""The dashboard in a real browser: Debian's Chromium, headless, driven over the DevTools pipe.

No console errors or exceptions, every chart drawn, the sample videos decoded, the runs table
filterable; a full-page screenshot is kept at tests/artifacts/dashboard*.png (git-ignored; set
DASHBOARD_ARTIFACTS to put it elsewhere). Install the browser: apt-get install -y chromium (root).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from components.paper import RECONSTRUCTION
from dashboards.browser import find_chromium, inspect_page
from dashboards.build import build_dashboard
from dashboards.demo import write_demo_store
from tests.conftest import REPO

pytestmark = pytest.mark.skipif(find_chromium() is None,
                                reason="chromium not installed (apt-get install -y --no-install-recommends chromium)")

ARTIFACTS = Path(os.environ.get("DASHBOARD_ARTIFACTS", REPO / "tests" / "artifacts"))

FILTER_JS = """(() => {
  const sel = document.getElementById("stage-filter"), text = document.getElementById("text-filter");
  const visible = () => [...document.querySelectorAll("#runs-table tbody tr")].filter(r => r.style.display !== "none").length;
  sel.value = "pretrain"; sel.dispatchEvent(new Event("change"));
  const byStage = visible();
  text.value = "xy=8"; text.dispatchEvent(new Event("input"));
  const byBoth = visible();
  sel.value = ""; sel.dispatchEvent(new Event("change")); text.value = "stand-in"; text.dispatchEvent(new Event("input"));
  const none = visible();
  text.value = ""; text.dispatchEvent(new Event("input"));
  return [byStage, byBoth, none, visible()];
})()"""


# Per chart: the point labels' boxes as drawn, pairs that intersect, labels outside the chart.
LABELS_JS = """(() => [...document.querySelectorAll(".chart")].map(c => {
  const svg = c.querySelector("svg");
  if (!svg) return {title: c.dataset.chart, labels: 0, overlaps: [], outside: 0};
  const frame = svg.getBoundingClientRect(), tol = 0.5;
  const boxes = [...c.querySelectorAll("text.point-label")].map(t => [t.textContent, t.getBoundingClientRect()]);
  const overlaps = [];
  let outside = 0;
  boxes.forEach(([name, a], i) => {
    if (a.left < frame.left - tol || a.right > frame.right + tol || a.top < frame.top - tol || a.bottom > frame.bottom + tol) outside++;
    for (const [other, b] of boxes.slice(i + 1)) {
      if (a.left < b.right - tol && b.left < a.right - tol && a.top < b.bottom - tol && b.top < a.bottom - tol) overlaps.push([name, other]);
    }
  });
  return {title: c.dataset.chart, labels: boxes.length, overlaps: overlaps, outside: outside};
}))()"""


def assert_labels_apart(charts: list[dict], paper_rows: int) -> None:
    """No two point labels intersect (the paper's rows cluster at similar token counts) and none is cut off."""
    by_title = {c["title"]: c for c in charts}
    for title in ("PSNR vs tokens", "RFVD vs tokens"):
        assert by_title[title]["labels"] >= paper_rows, by_title[title]
    for chart in charts:
        assert chart["overlaps"] == [] and chart["outside"] == 0, chart


def assert_clean(result: dict) -> None:
    assert result["loaded"]
    assert result["console_errors"] == [] and result["exceptions"] == [] and result["log_errors"] == []
    state = result["state"]
    assert state["ready"]
    assert state["sections"] == ["runs", "frontier", "sweep", "curves", "generation", "media"]
    for chart in state["charts"]:
        assert chart["rendered"] and chart["marks"] > 0 and chart["svg_shapes"] >= chart["marks"], chart


def test_dashboard_in_chromium(tmp_path):
    store = write_demo_store(tmp_path / "store")
    out = tmp_path / "dashboard"
    build_dashboard(store["tracking_uri"], "coordtok", store["sweep_storage"], out)
    shot = ARTIFACTS / "dashboard.png"
    result = inspect_page(out / "index.html", shot, expressions=[FILTER_JS, LABELS_JS])
    print(f"dashboard screenshot: {shot}")
    assert_clean(result)
    state = result["state"]
    titles = {c["title"] for c in state["charts"]}
    assert {"PSNR vs tokens", "LPIPS vs tokens", "RFVD vs tokens", "Pareto front", "pretrain: loss",
            "parameter importance: test_psnr", "FVD"} <= titles
    # videos: present and decoded by the browser (H.264 in MP4); frame grids and GIFs drawn
    assert len(state["videos"]) == 2
    for video in state["videos"]:
        assert video["loaded"] == "1" and video["ready_state"] >= 2 and video["width"] == 66  # 2 x 32 + 2 gap
    assert len(state["images"]) == 4 and all(i["width"] > 0 for i in state["images"])
    assert state["table_rows"] == 17
    # filter: stage select and text (AND of words); the stand-in runs are finetune and evaluate
    assert result["values"][0] == [3, 2, 2, 17]
    assert_labels_apart(result["values"][1], len(RECONSTRUCTION))
    assert shot.stat().st_size > 50_000


@pytest.mark.slow
def test_dashboard_of_a_real_tiny_run_in_chromium(tmp_path, tiny_params_file, ray_local, monkeypatch):
    """Built by the stage from a store holding one real synthesize run: missing stages say so."""
    from components.config import load_params
    from pipelines.common import tracking
    from pipelines.dashboard import dashboard
    from pipelines.synthesize import synthesize

    monkeypatch.setattr(tracking, "_USER_TRACKING_URI", "")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    raw = yaml.safe_load(tiny_params_file.read_text())
    raw["dashboard"] = {"out_dir": str(tmp_path / "reports" / "dashboard")}
    tiny_params_file.write_text(yaml.safe_dump(raw))
    params = load_params(tiny_params_file)
    synthesize(params, tmp_path)
    dashboard(params, tmp_path)
    shot = ARTIFACTS / "dashboard-tiny-run.png"
    result = inspect_page(tmp_path / "reports" / "dashboard" / "index.html", shot)
    print(f"dashboard screenshot: {shot}")
    assert_clean(result)
    state = result["state"]
    assert state["table_rows"] == 1 and state["videos"] == []
    notes = " | ".join(state["notes"])
    for stage in ("pretrain", "finetune", "extract_latents", "train_sit", "evaluate"):
        assert f"no runs of stage {stage} yet" in notes
    assert "no runs of stage pretrain / finetune / evaluate with PSNR" in notes
    assert "no runs with sample videos" in notes
    # the paper's reference points are still drawn (6 reconstruction rows; 4 generation rows)
    charts = {c["title"]: c for c in state["charts"]}
    assert charts["PSNR vs tokens"]["marks"] == 6 and charts["FVD"]["marks"] == 4


def test_checker_sees_errors(tmp_path):
    """The browser check is not blind: a console error, an exception and a missing file all show."""
    page = tmp_path / "broken.html"
    page.write_text('<!doctype html><html><body><img src="missing.png">'
                    '<script>console.error("boom"); document.body.dataset.ready = "1"; null.x;</script></body></html>')
    result = inspect_page(page, settle_s=1)
    assert result["console_errors"] == ["boom"]
    assert len(result["exceptions"]) == 1 and "TypeError" in result["exceptions"][0]
    assert any("missing.png" in (e or "") or "ERR_FILE_NOT_FOUND" in (e or "") for e in result["log_errors"]), result
