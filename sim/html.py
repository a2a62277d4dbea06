"""The simulator's report as one self-contained HTML page: tables and inline
SVG plots (messages/s, connected devices, latency percentiles over time, with
the scenario's events marked). No scripts, no CDN: it opens from a file."""
from __future__ import annotations

import html
from typing import Any

from edgewire.sim.report import FleetReport

W, H, PAD_L, PAD_R, PAD_T, PAD_B = 880, 220, 64, 16, 16, 34
COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd")
EVENT_FILL = {"broker_outage": "#d62728", "partition": "#ff7f0e", "packet_loss": "#bcbd22",
              "latency": "#17becf", "bandwidth": "#8c564b", "reboot_storm": "#9467bd",
              "clock_skew": "#7f7f7f", "sensor_faults": "#e377c2", "command_burst": "#2ca02c"}


def _esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _fmt(v: float) -> str:
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:.3g}"


def plot(title: str, t: list[float], lines: dict[str, list[float | None]], events: list[dict[str, Any]],
         started: float | None, unit: str = "") -> str:
    """An SVG line plot of `lines` over seconds `t`, events as shaded spans."""
    xs_max = max(t) if t else 1.0
    vals = [v for ys in lines.values() for v in ys if v is not None]
    y_max = max(vals) if vals else 1.0
    y_max = y_max * 1.1 if y_max > 0 else 1.0
    pw, ph = W - PAD_L - PAD_R, H - PAD_T - PAD_B

    def x(s: float) -> float:
        return PAD_L + pw * (s / xs_max if xs_max else 0)

    def y(v: float) -> float:
        return PAD_T + ph * (1 - v / y_max)

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" role="img" '
           f'aria-label="{_esc(title)}"><title>{_esc(title)}</title>',
           f'<rect x="{PAD_L}" y="{PAD_T}" width="{pw}" height="{ph}" fill="#fafafa" stroke="#ccc"/>']
    if started is not None:
        for e in events:
            if e.get("started") is None:
                continue
            a = max(0.0, e["started"] - started)
            b = (e["ended"] - started) if e.get("ended") else xs_max
            if b - a < xs_max / 400:
                b = a + xs_max / 400
            colour = EVENT_FILL.get(e["kind"], "#999")
            label = f"{e['kind']}" + (f" ({e['group']})" if e.get("group") else "")
            out.append(f'<rect x="{x(a):.1f}" y="{PAD_T}" width="{max(1.0, x(b) - x(a)):.1f}" height="{ph}" '
                       f'fill="{colour}" fill-opacity="0.15"><title>{_esc(label)} {a:.0f}-{b:.0f} s</title></rect>')
            out.append(f'<text x="{x(a) + 2:.1f}" y="{PAD_T + 11}" font-size="10" fill="{colour}">'
                       f'{_esc(label)}</text>')
    for k in range(5):
        v = y_max * k / 4
        out.append(f'<line x1="{PAD_L}" x2="{PAD_L + pw}" y1="{y(v):.1f}" y2="{y(v):.1f}" stroke="#eee"/>')
        out.append(f'<text x="{PAD_L - 4}" y="{y(v) + 3:.1f}" font-size="10" text-anchor="end">{_fmt(v)}</text>')
    for k in range(6):
        s = xs_max * k / 5
        out.append(f'<text x="{x(s):.1f}" y="{H - PAD_B + 14}" font-size="10" text-anchor="middle">{s:.0f} s</text>')
    for i, (name, ys) in enumerate(lines.items()):
        pts = " ".join(f"{x(s):.1f},{y(v):.1f}" for s, v in zip(t, ys) if v is not None)
        colour = COLOURS[i % len(COLOURS)]
        if pts:
            out.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{pts}"/>')
        out.append(f'<text x="{PAD_L + 8 + 110 * i}" y="{H - 4}" font-size="11" fill="{colour}">'
                   f'&#9632; {_esc(name)}{_esc(unit)}</text>')
    out.append(f'<text x="{W - PAD_R}" y="{PAD_T + 11}" font-size="12" text-anchor="end" '
               f'font-weight="bold">{_esc(title)}</text></svg>')
    return "\n".join(out)


def _table(rows: list[dict[str, Any]], cols: list[str]) -> str:
    head = "".join(f"<th>{_esc(c)}</th>" for c in cols)
    body = []
    for r in rows:
        cells = []
        for c in cols:
            v = r.get(c)
            if isinstance(v, dict) and "p50" in v:
                v = f"p50 {v['p50']:.1f} / max {v['max']:.1f}"
            elif isinstance(v, float):
                v = f"{v:,.2f}"
            elif isinstance(v, int):
                v = f"{v:,}"
            cells.append(f"<td>{_esc('-' if v is None else v)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def render_html(rep: FleetReport) -> str:
    s = rep.series
    t = [float(r["t"]) for r in s]
    plots = [
        plot("messages per second", t, {"sent": [r.get("sent_per_s") for r in s],
                                        "received": [r.get("received_per_s") for r in s]},
             rep.events, rep.started_at),
        plot("connected devices", t, {"connected": [r.get("connected") for r in s]}, rep.events, rep.started_at),
        plot("latency, sample to observer (ms)", t, {"p50": [r.get("p50") for r in s], "p95": [r.get("p95") for r in s],
                                                     "p99": [r.get("p99") for r in s]},
             rep.events, rep.started_at),
    ]
    tot = rep.totals
    la = rep.latency
    summary = [
        f"{rep.devices:,} devices, {rep.seconds:.1f} s against {_esc(rep.broker)} (shard {_esc(rep.shard)}), "
        f"seed {rep.seed}",
        f"sampled {tot['sampled']:,}, sent {tot['messages']:,}, acknowledged {tot['acked']:,}, "
        f"reconnects {tot['reconnects']:,}, reboots {tot['resets']:,}",
    ]
    if la:
        summary.append(f"latency p50 {la['p50']:.1f} ms, p95 {la['p95']:.1f} ms, p99 {la['p99']:.1f} ms, "
                       f"max {la['max']:.1f} ms over {int(la['count']):,} readings")
    if rep.failure:
        summary.append(f"<strong>run failed: {_esc(rep.failure)}</strong>")
    events = [{"kind": e["kind"], "group": e.get("group") or "all", "devices": e.get("devices"),
               "at_s": e["at_s"], "for_s": e["for_s"],
               "started": (e["started"] - rep.started_at) if e.get("started") and rep.started_at else None,
               "ended": (e["ended"] - rep.started_at) if e.get("ended") and rep.started_at else None,
               "details": ", ".join(f"{k}={v}" for k, v in {**e.get("args", {}), **{
                   k: v for k, v in e.get("result", {}).items() if k != "plan"}}.items())}
              for e in rep.events]
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>edgewire sim report</title>
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin: 0.5em 0 1.5em; }}
th, td {{ border: 1px solid #ddd; padding: 3px 8px; text-align: right; }}
th {{ background: #f3f3f3; }} td:first-child, th:first-child {{ text-align: left; }}
svg {{ display: block; margin: 0.5em 0 1em; }}
</style></head><body>
<h1>edgewire sim report</h1>
<p>{"<br>".join(summary)}</p>
<h2>Over time</h2>
{"".join(plots)}
<h2>By QoS</h2>
{_table(rep.by_qos, ["qos", "sent", "acked", "received", "lost", "duplicated"])}
<h2>By group</h2>
{_table(rep.groups, ["group", "devices", "sampled", "sent", "acked", "received", "lost", "duplicated",
                     "reconnects", "reconnect_s", "still_down"])}
<h2>Scenario events</h2>
{_table(events, ["kind", "group", "devices", "at_s", "for_s", "started", "ended", "details"]) if events else "<p>none</p>"}
</body></html>
"""
