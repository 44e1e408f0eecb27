"""``qvl export`` (merge, verify in a fresh process, model card), ``qvl chat`` and ``qvl push``.

The adapters here are made directly with LoRA weights drawn at random (large enough to change
every answer), for each trained-part preset and for a 4-bit base: what is tested is that the merge
reproduces base + adapter, whatever the adapter learned. That a *trained* adapter survives the
merge with its exact match is tested on the learning run in test_train.py.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from inprocess import run_main

REPO = Path(__file__).resolve().parent.parent
SHAPES = REPO / "data_samples" / "shapes"


def make_adapter(tiny_dir: Path, folder: Path, trained: str, quantization: str = "none") -> Path:
    """A saved LoRA adapter (with processor and image limits, as training saves it) whose
    weights are random, so that merged and unmerged models differ from the base."""
    from transformers import AutoProcessor

    from qvl_helpers.lora import add_lora
    from qvl_helpers.model import load_model

    model = add_lora(load_model(str(tiny_dir), quantization), trained=trained, r=4, alpha=8,
                     dropout=0.0, gradient_checkpointing=False)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:  # lora_A/B, and the merger's trained copy
                param.add_(torch.randn(param.shape, generator=generator) * 0.3)
    model.save_pretrained(folder)
    AutoProcessor.from_pretrained(tiny_dir).save_pretrained(folder)
    (folder / "run_config.yaml").write_text("min_pixels: 3136\nmax_pixels: 12544\n")
    return folder


def held_out(tmp_path: Path, n: int = 3) -> Path:
    """The first ``n`` bundled shape samples, with their images, in ``tmp_path``."""
    import shutil

    lines = (SHAPES / "shapes.jsonl").read_text(encoding="utf-8").splitlines()[:n]
    (tmp_path / "images").mkdir()
    for line in lines:
        image = json.loads(line)["messages"][0]["content"][0]["image"]
        shutil.copy(SHAPES / image, tmp_path / image)
    out = tmp_path / "held_out.jsonl"
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out


@pytest.mark.slow
@pytest.mark.parametrize(("trained", "quantization"), [
    ("language", "none"), ("language+vision", "none"), ("language+merger", "none"),
    ("language", "4bit")])
def test_every_kind_of_adapter_merges_and_verifies(tmp_path: Path, tiny_dir: Path,
                                                   capsys: pytest.CaptureFixture[str],
                                                   trained: str, quantization: str) -> None:
    adapter = make_adapter(tiny_dir, tmp_path / "adapter", trained, quantization)
    out = tmp_path / "merged"
    code, stdout, err = run_main(capsys, "export", "--model", tiny_dir, "--adapter", adapter,
                                 "--data", held_out(tmp_path), "--out", out)
    assert code == 0, err
    assert "Verified in a fresh process on 3 held-out samples" in stdout
    assert "float32 on the cpu" in stdout and "it needs about" in stdout
    info = json.loads((out / "export.json").read_text())
    assert info["verified"] is True and info["verification"]["max_logit_difference"] < 1e-3
    assert not (out / "UNVERIFIED.txt").exists()
    assert not list(out.glob("adapter_*"))  # a plain model: no adapter files left inside
    settings = json.loads((out / "generation_config.json").read_text())
    assert settings["do_sample"] is False and "temperature" not in settings
    im_end = json.loads((out / "tokenizer.json").read_text())
    ids = {t["content"]: t["id"] for t in im_end["added_tokens"]}
    assert ids["<|im_end|>"] in settings["eos_token_id"]
    sizes = json.loads((out / "processor_config.json").read_text())["image_processor"]["size"]
    assert sizes == {"shortest_edge": 3136, "longest_edge": 12544}  # the training limits
    card = (out / "README.md").read_text()
    assert "float32 weights" in card and "tiny random stand-in" in card


@pytest.mark.slow
def test_a_corrupted_merge_fails_verification(tmp_path: Path, tiny_dir: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    from safetensors.torch import load_file, save_file

    adapter = make_adapter(tiny_dir, tmp_path / "adapter", "language")
    out, data = tmp_path / "merged", held_out(tmp_path)
    code, _, err = run_main(capsys, "export", "--model", tiny_dir, "--adapter", adapter,
                            "--data", data, "--out", out, "--no-verify")
    assert code == 0, err
    assert (out / "UNVERIFIED.txt").is_file()  # not verified: never looks good
    weights = out / "model.safetensors"
    tensors = load_file(str(weights))
    name = next(k for k in tensors if "layers.0.mlp.down_proj" in k)
    tensors[name] = tensors[name] * 3  # one merged weight goes wrong
    save_file(tensors, str(weights), metadata={"format": "pt"})
    code, _, err = run_main(capsys, "export", "--model", tiny_dir, "--adapter", adapter,
                            "--data", data, "--out", out, "--check-only")
    assert code == 1, err
    (line,) = re.findall(r"qvl export: error: [^\n]*", err)
    assert "does not behave like base + adapter" in line and "logits differ" in line
    assert "Fix:" in line and "Traceback" not in err
    info = json.loads((out / "export.json").read_text())
    assert info["verified"] is False and "logits differ" in info["problem"]
    assert "logits differ" in (out / "UNVERIFIED.txt").read_text()


def test_an_export_is_never_replaced_unasked(tmp_path: Path, tiny_dir: Path,
                                             capsys: pytest.CaptureFixture[str],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import qvl_helpers.model

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model was loaded: the check came too late")

    monkeypatch.setattr(qvl_helpers.model, "load_model", forbidden)
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    out = tmp_path / "merged"
    out.mkdir()
    (out / "config.json").write_text("{}")
    code, _, err = run_main(capsys, "export", "--model", tiny_dir, "--adapter", adapter,
                            "--out", out)
    assert code == 2 and "already exists" in err and "--force" in err
    assert (out / "config.json").read_text() == "{}"
    code, _, err = run_main(capsys, "export", "--model", tiny_dir, "--adapter", adapter,
                            "--out", adapter, "--force")
    assert code == 2 and "also an input" in err
    code, _, err = run_main(capsys, "export", "--model", tiny_dir)
    assert code == 2 and "nothing to export" in err


# --------------------------------------------------------------------------- chat

class FakeChat:
    def __init__(self) -> None:
        self.asked: list[tuple[str, str]] = []

    def answer(self, image: str, question: str, stream: bool = False) -> str:
        self.asked.append((str(image), question))
        return "red"


def test_the_chat_loop_switches_images_and_stops() -> None:
    from qvl_helpers.chat import interactive

    second = SHAPES / "images" / "shape_0001.png"
    lines = iter(["What colour?", "/image missing.png", f"/image {second}", "And now?", "exit",
                  "never asked"])
    said: list[str] = []
    chat = FakeChat()
    first = SHAPES / "images" / "shape_0000.png"
    answered = interactive(chat, first, read=lambda prompt: next(lines), say=said.append)
    assert answered == 2
    assert chat.asked == [(str(first), "What colour?"), (str(second), "And now?")]
    assert any("missing.png" in s and "does not exist" in s for s in said)


def test_chat_refuses_a_missing_image(capsys: pytest.CaptureFixture[str], tiny_dir: Path,
                                      tmp_path: Path) -> None:
    code, _, err = run_main(capsys, "chat", "--model", tiny_dir, "--image",
                            tmp_path / "nope.png", "What colour?")
    assert code == 1 and "nope.png" in err and "does not exist" in err


# --------------------------------------------------------------------------- push

class FakeApi:
    calls: list[tuple[str, dict]] = []

    def __init__(self, token: str | None = None) -> None:
        FakeApi.calls.append(("init", {"token": token}))

    public_repos: set[str] = set()

    def create_repo(self, repo_id: str, **kwargs: Any) -> str:
        FakeApi.calls.append(("create_repo", {"repo_id": repo_id, **kwargs}))
        return f"https://huggingface.co/{repo_id}"

    def repo_info(self, repo_id: str) -> Any:
        from types import SimpleNamespace

        return SimpleNamespace(private=repo_id not in FakeApi.public_repos)

    def upload_folder(self, **kwargs: Any) -> None:
        FakeApi.calls.append(("upload_folder", kwargs))


def test_push_is_private_and_never_shows_the_token(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    import huggingface_hub
    from huggingface_hub.errors import HfHubHTTPError

    secret = "hf_secretTOKEN123"
    monkeypatch.setenv("HF_TOKEN", secret)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # the tests run offline
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    FakeApi.calls = []
    folder = tmp_path / "merged"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    code, _, err = run_main(capsys, "push", folder, "--repo", "me/shapes")
    assert code == 2 and "not a verified export" in err and not FakeApi.calls
    (folder / "export.json").write_text('{"verified": true}')
    FakeApi.public_repos = {"me/public"}
    code, _, err = run_main(capsys, "push", folder, "--repo", "me/public")
    assert code == 2 and "already exists and is public" in err
    assert "upload_folder" not in [c[0] for c in FakeApi.calls]
    FakeApi.calls = []
    code, out, err = run_main(capsys, "push", folder, "--repo", "me/shapes")
    assert code == 0, err
    assert [c[0] for c in FakeApi.calls] == ["init", "create_repo", "upload_folder"]
    assert FakeApi.calls[0][1]["token"] == secret  # handed to the library, nowhere else
    assert FakeApi.calls[1][1]["private"] is True
    assert FakeApi.calls[2][1]["folder_path"] == str(folder)
    assert "private" in out and "https://huggingface.co/me/shapes" in out
    assert secret not in out + err
    assert all(secret not in p.read_text() for p in folder.iterdir())

    def refuse(self: FakeApi, **kwargs: Any) -> None:
        import httpx

        reply = httpx.Response(401, request=httpx.Request("POST", "https://huggingface.co"))
        raise HfHubHTTPError(f"401 Unauthorized for token {secret}", response=reply)

    monkeypatch.setattr(FakeApi, "upload_folder", refuse)
    code, out, err = run_main(capsys, "push", folder, "--repo", "me/shapes", "--public")
    assert code == 2 and "the Hub refused" in err and "***" in err
    assert secret not in out + err
    (folder / "UNVERIFIED.txt").write_text("failed")
    code, _, err = run_main(capsys, "push", folder, "--repo", "me/shapes")
    assert code == 2 and "not a verified export" in err


class NoHub:
    """A Hub client that fails the test as soon as it is made: nothing may be sent."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise AssertionError("qvl push reached the Hub client")


def _verified_export(folder: Path) -> Path:
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "export.json").write_text('{"verified": true}')
    return folder


@pytest.mark.parametrize("env", [
    {"HF_TOKEN": None},                            # no token at all
    {"HF_TOKEN": ""},                              # set, but empty
    {"HF_TOKEN": None, "HF_HUB_OFFLINE": "1"},     # both
])
def test_push_without_a_token_sends_nothing(env: dict[str, str | None], tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    import huggingface_hub
    import huggingface_hub.constants as hc

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setattr(hc, "HF_TOKEN_PATH", str(tmp_path / "no-stored-login"))
    for key, value in env.items():
        if value is None:
            monkeypatch.delenv(key, raising=False)
        else:
            monkeypatch.setenv(key, value)
    monkeypatch.setattr(huggingface_hub, "HfApi", NoHub)
    folder = _verified_export(tmp_path / "merged")
    code, out, err = run_main(capsys, "push", folder, "--repo", "me/shapes")
    assert code == 2 and "unexpected" not in err, err
    assert "nothing was sent" in err and err.count("\n") == 1, err
    assert ("HF_HUB_OFFLINE" in err) if "HF_HUB_OFFLINE" in env else ("HF_TOKEN" in err), err


@pytest.mark.parametrize("value", ["1", "true", "YES"])
def test_push_offline_sends_nothing_even_with_a_token(value: str, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    import huggingface_hub

    monkeypatch.setenv("HF_TOKEN", "hf_secretTOKEN123")
    monkeypatch.setenv("HF_HUB_OFFLINE", value)
    monkeypatch.setattr(huggingface_hub, "HfApi", NoHub)
    folder = _verified_export(tmp_path / "merged")
    code, _, err = run_main(capsys, "push", folder, "--repo", "me/shapes")
    assert code == 2 and "HF_HUB_OFFLINE is set" in err and "nothing was sent" in err, err
    assert "hf_secretTOKEN123" not in err


# --------------------------------------------------------------------------- the model card

def test_the_model_card_tells_what_the_files_say(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from qvl_helpers.modelcard import model_card
    from qvl_helpers.qwen import REAL_MODEL_ID

    run = tmp_path / "outputs" / "runs" / "receipts"
    adapter = run / "adapter"
    adapter.mkdir(parents=True)
    (adapter / "run_config.yaml").write_text(
        "quantization: 4bit\ntrained: language\nlora_r: 8\nlr: 0.0002\nmax_pixels: 401408\n"
        "resolved:\n  train_records: 80\n  val_records: 10\n  test_records: 10\n")
    (run / "run.json").write_text(json.dumps({
        "data": {"source_sha256": "ab" * 32}, "where": {"source": "/data/收据.jsonl"}}))
    interval = {"value": 0.9, "low": 0.7, "high": 1.0, "level": 0.95}
    report = {"adapter": str(adapter), "n": 10, "task": "json", "headline": "json_f1",
              "systems": {"base": {"metrics": {"json_f1": {**interval, "value": 0.1,
                                                           "low": 0.0, "high": 0.3}}},
                          "tuned": {"metrics": {"json_f1": interval}}},
              "comparisons": [{"verdict": "tuned is better than base in json_f1 by 0.800"}]}
    other = {**report, "adapter": str(tmp_path / "another" / "adapter"), "n": 99}
    for name, content in (("receipts", report), ("someone-else", other)):
        (tmp_path / "outputs" / "eval" / name).mkdir(parents=True)
        (tmp_path / "outputs" / "eval" / name / "report.json").write_text(json.dumps(content))
    request = SimpleNamespace(model=REAL_MODEL_ID, adapter=adapter, run=run,
                              out_dir=tmp_path / "outputs" / "export" / "receipts")
    card = model_card(request, {"dtype": "bfloat16", "min_pixels": 3136, "max_pixels": 401408})
    assert card.startswith("---\n") and "license_name: qwen-research" in card
    assert "base_model:\n- Qwen/Qwen2.5-VL-3B-Instruct" in card
    assert "merged into its bfloat16 weights" in card and "tiny random stand-in" not in card
    assert "`收据.jsonl` (sha256 `abababababababab…`)" in card
    assert "80 train, 10 validation, 10 held-out test" in card
    assert "- quantization: `4bit`" in card and "- max_pixels: `401408`" in card
    assert "| tuned | 0.900 [0.700, 1.000] |" in card  # this adapter's report, not the other
    assert "| base | 0.100 [0.000, 0.300] |" in card and "99 held-out" not in card
    assert "- tuned is better than base in json_f1 by 0.800" in card
    assert "between 3136 and 401408 pixels" in card


def test_greedy_answers_may_part_only_at_a_tie() -> None:
    """After the same prefix, two 16/32-bit roundings of one model can flip a near-tie; they
    cannot flip a clear choice (that is a different model)."""
    from qvl_helpers.verify import Reference, compare_observations

    logits = torch.tensor([[10.0, 1.0, 0.0]])
    reference = Reference([{"id": "s-1", "messages": []}], input_ids=[[1, 2]], grids=[[]],
                          logits=[logits], answers=["ab"], tokens=[[5, 6, 7]],
                          margins=[[3.0, 1e-6, 2.0]])
    merged = {"input_ids": [[1, 2]], "grids": [[]], "logits": [logits + 1e-7],
              "answers": ["ac"], "tokens": [[5, 8, 9]], "margins": [[3.0, 2e-6, 1.0]],
              "dtype": "float32"}
    problems, measured = compare_observations(reference, merged)
    assert problems == [] and measured["answer_ties"] == 1
    merged["margins"] = [[3.0, 0.5, 1.0]]  # the merged model clearly prefers another token
    problems, _ = compare_observations(reference, merged)
    assert problems == ["sample s-1: another greedy answer ('ac' instead of 'ab')"]


# --------------------------------------------------------------------------- every flag combination
# Each optional-argument combination the help of `qvl export`, `qvl eval` and `qvl chat` offers
# either works or is refused with one clear sentence (exit 2); none ends as "unexpected ... bug".
# The merges are real (tiny model, random adapter); the fresh process of the verification runs
# in this process and generation is scripted, so the whole table costs seconds per row.

def in_this_process(folder: Path, records: list, facts: dict) -> dict:
    """observe_in_fresh_process without the subprocess: the same code, the same files."""
    import tempfile

    from qvl_helpers.verify import _fresh_process_main

    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "records.json").write_text(json.dumps(records), encoding="utf-8")
        (Path(tmp) / "how.json").write_text(json.dumps({"device": "cpu", "attention": "sdpa"}))
        _fresh_process_main(str(folder), tmp)
        return torch.load(Path(tmp) / "observed.pt", weights_only=True)


@pytest.fixture(scope="module")
def combo(tmp_path_factory: pytest.TempPathFactory, tiny_dir: Path) -> dict[str, Path]:
    """A random-LoRA adapter, held-out data, a finished run made of them, an export of it."""
    import shutil

    import qvl_helpers.export as X
    import qvl_helpers.verify as V

    root = tmp_path_factory.mktemp("combo")
    adapter = make_adapter(tiny_dir, root / "adapter", "language")
    (root / "data").mkdir()
    data = held_out(root / "data")
    run = root / "outputs" / "runs" / "r"
    shutil.copytree(adapter, run / "adapter")
    (run / "run.json").write_text(json.dumps({
        "model": {"name": "tiny"},
        "where": {"model_path": str(tiny_dir), "splits": {"test": str(data), "train": str(data)}}}))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(V, "observe_in_fresh_process", in_this_process)
        X.export(X.ExportRequest(model=str(tiny_dir), adapter=adapter, out_dir=root / "export",
                                 samples=data), say=lambda *a: None)
    return {"A": adapter, "D": data, "R": run, "E": root / "export", "M": tiny_dir,
            "I": SHAPES / "images" / "shape_0000.png"}


def expand(flags: list[str], paths: dict[str, Path]) -> list[str]:
    return [str(paths.get(f, f)) for f in flags]


def clear_refusal_or_success(code: int, err: str) -> None:
    assert "unexpected" not in err and "Traceback" not in err, err
    assert code in (0, 2), err
    if code:
        lines = [line for line in err.splitlines() if ": error: " in line]
        assert len(lines) == 1, err


EXPORT_COMBOS = [  # flags, exit status, words of the output (stdout or the error line)
    (["--model", "M", "--adapter", "A"], 0, "Only the files were checked"),  # the learner's
    (["--adapter", "A"], 0, "Only the files were checked"),  # the base from adapter_config.json
    (["--model", "M", "--adapter", "A", "--data", "D"], 0, "Verified in a fresh process on 3"),
    (["--model", "M", "--adapter", "A", "--data", "D", "--samples", "1"], 0,
     "Verified in a fresh process on 1 held-out"),
    (["--model", "M", "--adapter", "A", "--no-verify"], 0, "NOT verified"),
    (["--model", "M", "--adapter", "A", "--data", "D", "--no-verify"], 0, "NOT verified"),
    (["--model", "M", "--adapter", "A", "--temperature", "0.7"], 0, "Only the files"),
    (["--run", "R"], 0, "Verified in a fresh process on 3"),
    (["--run", "R", "--no-verify", "--samples", "2"], 0, "NOT verified"),
    (["--run", "R", "--data", "D", "--samples", "1"], 0,
     "Verified in a fresh process on 1 held-out"),
    (["--run", "R", "--adapter", "A"], 0, "Verified"),
    (["--model", "M"], 2, "nothing to export"),
    ([], 2, "nothing to export"),
    (["--adapter", "D"], 2, "does not record its base model"),
    (["--model", "M", "--adapter", "A", "--temperature", "-1"], 2, "must be 0 or more"),
    (["--model", "M", "--adapter", "A", "--samples", "0"], 2, "must be at least 1"),
]


def export_says(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                args: list, status: int, words: str) -> int:
    """``qvl export ARGS`` (verified in this process): its exit status is ``status`` and it says
    ``words`` (on stdout when it succeeds, else in its one-line refusal)."""
    import qvl_helpers.verify as V

    monkeypatch.setattr(V, "observe_in_fresh_process", in_this_process)
    code, stdout, err = run_main(capsys, "export", *args)
    clear_refusal_or_success(code, err)
    assert code == status, err
    assert words in (stdout if code == 0 else err)
    return code


@pytest.mark.parametrize(("flags", "status", "words"), EXPORT_COMBOS,
                         ids=[" ".join(c[0]) or "none" for c in EXPORT_COMBOS])
def test_every_export_combination_works_or_says_why(
        flags: list[str], status: int, words: str, combo: dict[str, Path], tmp_path: Path,
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "merged"
    code = export_says(capsys, monkeypatch, [*expand(flags, combo), "--out", out], status, words)
    if code == 0:
        info = json.loads((out / "export.json").read_text())
        assert info["verified"] is ("Verified" in words)
        assert (out / "UNVERIFIED.txt").exists() is not info["verified"]
    else:
        assert not out.exists()


CHECK_COMBOS = [
    (["--out", "E", "--data", "D"], 0, "verified in a fresh process on 3"),
    (["--out", "E", "--data", "D", "--samples", "2"], 0, "on 2 held-out"),
    (["--out", "E"], 0, "Only the files were checked"),
    (["--out", "E", "--model", "M", "--adapter", "A", "--data", "D"], 0, "verified"),
    (["--out", "E", "--adapter", "A", "--data", "D"], 0, "verified"),
    ([], 2, "needs the export's folder"),
    (["--out", "D"], 2, "not a folder made by qvl export"),
    (["--out", "E", "--force"], 2, "--force would do nothing"),
    (["--out", "E", "--no-verify", "--temperature", "1"], 2, "--no-verify and --temperature"),
]


@pytest.mark.parametrize(("flags", "status", "words"), CHECK_COMBOS,
                         ids=[" ".join(c[0]) or "none" for c in CHECK_COMBOS])
def test_every_check_only_combination_works_or_says_why(
        flags: list[str], status: int, words: str, combo: dict[str, Path], tmp_path: Path,
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    paths = {**combo, "E": tmp_path / "export"}
    shutil.copytree(combo["E"], paths["E"])
    export_says(capsys, monkeypatch, ["--check-only", *expand(flags, paths)], status, words)


@pytest.fixture
def scripted_answers(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Generation answers 'red' to everything (the rest of eval and chat is real)."""
    import qvl_helpers.chat
    import qvl_helpers.evaluate

    asked: list[int] = []

    def answers(model: Any, processor: Any, records: list, **kwargs: Any) -> list[str]:
        asked.append(len(records))
        return ["red"] * len(records)

    monkeypatch.setattr(qvl_helpers.evaluate, "generate_answers", answers)
    monkeypatch.setattr(qvl_helpers.chat, "generate_answers", answers)
    return asked


EVAL_COMBOS = [
    (["--run", "R", "--allow-overlap"], 0),
    (["--run", "R", "--compare", "base,tuned", "--allow-overlap"], 0),
    (["--run", "R", "--compare", "tuned", "--image-ablation", "blank", "--allow-overlap"], 0),
    (["--run", "R", "--data", "D", "--task", "short", "--allow-overlap"], 0),
    (["--run", "R"], 1),  # its test split is its training split here: refused, with the flag
    (["--model", "M", "--data", "D"], 0),
    (["--model", "M", "--adapter", "A", "--data", "D"], 0),
    (["--model", "M", "--adapter", "A", "--data", "D", "--compare", "tuned-blank"], 0),
    (["--model", "M", "--data", "D", "--compare", "tuned"], 2),
    (["--model", "M"], 2),
    (["--adapter", "A", "--data", "D"], 2),
    ([], 2),
]


@pytest.mark.parametrize(("flags", "status"), EVAL_COMBOS,
                         ids=[" ".join(c[0]) or "none" for c in EVAL_COMBOS])
def test_every_eval_combination_works_or_says_why(
        flags: list[str], status: int, combo: dict[str, Path], tmp_path: Path,
        capsys: pytest.CaptureFixture[str], scripted_answers: list[int]) -> None:
    code, stdout, err = run_main(capsys, "eval", *expand(flags, combo), "--out", tmp_path / "ev")
    assert "unexpected" not in err and "Traceback" not in err, err
    assert code == status, err
    if code:
        assert len([line for line in err.splitlines() if ": error: " in line]) == 1, err
    else:
        assert (tmp_path / "ev" / "report.json").is_file()


CHAT_COMBOS = [
    (["--model", "M", "--image", "I", "What colour?"], 0),
    (["--model", "M", "--adapter", "A", "--image", "I", "What", "colour?"], 0),
    (["--model", "E", "--image", "I", "What colour?"], 0),
    (["--model", "M", "--image", "I", "--max-new-tokens", "1", "What colour?"], 0),
    (["--model", "M", "--image", "I"], 0),  # questions from standard input, one per line
    (["--model", "M", "--image", "I", "--max-new-tokens", "0", "What colour?"], 2),
    (["--model", "M", "--adapter", "E", "--image", "I", "What colour?"], 2),
    (["--image", "I", "What colour?"], 2),
    (["--model", "M", "What colour?"], 2),
]


@pytest.mark.parametrize(("flags", "status"), CHAT_COMBOS,
                         ids=[" ".join(c[0]) for c in CHAT_COMBOS])
def test_every_chat_combination_works_or_says_why(
        flags: list[str], status: int, combo: dict[str, Path],
        capsys: pytest.CaptureFixture[str], scripted_answers: list[int],
        monkeypatch: pytest.MonkeyPatch) -> None:
    import io
    import sys

    monkeypatch.setattr(sys, "stdin", io.StringIO("What colour?\nAnd now?\n"))
    code, stdout, err = run_main(capsys, "chat", *expand(flags, combo))
    assert "unexpected" not in err and "Traceback" not in err, err
    assert code == status, err
    if code == 0:
        assert scripted_answers and all(n == 1 for n in scripted_answers)
