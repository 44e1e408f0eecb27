"""The failure gallery of an evaluation: every sample with each system's answer, worst first.

``gallery.html`` is one self-contained page (thumbnails embedded as data URIs, no server, no
network): image, question, reference, and each system's answer coloured by its score. A
multi-turn sample shows the conversation its scored (last) question continues: each earlier turn
with its images, question and answer, then the scored question, marked as such. It opens
sorted by how wrong the lead system (the fine-tuned one) is, and a reader can sort and filter by
any system and metric. :func:`gallery_table` is the same table without scripts, for a notebook.
Every text from the data is HTML-escaped: a learner's data must never become markup.
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .data.records import Record, scored_turn, turns_of

THUMB_SIDE = 160
MAX_ROWS = 1000  # a page with more thumbnails than this is too slow to open; the rest are listed


def lead_system(report: dict[str, Any]) -> str:
    """The system the gallery sorts by: the first of every comparison (tuned when evaluated)."""
    comparisons = report.get("comparisons") or []
    return comparisons[0]["first"] if comparisons else next(iter(report["systems"]))


def question_of(record: Record) -> str:
    """The scored question: the one the answer was generated for (the last turn's)."""
    return scored_turn(record).question


def _predictions(out_dir: Path, report: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    found = {}
    for system, summary in report["systems"].items():
        lines = (out_dir / summary["predictions"]).read_text(encoding="utf-8").splitlines()
        found[system] = [json.loads(line) for line in lines if line]
    return found


def gallery_rows(report: dict[str, Any], records: Sequence[Record],
                 out_dir: str | Path) -> list[dict[str, Any]]:
    """One row per sample, worst first for the lead system's headline metric: id, the scored
    turn's ``images``, ``question`` and ``turn`` number, the ``earlier`` turns it continues
    (each ``{"turn", "question", "images", "answer"}``), the reference, and per system its
    answer and metrics."""
    predictions = _predictions(Path(out_dir), report)
    headline, lead = report["headline"], lead_system(report)
    rows = []
    for i, record in enumerate(records):
        answers = {s: {"prediction": p[i]["prediction"], "metrics": p[i]["metrics"]}
                   for s, p in predictions.items()}
        *earlier, scored = turns_of(record)
        rows.append({"id": record["id"], "images": list(scored.images),
                     "question": scored.question, "turn": scored.number,
                     "earlier": [{"turn": t.number, "question": t.question,
                                  "images": list(t.images), "answer": t.answer}
                                 for t in earlier],
                     "reference": predictions[lead][i]["reference"], "answers": answers})
    sign = -1 if headline in report.get("lower_is_better", []) else 1
    rows.sort(key=lambda r: sign * r["answers"][lead]["metrics"][headline])
    return rows


def _thumb(path: str) -> str:
    from .images import thumbnail

    try:
        data = base64.b64encode(thumbnail(path, THUMB_SIDE, "JPEG")).decode()
    except Exception as exc:  # a gallery with one missing picture is still useful
        return f"<i>cannot show {html.escape(Path(path).name)}: {html.escape(str(exc))}</i>"
    return f"<img src='data:image/jpeg;base64,{data}' alt='{html.escape(Path(path).name)}'>"


def _colour(value: float, lower_is_better: bool) -> str:
    good = max(0.0, min(1.0, 1 - value if lower_is_better else value))
    return f"hsl({int(120 * good)}, 70%, 90%)"


def _row_html(row: dict[str, Any], systems: Sequence[str], headline: str,
              lower: Sequence[str]) -> str:
    scores = {s: row["answers"][s]["metrics"] for s in systems}
    cells = []
    for s in systems:
        answer, value = row["answers"][s]["prediction"], scores[s][headline]
        shown = ", ".join(f"{k} {v:.2f}" for k, v in scores[s].items())
        cells.append(f"<td style='background:{_colour(value, headline in lower)}'>"
                     f"<pre>{html.escape(answer) or '<i>(empty)</i>'}</pre>"
                     f"<small>{html.escape(shown)}</small></td>")
    pictures = "".join(_thumb(p) for p in row["images"])
    if not pictures and any(t["images"] for t in row.get("earlier", ())):
        pictures = "<i>(the images are in the earlier turns)</i>"
    return (f"<tr data-scores='{html.escape(json.dumps(scores))}'><td>{pictures}<br>"
            f"<small>{html.escape(row['id'])}</small></td>"
            f"<td>{_conversation_html(row)}</td>"
            f"<td><pre>{html.escape(row['reference'])}</pre></td>{''.join(cells)}</tr>")


def _conversation_html(row: dict[str, Any]) -> str:
    """The question cell: the earlier turns (images, question, answer), then the scored
    question, marked as the one answered here when there are earlier turns."""
    earlier = row.get("earlier") or []
    if not earlier:
        return f"<pre>{html.escape(row['question'])}</pre>"
    turns = "".join(
        f"<div class='turn'><small>turn {t['turn']}</small>"
        f"{''.join(_thumb(p) for p in t['images'])}<pre>{html.escape(t['question'])}</pre>"
        f"<pre class='answer'>→ {html.escape(t['answer'])}</pre></div>" for t in earlier)
    return (f"{turns}<div class='scored'><small><b>scored question (turn {row['turn']})</b>"
            f"</small><pre>{html.escape(row['question'])}</pre></div>")


STYLE = """<style>
body{font-family:system-ui,sans-serif;margin:1em}table{border-collapse:collapse}
td,th{border:1px solid #ccc;padding:4px;vertical-align:top;text-align:left}
pre{white-space:pre-wrap;margin:0;max-width:28em;font-family:inherit}img{display:block}
small{color:#555}.turn{color:#555;border-left:3px solid #ddd;padding-left:4px;margin-bottom:4px}
.scored{border-left:3px solid #36c;padding-left:4px}</style>"""

SCRIPT = """<script>
const body = document.querySelector('tbody'), rows = [...body.rows];
const scores = rows.map(r => JSON.parse(r.dataset.scores));
const lower = new Set(JSON.parse(document.body.dataset.lower));
function update() {
  const s = sys.value, m = met.value, sign = lower.has(m) ? -1 : 1;
  const order = rows.map((r, i) => i).sort((a, b) => sign * (scores[a][s][m] - scores[b][s][m]));
  let shown = 0;
  for (const i of order) {
    const v = scores[i][s][m], perfect = lower.has(m) ? v <= 0 : v >= 1;
    rows[i].hidden = only.checked && perfect;
    shown += !rows[i].hidden;
    body.appendChild(rows[i]);
  }
  count.textContent = ' · ' + shown + ' of ' + rows.length + ' samples shown';
}
for (const el of [sys, met, only]) el.addEventListener('change', update);
update();
</script>"""


def _options(names: Sequence[str], chosen: str) -> str:
    return "".join(f"<option{' selected' if n == chosen else ''}>{html.escape(n)}</option>"
                   for n in names)


def gallery_table(rows: Sequence[dict[str, Any]], report: dict[str, Any]) -> str:
    """The rows as an HTML table (no script): what a notebook shows."""
    systems = list(report["systems"])
    lower = report.get("lower_is_better", [])
    head = "".join(f"<th>{html.escape(s)}" + ("<br><small>(it saw blank images)</small>"
                                               if report["systems"][s]["image_ablation"] else "")
                   + "</th>" for s in systems)
    body = "".join(_row_html(r, systems, report["headline"], lower) for r in rows)
    return (f"<table><thead><tr><th>image</th><th>question</th><th>reference</th>{head}</tr>"
            f"</thead><tbody>{body}</tbody></table>")


def gallery_html(report: dict[str, Any], records: Sequence[Record], out_dir: str | Path) -> str:
    """The whole page: summary, sort/filter controls, and the table, worst first."""
    rows = gallery_rows(report, records, out_dir)
    metrics = list(next(iter(report["systems"].values()))["metrics"])
    lead = lead_system(report)
    verdicts = "".join(f"<li>{html.escape(c['verdict'])}</li>" for c in report["comparisons"])
    warnings = "".join(f"<li>⚠ {html.escape(w)}</li>" for w in report["warnings"])
    more = (f"<p>Only the {MAX_ROWS} worst of {len(rows)} samples for {html.escape(lead)} are "
            "in this page (sorting by another system sorts these); every answer is in the "
            "predictions files.</p>" if len(rows) > MAX_ROWS else "")
    controls = (f"<p>Sort by <select id='sys'>{_options(list(report['systems']), lead)}</select>"
                f" <select id='met'>{_options(metrics, report['headline'])}</select> "
                "<label><input type='checkbox' id='only'> only its imperfect answers</label> "
                "<span id='count'></span></p>")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>Evaluation gallery</title>"
            f"{STYLE}</head><body data-lower='{html.escape(json.dumps(report['lower_is_better']))}'>"
            f"<h1>Evaluation gallery</h1><p>{report['n']} samples of "
            f"<code>{html.escape(report['data'])}</code>, task {html.escape(report['task'])}; "
            f"worst first for {html.escape(lead)} by {html.escape(report['headline'])}.</p>"
            f"<ul>{verdicts}{warnings}</ul>{controls}{more}"
            f"{gallery_table(rows[:MAX_ROWS], report)}{SCRIPT}</body></html>")


def write_gallery(path: str | Path, report: dict[str, Any], records: Sequence[Record],
                  out_dir: str | Path) -> Path:
    """Write :func:`gallery_html` to ``path`` (atomically)."""
    from .outputs import write_text

    return write_text(path, gallery_html(report, records, out_dir))


def worst_cases(report: dict[str, Any], records: Sequence[Record], out_dir: str | Path,
                k: int = 5) -> str:
    """The ``k`` worst samples of the lead system, as an HTML table for a notebook."""
    return gallery_table(gallery_rows(report, records, out_dir)[:k], report)
