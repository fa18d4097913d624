"""report.html rendered by a real browser (headless Chromium, offline): every <img> decodes
(naturalWidth > 0), every expected table is in the DOM, and nothing logs an error.

A copy of the report gets a probe <script> as the first thing in <head>: it records window errors
(resource errors included) and console.error, and on load writes a JSON summary into the DOM, which
``--dump-dom`` prints. Without Chromium the test is skipped, except in CI (the CI variable set, as
.ci/run does), where it fails: CI installs Debian's ``chromium``.
"""
from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess

import pytest

EXPECTED_TABLES = {"skipped", "table2-data", "table3-data", "survival-validation", "survival-all",
                   "survival-optimistic", "calibration-data", "time-to-event-table"}

PROBE = """<script>
window.__errors = [];
window.addEventListener('error', function (e) {
  var t = e.target && e.target.tagName ? e.target.tagName + ' ' + (e.target.alt || '') : '';
  window.__errors.push('error: ' + (e.message || 'resource failed') + ' ' + t);
}, true);
var __origError = console.error;
console.error = function () {
  window.__errors.push('console.error: ' + Array.prototype.join.call(arguments, ' '));
  return __origError.apply(console, arguments);
};
window.addEventListener('load', function () {
  var imgs = Array.prototype.map.call(document.images, function (i) {
    return {alt: i.alt, complete: i.complete, width: i.naturalWidth, height: i.naturalHeight};
  });
  var tables = Array.prototype.map.call(document.querySelectorAll('table'), function (t) { return t.id || t.className; });
  var pre = document.createElement('pre');
  pre.id = '__probe_result';
  pre.textContent = JSON.stringify({imgs: imgs, tables: tables, errors: window.__errors});
  document.body.appendChild(pre);
});
</script>"""


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    if os.environ.get("CI"):
        pytest.fail("headless Chromium is required in CI (apt-get install -y chromium; .ci/run does it)")
    pytest.skip("Chromium is not installed (apt-get install -y chromium): the browser check of report.html "
                "is skipped outside CI")


def _render(html_text: str, tmp_path, name: str) -> dict:
    browser = _chromium()
    page = tmp_path / f"{name}.html"
    page.write_text(html_text.replace("<head>", "<head>\n" + PROBE, 1))
    profile = tmp_path / f"profile-{name}"
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
           "--no-first-run", "--disable-extensions", "--disable-background-networking",
           f"--user-data-dir={profile}", "--virtual-time-budget=10000", "--dump-dom", page.as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "HOME": str(tmp_path)})
    m = re.search(r'<pre id="__probe_result">(.*?)</pre>', proc.stdout, flags=re.S)
    assert m, f"no probe result from Chromium (exit {proc.returncode}): {proc.stderr[-2000:]}"
    return json.loads(html.unescape(m.group(1)))


def test_report_renders_in_headless_chromium(evaluated_run, tmp_path):
    run, _, _, report = evaluated_run
    res = _render(report.read_text(), tmp_path, "report")
    assert res["errors"] == []
    assert len(res["imgs"]) == 6
    for img in res["imgs"]:
        assert img["complete"] and img["width"] > 0 and img["height"] > 0, img
    assert EXPECTED_TABLES <= set(res["tables"]), set(res["tables"])
    assert "table1" in res["tables"]  # Table 1's own class


def test_probe_detects_a_broken_image(evaluated_run, tmp_path):
    # the check above must be able to fail: a corrupted data URI decodes to nothing and is reported
    _, _, _, report = evaluated_run
    text = report.read_text()
    broken = re.sub(r'src="data:image/png;base64,[^"]{0,40}', 'src="data:image/png;base64,AAAA', text, count=1)
    res = _render(broken, tmp_path, "broken")
    widths = [i["width"] for i in res["imgs"]]
    assert widths.count(0) == 1
    assert any("IMG" in e for e in res["errors"]), res["errors"]
