"""The HTML page around the report's sections: inline CSS, tables, tabs and the error trap.

Decides the page skeleton and the only script (tabs between plans, and `window.onerror`,
which writes any script error into the page so a headless browser's dumped DOM shows it);
does not decide content. Nothing is fetched: no external script, style sheet or font.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

CSS = """
body{font-family:system-ui,sans-serif;margin:24px auto;max-width:1240px;color:#222;padding:0 12px}
h1{font-size:22px;margin-bottom:4px}h2{font-size:18px;margin-top:32px;border-bottom:1px solid #ddd}
h3{font-size:15px;margin:18px 0 6px}p.sub{color:#555;margin-top:0}
table{border-collapse:collapse;font-size:13px;margin:8px 0}
td,th{border-bottom:1px solid #e5e5e5;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f6f6f6}td.num{text-align:right;font-variant-numeric:tabular-nums}
code{font-size:12px}.cards{display:flex;flex-wrap:wrap;gap:10px}
.card{border:1px solid #ddd;border-radius:6px;padding:8px 12px;min-width:150px}
.card b{display:block;font-size:18px}.card span{color:#666;font-size:12px}
.bad{color:#c0392b}.note{color:#555;font-size:13px}
.tabs button{border:1px solid #bbb;background:#f6f6f6;padding:4px 10px;margin:0 4px 4px 0;
cursor:pointer;border-radius:4px}.tabs button[aria-selected=true]{background:#4e79a7;color:#fff}
svg.chart{display:block;max-width:100%;height:auto;margin:6px 0}
#script-errors{color:#c0392b}
"""

ERROR_TRAP = (
    "window.onerror=function(m,s,l,c){var t=String(m)+' ('+l+':'+c+')';"
    "var e=document.getElementById('script-errors');"
    "if(e){var li=document.createElement('li');li.textContent=t;e.appendChild(li);e.hidden=false;}"
    "else{(window.pendingErrors=window.pendingErrors||[]).push(t);}return false;};"
)

TABS_SCRIPT = (
    "(function(){var e=document.getElementById('script-errors');"
    "(window.pendingErrors||[]).forEach(function(t){var li=document.createElement('li');"
    "li.textContent=t;e.appendChild(li);e.hidden=false;});"
    "document.querySelectorAll('.tabs').forEach(function(bar){"
    "var buttons=bar.querySelectorAll('button');"
    "function show(id){buttons.forEach(function(b){var on=b.dataset.tab===id;"
    "b.setAttribute('aria-selected',on?'true':'false');"
    "document.getElementById(b.dataset.tab).hidden=!on;});}"
    "buttons.forEach(function(b){b.addEventListener('click',function(){show(b.dataset.tab);});});"
    "var want=location.hash.slice(1),first=buttons.length?buttons[0].dataset.tab:null;"
    "buttons.forEach(function(b){if(b.dataset.tab===want){first=want;}});"
    "if(first){show(first);}});"
    "document.body.setAttribute('data-ready','1');})();"
)


def page(*, title: str, body: str) -> str:
    """The whole document; `body` is already-escaped HTML."""
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{escape(title)}</title><style>{CSS}</style><script>{ERROR_TRAP}</script>"
        f"</head><body>\n{body}\n<ol id=\"script-errors\" hidden></ol>"
        f"<script>{TABS_SCRIPT}</script></body></html>\n"
    )


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], *,
          numeric: Sequence[bool] | None = None, css_class: str = "") -> str:
    """A table of cells; cells are already-escaped HTML (use `cell` for plain text)."""
    num = list(numeric or [False] * len(headers))
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f'<td class="num">{c}</td>' if num[i] else f"<td>{c}</td>"
                         for i, c in enumerate(r)) + "</tr>"
        for r in rows)
    cls = f' class="{css_class}"' if css_class else ""
    return f"<table{cls}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def cell(text: object) -> str:
    """Escaped text of one table cell."""
    return escape(str(text))


def plan_code(plan: str) -> str:
    """A plan string as table-cell code that wraps only between its keys and between the stage
    counts of `layers=` (a 27-stage split would otherwise push the table off the page)."""
    return "<code>" + cell(plan).replace(",", ",<wbr>").replace("/", "/<wbr>") + "</code>"


def cards(items: Sequence[tuple[str, str]]) -> str:
    """Headline numbers as (value, label) cards."""
    return '<div class="cards">' + "".join(
        f'<div class="card"><b>{escape(v)}</b><span>{escape(k)}</span></div>' for v, k in items
    ) + "</div>"


def tabs(panels: Sequence[tuple[str, str, str]]) -> str:
    """Buttons that show one panel at a time: (id, button label, panel HTML). The first panel
    shows, or the one named by the address's #fragment; without the script all stay visible."""
    buttons = "".join(f'<button type="button" data-tab="{escape(pid)}">{escape(label)}</button>'
                      for pid, label, _ in panels)
    bodies = "".join(f'<section class="panel" id="{escape(pid)}">{html}</section>'
                     for pid, _, html in panels)
    return f'<div class="tabs" role="tablist">{buttons}</div>{bodies}'


def notes(items: Sequence[str]) -> str:
    """A bullet list of plain-text notes (empty string when there are none)."""
    if not items:
        return ""
    return '<ul class="note">' + "".join(f"<li>{escape(t)}</li>" for t in items) + "</ul>"
