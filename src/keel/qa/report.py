"""A run as JUnit XML (for CI) and as one self-contained HTML page."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

from keel.qa.runner import PromptResult, RunOutcome


def junit(outcome: RunOutcome, *, suite: str, run_id: str, blocked: bool,
          reason: str) -> str:
    failures = sum(r.failed for r in outcome.results)
    root = ET.Element("testsuites", name="keel-qa", tests=str(outcome.n),
                      failures=str(failures), time=f"{outcome.wall_s:.3f}")
    ts = ET.SubElement(root, "testsuite", name=suite, tests=str(outcome.n),
                       failures=str(failures), time=f"{outcome.wall_s:.3f}")
    props = ET.SubElement(ts, "properties")
    for k, v in (("run_id", run_id), ("gate", "blocked" if blocked else "passed"),
                 ("gate_reason", reason)):
        ET.SubElement(props, "property", name=k, value=v)
    for r in outcome.results:
        case = ET.SubElement(ts, "testcase", classname=suite, name=r.prompt.id,
                             time=f"{r.latency_ms / 1000:.3f}")
        if r.failed:
            kind = ("hard" if r.hard else "judge" if not r.findings else "soft")
            f = ET.SubElement(case, "failure", type=kind, message=r.reason[:500])
            f.text = f"PROMPT:\n{r.prompt.prompt}\n\nREPLY:\n{r.reply}"
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"


def _row(r: PromptResult) -> str:
    cls = "fail" if r.failed else "pass"
    votes = ""
    if r.verdict is not None:
        votes = " ".join(v.verdict for v in r.verdict.votes)
    return (f"<tr class={cls}><td>{html.escape(r.prompt.id)}</td><td>{cls}</td>"
            f"<td>{r.latency_ms:.0f}</td><td>{html.escape(r.reason)}</td>"
            f"<td>{html.escape(votes)}</td>"
            f"<td><details><summary>{html.escape(r.prompt.prompt[:80])}</summary>"
            f"<pre>{html.escape(r.prompt.prompt)}</pre><hr><pre>{html.escape(r.reply)}</pre>"
            f"</details></td></tr>")


def html_report(outcome: RunOutcome, *, suite: str, run_id: str, blocked: bool,
                reason: str, summary: dict[str, Any]) -> str:
    rows = sorted(outcome.results, key=lambda r: (not r.failed, r.prompt.id))
    state = "BLOCKED" if blocked else "PASSED"
    facts = "".join(f"<li>{html.escape(str(k))}: {html.escape(str(v))}</li>"
                    for k, v in summary.items())
    return f"""<!doctype html><html><head><meta charset=utf-8>
<title>keel qa {html.escape(run_id)}</title><style>
body{{font:14px system-ui,sans-serif;margin:2em}} table{{border-collapse:collapse;width:100%}}
td,th{{border-bottom:1px solid #ddd;padding:4px;text-align:left;vertical-align:top}}
tr.fail td:nth-child(2){{color:#b00;font-weight:bold}} pre{{white-space:pre-wrap}}
.gate{{font-size:1.4em;font-weight:bold;color:{'#b00' if blocked else '#070'}}}
</style></head><body>
<h1>keel qa: {html.escape(suite)}</h1>
<p class=gate>{state}: {html.escape(reason)}</p><ul>{facts}</ul>
<table><tr><th>prompt</th><th>outcome</th><th>ms</th><th>why</th><th>judge votes</th>
<th>prompt / reply</th></tr>{''.join(_row(r) for r in rows)}</table></body></html>
"""


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
