"""The run's results as JUnit XML (for CI) and as one self-contained HTML file (for people).

JUnit: one `testsuite` per scenario and one `testcase` per expectation and rubric item, so a CI page names the
expectation that failed; a scenario that could not run is one `error` testcase. HTML: per scenario the verdict,
what failed and why, the transcript, the procedure, the tool calls with their arguments, the latency of each turn
as a small inline SVG bar chart against the budget, and every judge run with its reasoning. No script, no
external asset: the file opens anywhere, including from a CI artifact.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from html import escape

from simulations.results import ScenarioResult, TurnLatency


def junit_xml(results: Sequence[ScenarioResult]) -> str:
    root = ET.Element("testsuites", name="voice-worker simulate")
    total = failures = errors = 0
    for result in results:
        suite = ET.SubElement(root, "testsuite", name=result.scenario, file=result.file)
        cases = 0
        suite_failures = 0
        if result.error is not None:
            case = ET.SubElement(suite, "testcase", classname=result.scenario, name="runs to its end")
            ET.SubElement(case, "error", message=result.error).text = result.error
            cases += 1
            errors += 1
        for check in result.checks:
            case = ET.SubElement(suite, "testcase", classname=result.scenario, name=check.expectation)
            if not check.passed:
                ET.SubElement(case, "failure", message=check.detail).text = check.detail
                suite_failures += 1
            else:
                ET.SubElement(case, "system-out").text = check.detail
            cases += 1
        for judged in result.judges:
            case = ET.SubElement(suite, "testcase", classname=result.scenario, name=f"rubric: {judged.item}")
            reasons = "\n".join(f"{run.verdict}: {run.reasoning}" for run in judged.runs)
            if not judged.passed:
                ET.SubElement(case, "failure", message=judged.spread).text = reasons
                suite_failures += 1
            else:
                ET.SubElement(case, "system-out").text = f"{judged.spread}\n{reasons}"
            cases += 1
        suite.set("tests", str(cases))
        suite.set("failures", str(suite_failures))
        suite.set("errors", "1" if result.error is not None else "0")
        suite.set("time", f"{result.duration_s:.3f}")
        total += cases
        failures += suite_failures
    root.set("tests", str(total))
    root.set("failures", str(failures))
    root.set("errors", str(errors))
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


_STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:2rem auto;max-width:70rem;color:#1d2330;padding:0 1rem}
h1{font-size:1.4rem}h2{font-size:1.15rem;margin:0}h3{font-size:.95rem;margin:1rem 0 .3rem}
section.scenario{border:1px solid #d5d9e2;border-radius:8px;padding:1rem 1.2rem;margin:1.2rem 0}
.pass{color:#156a2f}.fail{color:#b3261e}.badge{font-weight:600;padding:.1rem .5rem;border-radius:4px}
.badge.pass{background:#e3f4e8}.badge.fail{background:#fbe4e2}
table{border-collapse:collapse;width:100%}td,th{border-bottom:1px solid #eceef3;padding:.3rem .4rem;text-align:left;
vertical-align:top}th{font-weight:600;color:#4a5163}.meta{color:#4a5163}
.line{margin:.2rem 0}.who{display:inline-block;width:4.5rem;font-weight:600;color:#4a5163}
code,pre{font:12px ui-monospace,monospace;white-space:pre-wrap;margin:0}
"""


def html_report(results: Sequence[ScenarioResult]) -> str:
    passed = sum(1 for r in results if r.passed)
    body = [
        "<h1>voice-worker simulate</h1>",
        f'<p class="summary">{passed} of {len(results)} scenarios passed</p>',
        "<table><tr><th>scenario</th><th>mode</th><th>result</th><th>failed</th></tr>",
    ]
    for result in results:
        verdict = "pass" if result.passed else "fail"
        body.append(
            f'<tr><td><a href="#{escape(result.scenario)}">{escape(result.scenario)}</a></td>'
            f"<td>{result.mode}</td><td class={verdict}>{verdict}</td><td>{len(result.failures)}</td></tr>"
        )
    body.append("</table>")
    body += [_scenario(r) for r in results]
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>voice-worker simulate</title>'
        f"<style>{_STYLE}</style></head><body>{''.join(body)}</body></html>\n"
    )


def _scenario(result: ScenarioResult) -> str:
    verdict = "pass" if result.passed else "fail"
    observed = result.observed
    out = [
        f'<section class="scenario" id="{escape(result.scenario)}">',
        f'<h2>{escape(result.scenario)} <span class="badge {verdict}">{verdict.upper()}</span></h2>',
        f'<p class="meta">{escape(result.file)} · {result.mode} mode · {escape(result.target)} · session '
        f"{escape(result.session_id or '-')} · {result.duration_s:.1f} s</p>",
    ]
    if result.error:
        out.append(f'<p class="fail">The scenario did not run to its end: {escape(result.error)}</p>')
    procedure = observed.procedure or "none"
    reason = f" ({escape(observed.procedure_reason)})" if observed.procedure_reason else ""
    out.append(
        f"<p>Procedure on turn 1: <b>{escape(procedure)}</b>{reason} · end reason: "
        f"<b>{escape(observed.end_reason or 'unknown')}</b> · caller turns: {observed.caller_turns}"
        + (f" · handoffs: {escape(' -> '.join(observed.handoffs))}" if observed.handoffs else "")
        + "</p>"
    )
    out.append("<h3>Expectations</h3><table><tr><th></th><th>expectation</th><th>what the call did</th></tr>")
    for check in result.checks:
        mark = "pass" if check.passed else "fail"
        out.append(
            f"<tr><td class={mark}>{'✓' if check.passed else '✗'}</td><td>{escape(check.expectation)}</td>"
            f"<td>{escape(check.detail)}</td></tr>"
        )
    out.append("</table>")
    if result.judges:
        out.append("<h3>Judged</h3><table><tr><th></th><th>rubric item</th><th>runs</th><th>reasoning</th></tr>")
        for judged in result.judges:
            mark = "pass" if judged.passed else "fail"
            runs = "".join(f"<div><b>{escape(run.verdict)}</b>: {escape(run.reasoning)}</div>" for run in judged.runs)
            out.append(
                f"<tr><td class={mark}>{'✓' if judged.passed else '✗'}</td><td>{escape(judged.item)}</td>"
                f"<td>{escape(judged.spread)}</td><td>{runs}</td></tr>"
            )
        out.append("</table>")
    out.append("<h3>Transcript</h3>")
    for line in observed.transcript:
        who = "caller" if line.role == "user" else "agent"
        out.append(f'<div class="line"><span class="who">{who}</span>{escape(line.text)}</div>')
    if observed.heard:
        out.append("<h3>As the caller heard it</h3>")
        for line in observed.heard:
            who = "caller" if line.role == "user" else "agent"
            out.append(f'<div class="line"><span class="who">{who}</span>{escape(line.text)}</div>')
    for what, why in observed.unobservable.items():
        out.append(f'<p class="fail">Not observable: {escape(what)}: {escape(why)}</p>')
    if observed.tool_calls:
        out.append("<h3>Tool calls</h3><table><tr><th>tool</th><th>arguments</th><th>output</th></tr>")
        for call in observed.tool_calls:
            out.append(
                f"<tr><td>{escape(call.name)}</td><td><code>{escape(json.dumps(call.arguments))}</code></td>"
                f"<td><pre>{escape(call.output or '')}</pre></td></tr>"
            )
        out.append("</table>")
    if observed.variables:
        shown = ", ".join(f"{k}={v!r}" for k, v in observed.variables.items() if v not in (None, ""))
        out.append(f"<h3>Context variables at the end</h3><p><code>{escape(shown)}</code></p>")
    out.append("<h3>Latency per turn</h3>")
    out.append(latency_svg(observed.latencies, result.latency_budget_ms))
    out.append("</section>")
    return "".join(out)


def latency_svg(latencies: Sequence[TurnLatency], budget_ms: float | None, width: int = 480, height: int = 140) -> str:
    """Bars per caller turn (ms), the budget as a dashed line; red bars are over it."""
    measured = [t for t in latencies if t.latency_ms is not None]
    if not measured:
        return "<p class=meta>no turn latency was measured</p>"
    top = max([t.latency_ms or 0.0 for t in measured] + [budget_ms or 0.0]) * 1.15 or 1.0
    left, bottom, plot_h = 44, height - 22, height - 34
    slot = (width - left - 8) / len(latencies)
    bar = max(min(slot * 0.6, 40), 4)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
        f'aria-label="latency per turn">',
        f'<line x1="{left}" y1="{bottom}" x2="{width - 4}" y2="{bottom}" stroke="#9aa1b1"/>',
        f'<text x="{left - 6}" y="{bottom - plot_h + 4}" font-size="10" text-anchor="end">{top:.0f} ms</text>',
        f'<text x="{left - 6}" y="{bottom}" font-size="10" text-anchor="end">0</text>',
    ]
    for index, turn in enumerate(latencies):
        x = left + slot * index + (slot - bar) / 2
        parts.append(
            f'<text x="{x + bar / 2:.1f}" y="{height - 6}" font-size="10" text-anchor="middle">{turn.turn}</text>'
        )
        if turn.latency_ms is None:
            continue
        h = plot_h * turn.latency_ms / top
        over = budget_ms is not None and turn.latency_ms > budget_ms
        parts.append(
            f'<rect x="{x:.1f}" y="{bottom - h:.1f}" width="{bar:.1f}" height="{h:.1f}" '
            f'fill="{"#b3261e" if over else "#3a6fd8"}"><title>turn {turn.turn}: {turn.latency_ms:.0f} ms</title>'
            "</rect>"
        )
    if budget_ms is not None:
        y = bottom - plot_h * budget_ms / top
        parts.append(
            f'<line x1="{left}" y1="{y:.1f}" x2="{width - 4}" y2="{y:.1f}" stroke="#b3261e" stroke-dasharray="4 3"/>'
            f'<text x="{width - 6}" y="{y - 3:.1f}" font-size="10" text-anchor="end">budget {budget_ms:.0f} ms</text>'
        )
    parts.append("</svg>")
    return "".join(parts)
