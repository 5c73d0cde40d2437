import re
import shutil
import subprocess
import xml.etree.ElementTree as ET

import pytest
import torch

from ssmkit.inference import generate
from ssmkit.profile import Profiler, TraceStore
from ssmkit.profile.balance import expert_load
from ssmkit.profile.report import write_report

from .models import UNITS, prompt, tiny_hybrid

SVG_NS = "{http://www.w3.org/2000/svg}"


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    model = tiny_hybrid()
    store = TraceStore()
    with Profiler(model, store, run_name="report test") as prof:
        generate(model, prompt(batch=2, seqlen=6), max_new_tokens=10)
    path = write_report(store, tmp_path_factory.mktemp("report") / "report.html", prof.run_id,
                        max_timeline_steps=4)
    return path, store, prof.run_id


def _svgs(html: str) -> list[ET.Element]:
    return [ET.fromstring(s) for s in re.findall(r"<svg .*?</svg>", html, flags=re.S)]


def test_report_is_self_contained_with_well_formed_charts_of_every_section(report):
    path, _, _ = report
    html = path.read_text()
    assert html.startswith("<!DOCTYPE html>") and "run 1 report test" in html
    assert not re.search(r"""(src|href)\s*=\s*["'](http|//)""", html)  # nothing loaded from elsewhere
    titles = [svg.find(f"{SVG_NS}title").text for svg in _svgs(html)]
    assert titles == ["decode: call duration per layer type", "prefill: call duration per layer type",
                      "share of the run's wall time by layer type (other: embeddings, head, sampling, Python)",
                      "request 0: the first 4 model calls (hover a bar for its duration)",
                      "tokens routed to each expert / the layer's mean (1 = balanced)"]


def test_timeline_draws_one_bar_per_call_and_heatmap_one_cell_per_expert(report):
    path, store, run_id = report
    svgs = _svgs(path.read_text())
    bars = [r for r in svgs[3].iter(f"{SVG_NS}rect") if r.find(f"{SVG_NS}title") is not None]
    assert len(bars) == 4 * len(UNITS)
    cells = [r for r in svgs[4].iter(f"{SVG_NS}rect")]
    assert len(cells) == 2 * 4  # two MoE layers, four experts
    titles = {c.find(f"{SVG_NS}title").text for c in cells}
    for layer_idx, load in expert_load(store, run_id).items():
        mean = sum(load) / len(load)
        assert {f"layer {layer_idx}, e{e}: {n / mean:g}" for e, n in enumerate(load)} <= titles


@pytest.mark.skipif(shutil.which("chromium") is None, reason="headless Chromium is not installed")
def test_report_opens_in_headless_chromium_with_every_chart_rendered(report):
    path, _, _ = report
    proc = subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom",
                           path.as_uri()], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    dom = proc.stdout
    assert dom.count("<svg") == 5 and "Expert load" in dom and "Timeline of one request" in dom


def test_expert_load_table_sums_overflow_per_expert_and_drops_over_the_run(tmp_path):
    model = tiny_hybrid()
    model.layers[3].ff.set_capacity_factors([0.5, 1.0, 2.0, 0.25])
    store = TraceStore()
    with Profiler(model, store) as prof, torch.no_grad():
        model.train()
        for seed in range(3):  # training mode: layer 3 drops its overflow
            model(prompt(batch=3, seqlen=5, seed=seed))
    html = write_report(store, tmp_path / "r.html", prof.run_id).read_text()
    rows = store.rows("SELECT expert_overflow, dropped FROM moe_routing WHERE layer_idx = 3")
    per_expert = [sum(r["expert_overflow"][e] for r in rows) for e in range(4)]
    dropped = sum(r["dropped"] for r in rows)
    assert dropped == sum(per_expert) > 0
    cells = re.search(r"<tr><td[^>]*>layer 3</td>(.*?)</tr>", html).group(1)
    values = re.findall(r"<td[^>]*>(.*?)</td>", cells)
    assert values[-3:] == [str(dropped), " ".join(map(str, per_expert)), str(dropped)]
