"""The model card (``README.md``) of an exported model: what it is, what it was trained on and
how, how well it did (the evaluation report's table, with intervals), how to load it, its licence
and its limits. Everything comes from files the course wrote; nothing is made up."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .outputs import human_size, read_json, write_text
from .qwen import REAL_MODEL_ID
from .runs import RUN_CONFIG, Outputs

QWEN_LICENCE = ("other", "qwen-research",
                "https://huggingface.co/Qwen/Qwen2.5-VL-3B-Instruct/blob/main/LICENSE")
CARD_SETTINGS = ("quantization", "trained", "lora_r", "lora_alpha", "lora_dropout", "lr",
                 "num_epochs", "max_steps", "batch_size", "grad_accum", "min_pixels",
                 "max_pixels", "max_length", "seed")


def is_real_model(base: str) -> bool:
    """The hub id of Qwen2.5-VL-3B-Instruct, or a local copy of it under its own name."""
    return base == REAL_MODEL_ID or Path(base).name == REAL_MODEL_ID.split("/")[1]


def _front_matter(base: str) -> str:
    meta: dict[str, Any] = {"library_name": "transformers", "pipeline_tag": "image-text-to-text",
                            "tags": ["qwen2_5_vl", "lora", "qvl-course"]}
    if is_real_model(base):
        meta.update(base_model=[REAL_MODEL_ID], license=QWEN_LICENCE[0],
                    license_name=QWEN_LICENCE[1], license_link=QWEN_LICENCE[2])
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True) + "---\n"


def _training(adapter: Path, run: Path | None) -> list[str]:
    settings = yaml.safe_load((adapter / RUN_CONFIG).read_text(encoding="utf-8")) \
        if (adapter / RUN_CONFIG).is_file() else {}
    identity = read_json(run / "run.json") if run else None
    lines = ["## Training", ""]
    if identity:
        data = identity.get("data", {})
        lines.append(f"- data: `{Path(identity.get('where', {}).get('source', '?')).name}` "
                     f"(sha256 `{str(data.get('source_sha256', '?'))[:16]}…`), split without "
                     "leakage into train / val / test")
    resolved = settings.get("resolved", {})
    if resolved:
        lines.append(f"- samples: {resolved.get('train_records')} train, "
                     f"{resolved.get('val_records')} validation, "
                     f"{resolved.get('test_records')} held-out test")
    lines += [f"- {key}: `{settings[key]}`" for key in CARD_SETTINGS if key in settings]
    return lines + [""]


def find_report(run: Path | None, adapter: Path) -> dict[str, Any] | None:
    """The newest evaluation report of this adapter in the run's outputs folder."""
    if run is None:
        return None
    reports = sorted(Outputs.of_run(run).folder("eval").glob("*/report.json"),
                     key=lambda p: p.stat().st_mtime, reverse=True)
    for path in reports:
        report = read_json(path)
        if report and report.get("adapter") and \
                Path(report["adapter"]).resolve() == adapter.resolve():
            return report
    return None


def _evaluation(report: dict[str, Any] | None) -> list[str]:
    if not report:
        return ["## Evaluation", "", "Not evaluated yet (`qvl eval --run` writes the table this "
                "card shows).", ""]
    metric = report["headline"]
    lines = ["## Evaluation", "",
             f"{report['n']} held-out samples, task `{report['task']}`, {metric} with 95% "
             "bootstrap intervals:", "", f"| system | {metric} |", "|---|---|"]
    for name, summary in report["systems"].items():
        cell = summary["metrics"][metric]
        lines.append(f"| {name} | {cell['value']:.3f} [{cell['low']:.3f}, {cell['high']:.3f}] |")
    return lines + [""] + [f"- {c['verdict']}" for c in report["comparisons"]] + [""]


def _usage(min_pixels: int, max_pixels: int) -> list[str]:
    return ["## Use", "", "```python", "from transformers import AutoModelForImageTextToText, "
            "AutoProcessor", "",
            'processor = AutoProcessor.from_pretrained("THIS_FOLDER")  # image limits included',
            'model = AutoModelForImageTextToText.from_pretrained("THIS_FOLDER", dtype="auto", '
            'device_map="auto")', "```", "",
            f"The processor resizes images to between {min_pixels} and {max_pixels} pixels, as in "
            "training; generation is greedy and stops at `<|im_end|>` (generation_config.json). "
            "From a terminal: `qvl chat --model THIS_FOLDER --image photo.jpg \"question\"`.", ""]


def gguf_section(info: dict[str, Any]) -> list[str]:
    """How to run the GGUF pair (only when ``qvl export --gguf`` made one)."""
    from .gguf_compare import verdict_line
    from .llama_run import LLAMA_CPP_PYTHON

    summary = info.get("gguf")
    if not summary or "files" not in summary:
        return []
    files = {kind: f"gguf/{f['file']}" for kind, f in summary["files"].items()}
    text, mmproj = files["f16"], files["mmproj"]
    lo, hi = summary["image_tokens"]
    verdict = verdict_line(summary) if summary.get("verified") else \
        f"**Not verified**: {summary.get('problem', 'see export.json')}"
    lines = ["## Run it locally (GGUF, llama.cpp)", "",
             "| file | what | size |", "|---|---|---|"]
    for kind, f in summary["files"].items():
        what = "vision projector (f16)" if kind == "mmproj" else f"language model ({kind})"
        lines.append(f"| `{files[kind]}` | {what} | {human_size(f['bytes'])} |")
    return lines + [
        "", verdict, "",
        "An OpenAI-compatible server on the pair, with the chat format the verification used "
        "(llama-cpp-python's server and its `qwen2.5-vl` handler, with Qwen's prompt and the "
        "training image limits; this machine only), with the course and its gguf extra installed "
        "(`pip install -e '.[gguf]'` in the course's folder), run in this folder:", "",
        "```bash", "qvl serve . --port 8000", "```", "",
        "Ask it about an image (the request goes in a file: a photo in base64 is too long for "
        "one command-line argument; on macOS, `base64 -i photo.png`):", "", "```bash",
        "{ printf '{\"temperature\": 0, \"messages\": [{\"role\": \"user\", \"content\": "
        "[{\"type\": \"image_url\", \"image_url\": {\"url\": \"data:image/png;base64,'; "
        "base64 -w0 photo.png; printf '\"}}, {\"type\": \"text\", \"text\": \"What is in "
        "this picture?\"}]}]}'; } > request.json",
        "curl -s http://127.0.0.1:8000/v1/chat/completions -H 'Content-Type: application/json' "
        "-d @request.json", "```", "",
        f"Training saw images of {lo} to {hi} visual tokens (28 × 28 pixels each). "
        f"llama-cpp-python's own `python -m llama_cpp.server --chat_format qwen2.5-vl` (version "
        f"{LLAMA_CPP_PYTHON}) resizes within llama.cpp's defaults instead (8 to 4096 tokens) and "
        "ends the prompt without the newline after `assistant` that Qwen's template has, so a "
        "fine-tune may answer otherwise there; `qvl serve` corrects both. llama.cpp's own server "
        "takes the limits (not run by the course):", "", "```bash",
        f"llama-server -m {text} --mmproj {mmproj} --image-min-tokens {lo} "
        f"--image-max-tokens {hi} --temp 0 --host 127.0.0.1 --port 8080", "```", "",
        "LM Studio: put both files in one folder under its models folder "
        "(`~/.lmstudio/models/you/NAME/`); it pairs the `mmproj-` file with the model. "
        f"Ollama: a Modelfile with `FROM ./{text}` (in this folder) imports the language model "
        "for text. Whether Ollama loads a separate llama.cpp vision projector for an imported "
        "Qwen2.5-VL was not tried; its tracker reports such projectors (a second `FROM`, or "
        "`ADAPTER`) failing to load for other imported Qwen vision models (ollama/ollama issues "
        "14730 and 15346), so for images use llama.cpp or LM Studio. LM Studio and Ollama were "
        "not run by the course.",
        ""]


def model_card(request: Any, info: dict[str, Any]) -> str:
    """The card's Markdown text for an export (``info``: what the merge recorded)."""
    base = str(request.model)
    tiny = info.get("base_is_tiny", False)
    lines = [_front_matter(base), f"# {Path(request.out_dir).name}", "",
             f"A LoRA fine-tune of `{base}`, merged into its {info['dtype']} weights by "
             "`qvl export` (the Qwen2.5-VL fine-tuning course). `export.json` records whether the "
             "merged model was verified to answer like the base model with the adapter.", ""]
    if tiny:
        lines += ["> **This is the course's tiny random stand-in model.** Its answers only "
                  "show that the pipeline works.", ""]
    lines += _training(Path(request.adapter), request.run)
    lines += _evaluation(find_report(request.run, Path(request.adapter)))
    lines += _usage(info["min_pixels"], info["max_pixels"])
    lines += gguf_section(info)
    licence = (f"The base model's licence applies: [{QWEN_LICENCE[1]}]({QWEN_LICENCE[2]})."
               if is_real_model(base) else "The base model's licence applies.")
    lines += ["## Licence", "", licence, "", "## Limitations", "",
              "- It was tuned and tested on the data above only; expect it to fail on images "
              "and questions unlike them.",
              "- The scores come from a small held-out split: read the intervals, not just the "
              "numbers.",
              "- It answers from the picture as the processor resized it: fine print below that "
              "resolution is not seen.", ""]
    return "\n".join(lines)


def write_model_card(folder: Path, request: Any, info: dict[str, Any]) -> Path:
    """Write ``README.md`` into the export folder."""
    return write_text(folder / "README.md", model_card(request, info))
