"""Notebook displays: HTML tables and an ipywidgets sample browser.

These only present what the rest of the package computes; nothing here decides anything.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .data.doctor import CheckReport
from .data.records import Record
from .images import thumbnail


def report_html(report: CheckReport, limit: int = 50) -> str:
    """The data doctor's report as an HTML table (errors red, warnings amber)."""
    colour = {"error": "#c62828", "warning": "#b26a00"}
    rows = []
    for p in report.problems[:limit]:
        rows.append(
            f"<tr><td>{p.line if p.line is not None else ''}</td>"
            f"<td>{html.escape(p.id or '')}</td>"
            f"<td style='color:{colour[p.severity]};font-weight:bold'>{p.severity}</td>"
            f"<td><code>{p.code}</code></td><td style='text-align:left'>"
            f"{html.escape(p.message)}</td></tr>")
    more = (f"<p>… and {len(report.problems) - limit} more (see the JSON report).</p>"
            if len(report.problems) > limit else "")
    head = ("<tr><th>line</th><th>id</th><th>severity</th><th>code</th><th>what to do</th></tr>")
    verdict = "✅" if report.ok else "❌"
    return (f"<p><b>{verdict} {html.escape(report.summary())}</b></p>"
            + (f"<table>{head}{''.join(rows)}</table>{more}" if rows else ""))


def sample_browser(records: Sequence[Record]) -> Any:
    """Page through records: images as the model sees them, and every turn of the conversation."""
    import ipywidgets as w

    slider = w.IntSlider(0, 0, max(0, len(records) - 1), description="sample")
    out = w.Output()

    def show(index: int) -> None:
        record = records[index]
        out.clear_output(wait=True)
        with out:
            from IPython.display import HTML, Image, display

            display(HTML(f"<b>{html.escape(record['id'])}</b>"))
            for message in record["messages"]:
                for part in message["content"]:
                    if part["type"] == "image":
                        try:
                            display(Image(data=thumbnail(part["image"], 320)))
                        except Exception as exc:
                            display(HTML(f"<i>cannot show {html.escape(part['image'])}: "
                                         f"{html.escape(str(exc))}</i>"))
                    else:
                        text = html.escape(part["text"]).replace("\n", "<br>")
                        display(HTML(f"<p><b>{message['role']}</b>: {text}</p>"))

    slider.observe(lambda change: show(change["new"]), names="value")
    show(0)
    return w.VBox([slider, out])


def base_and_tuned(chat: Any, item: str | Record, question: str) -> tuple[list[str], str, str]:
    """The images shown, the base model's answer and the fine-tuned one for ``item`` (a record,
    asked in its conversation with ``question`` as its scored question, or an image path)."""
    from .chat import with_question
    from .data.records import images_of

    if isinstance(item, dict):
        record = with_question(item, question)
        return (images_of(record), chat.answer_record(record, adapter=False),
                chat.answer_record(record))
    return [item], chat.answer(item, question, adapter=False), chat.answer(item, question)


def side_by_side(chat: Any, items: Sequence[str | Record], question: str = "") -> Any:
    """Pick a held-out sample or an image (or upload one), ask a question, and see the base
    model's and the fine-tuned model's answers next to each other (``chat``: a
    :class:`~qvl_helpers.chat.Chat` with an adapter, switched off for the base answer).

    A sample (a record) is asked in its conversation: its scored turn's question (editable),
    with all its images and earlier turns; an image path is asked on its own."""
    import tempfile

    import ipywidgets as w
    from IPython.display import HTML, Image, display

    from .data.records import scored_turn

    if not getattr(chat, "has_adapter", False):
        raise ValueError("side_by_side needs a Chat with an adapter (the base answer is the "
                         "same model with the adapter switched off).")
    uploads = Path(tempfile.mkdtemp(prefix="qvl-uploads-"))
    options = [(str(item), str(item)) if isinstance(item, (str, Path)) else
               (f"{item['id']}: {scored_turn(item).question[:40]}", item) for item in items]
    picker = w.Dropdown(options=options, description="sample")
    upload = w.FileUpload(accept="image/*", multiple=False, description="or upload")
    asked = w.Text(value=question, description="question", layout=w.Layout(width="60%"))
    button, out = w.Button(description="Ask both"), w.Output()

    def preset(_: Any = None) -> None:  # a sample brings its own question
        if isinstance(picker.value, dict):
            asked.value = scored_turn(picker.value).question

    def chosen() -> str | Record:
        if upload.value:  # ipywidgets 8: a tuple of dicts with name and content
            item = upload.value[0]
            path = uploads / Path(item["name"]).name
            path.write_bytes(bytes(item["content"]))
            upload.value = ()  # used once; the dropdown chooses again afterwards
            picker.options = [*picker.options, (str(path), str(path))]
            picker.value = str(path)
        return picker.value

    def ask(_: Any = None) -> None:
        out.clear_output(wait=True)
        with out:
            images, base, tuned = base_and_tuned(chat, chosen(), asked.value)
            for image in images:
                display(Image(data=thumbnail(image, 320)))
            display(HTML("<table><tr><th>base model</th><th>fine-tuned</th></tr><tr>"
                         f"<td><pre>{html.escape(base)}</pre></td>"
                         f"<td><pre>{html.escape(tuned)}</pre></td></tr></table>"))

    picker.observe(preset, names="value")
    if not question:
        preset()
    button.on_click(ask)
    return w.VBox([w.HBox([picker, upload]), asked, button, out])
