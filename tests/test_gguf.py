"""``qvl export --gguf``: llama.cpp's GGUF pair from the verified merge, verified in llama.cpp.

The tests marked ``gguf`` need the ``gguf`` extra (llama-cpp-python, built from source) and the
converter (fetched once from its source distribution): ``.ci/run`` installs both and runs them;
``scripts/test.sh`` leaves them out. The rest (the comparison's rules, the one-sentence message
without the extra, the pre-tokenizer rule, the model card) run everywhere.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from inprocess import run_main

from qvl_helpers.gguf_compare import TIE_TOLERANCE, Observed, compare, parting, verdict_line
from qvl_helpers.gguf_export import pre_tokenizer_name

REPO = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------- everywhere

def test_without_the_extra_gguf_export_says_how_to_add_it(monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str],
                                                          tmp_path: Path) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # import fails as without the extra
    code, out, err = run_main(capsys, "export", "--run", tmp_path / "runs" / "r", "--gguf")
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, err
    assert "not installed" in err and "pip install -e '.[gguf]'" in err
    assert not (tmp_path / "export").exists()  # nothing was started


def test_the_stand_in_splits_text_by_qwen2_rules(tiny_dir: Path, tmp_path: Path) -> None:
    """(The real tokenizer's case is in test_real_tokenizer.py, which builds it once.)"""
    assert pre_tokenizer_name(tiny_dir) == "qwen2"
    other = tmp_path / "other"
    other.mkdir()
    saved = json.loads((tiny_dir / "tokenizer.json").read_text(encoding="utf-8"))
    saved["normalizer"] = None  # another tokenizer's rules: llama.cpp decides by its own hash
    (other / "tokenizer.json").write_text(json.dumps(saved), encoding="utf-8")
    assert pre_tokenizer_name(other) is None


def observed(draw: st.DrawFn, n: int) -> tuple[Observed, Observed]:
    """A transformers and a llama.cpp observation of ``n`` samples, parting at random steps;
    each step's largest logits hold the picked token on top and some of the others."""
    ids = st.lists(st.integers(0, 5), min_size=1, max_size=6)
    ref, other = Observed(), Observed()
    for _ in range(n):
        said = draw(ids)
        theirs = said[:draw(st.integers(0, len(said)))] + draw(st.lists(st.integers(0, 5),
                                                                         max_size=3))
        length = draw(st.integers(5, 9))
        for seen, answer in ((ref, said), (other, theirs)):
            seen.tokens.append(answer)
            seen.answers.append(" ".join(map(str, answer)))
            steps = []
            for token in answer:
                top = {t: draw(st.floats(0, 10)) for t in draw(st.sets(st.integers(0, 5)))}
                top[token] = max(top.values(), default=0.0) + draw(st.floats(0, 0.12))
                steps.append(top)
            seen.top.append(steps)
            seen.prompt_positions.append(length)
        other.prompt_positions[-1] += draw(st.sampled_from([0, 0, 0, 1]))
    return ref, other


@settings(max_examples=300, deadline=None)
@given(st.data(), st.integers(1, 5))
def test_f16_fails_exactly_when_an_answer_parts_beyond_a_near_tie(data: st.DataObject,
                                                                   n: int) -> None:
    ref, other = data.draw(st.composite(lambda draw: observed(draw, n))())
    records = [{"id": f"s{i}", "messages": []} for i in range(n)]
    result = compare(ref, other, records, exact=True)
    expected_problems = 0
    for i in range(n):
        expected_problems += ref.prompt_positions[i] != other.prompt_positions[i]
        step = parting(ref, other, i)
        if step is None:
            assert ref.tokens[i] == other.tokens[i]
            continue
        # the same tokens up to the parting step, and another one (or none) there
        a, b = ref.tokens[i], other.tokens[i]
        assert a[:step] == b[:step] and a[step:step + 1] != b[step:step + 1]
        # a near tie: both picked a token, each knows the other's, and together they prefer
        # their own by at most the tolerance
        known = step < len(a) and step < len(b) and b[step] in ref.top[i][step] \
            and a[step] in other.top[i][step]
        gap = (ref.top[i][step][a[step]] - ref.top[i][step][b[step]]
               + other.top[i][step][b[step]] - other.top[i][step][a[step]]) if known else None
        expected_problems += gap is None or gap > TIE_TOLERANCE
    assert len(result["problems"]) == expected_problems
    assert result["same_answers"] == sum(a == b for a, b in zip(ref.tokens, other.tokens,
                                                                strict=True))
    assert result["agreement"] == result["same_answers"] / n
    assert len(result["partings"]) == n - result["same_answers"]
    # quantized files only report: never a problem for another answer
    assert len(compare(ref, other, records, exact=False)["problems"]) == \
        sum(a != b for a, b in zip(ref.prompt_positions, other.prompt_positions, strict=True))
    if not result["problems"]:  # the verdict line is only printed for verified files
        summary = {"results": {"f16": result, "Q8_0": result}}
        line = verdict_line(summary)
        assert f"gives {result['same_answers']} of {n} answers exactly" in line
        assert f"Q8_0: {result['same_answers']} of {n} the same ({result['agreement']:.0%})" in line
        assert ("near tie" in line) == bool(result["partings"])


def test_the_model_card_shows_how_to_run_the_pair_it_holds() -> None:
    from qvl_helpers.modelcard import gguf_section

    summary = {"verified": True, "image_tokens": [4, 16],
               "files": {"f16": {"file": "shapes-f16.gguf", "bytes": 900_000},
                         "mmproj": {"file": "mmproj-shapes-f16.gguf", "bytes": 520_000},
                         "Q8_0": {"file": "shapes-Q8_0.gguf", "bytes": 500_000}},
               "results": {"f16": {"samples": 3, "same_answers": 3, "agreement": 1.0,
                                   "partings": [], "problems": []}}}
    card = "\n".join(gguf_section({"gguf": summary}))
    assert "\nqvl serve . --port 8000\n" in card
    assert "-m gguf/shapes-f16.gguf --mmproj gguf/mmproj-shapes-f16.gguf" in card
    assert "--image-min-tokens 4 --image-max-tokens 16" in card
    assert "`gguf/shapes-Q8_0.gguf` | language model (Q8_0)" in card
    assert verdict_line(summary) in card
    assert gguf_section({}) == []  # no GGUF, no section


# --------------------------------------------------------------------------- with llama.cpp

def _needs_llama_cpp() -> None:
    """Skip without the extra, except where it must be there (scripts/gguf_test.sh sets
    QVL_REQUIRE_GGUF=1: there a missing or other llama-cpp-python is a failure)."""
    import os

    from qvl_helpers.llama_run import GGUFSetupError, require_llama_cpp

    try:
        require_llama_cpp()
    except GGUFSetupError as exc:
        if os.environ.get("QVL_REQUIRE_GGUF") == "1":
            pytest.fail(str(exc))
        pytest.skip("needs the gguf extra (pip install -e '.[gguf]', a 6-minute build); "
                    ".ci/run installs it and runs these tests")


@pytest.fixture(scope="module")
def gguf_export(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The suite's trained run exported, then given GGUF files with ``--gguf --quantize Q8_0``
    (the way a learner adds them to an export they have; once)."""
    import contextlib
    import io

    from qvl_helpers.cli import main

    _needs_llama_cpp()  # before the training the run needs
    trained_run = request.getfixturevalue("trained_run")
    out = tmp_path_factory.mktemp("gguf") / "export"
    said, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(said), contextlib.redirect_stderr(err):
        code = main(["export", "--run", str(trained_run.run), "--out", str(out)])
        assert code == 0, err.getvalue()[-2000:]
        code = main(["export", "--run", str(trained_run.run), "--out", str(out), "--gguf",
                     "--quantize", "Q8_0"])
    return {"code": code, "out": out, "stdout": said.getvalue(), "stderr": err.getvalue(),
            "run": trained_run.run}


@pytest.mark.gguf
def test_export_writes_the_pair_and_verifies_it_in_llama_cpp(gguf_export: dict) -> None:
    assert gguf_export["code"] == 0, gguf_export["stderr"][-2000:]
    out = gguf_export["out"]
    names = sorted(p.name for p in (out / "gguf").iterdir())
    assert names == ["export-Q8_0.gguf", "export-f16.gguf", "mmproj-export-f16.gguf"]
    info = json.loads((out / "export.json").read_text())
    summary = info["gguf"]
    assert summary["verified"] and info["verified"]
    f16 = summary["results"]["f16"]
    assert f16["samples"] == summary["samples"] > 0 and not f16["problems"]
    assert verdict_line(summary) in gguf_export["stdout"]
    assert "is a verified export: adding GGUF files to it" in gguf_export["stdout"]
    assert verdict_line(summary) in (out / "README.md").read_text(encoding="utf-8")
    assert not (out / "gguf" / "UNVERIFIED.txt").exists()


@pytest.mark.gguf
def test_a_second_gguf_run_never_overwrites_unasked(gguf_export: dict,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    before = (gguf_export["out"] / "gguf" / "export-f16.gguf").stat().st_mtime_ns
    code, _, err = run_main(capsys, "export", "--run", gguf_export["run"], "--out",
                            gguf_export["out"], "--gguf")
    assert code == 2 and "already holds GGUF files; nothing was overwritten" in err
    assert (gguf_export["out"] / "gguf" / "export-f16.gguf").stat().st_mtime_ns == before


@pytest.mark.gguf
@pytest.mark.parametrize(("file", "tensor"), [("export-f16.gguf", "output_norm.weight"),
                                              ("mmproj-export-f16.gguf", "mm.2.weight")])
def test_a_gguf_with_one_altered_tensor_fails_verification(gguf_export: dict, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str],
                                                           file: str, tensor: str) -> None:
    """One tensor altered in place, in the language model or in the vision projector."""
    import numpy as np
    from gguf import GGUFReader

    copy = tmp_path / "export"
    shutil.copytree(gguf_export["out"], copy)
    check = ["export", "--run", gguf_export["run"], "--out", copy, "--check-only", "--gguf"]
    code, out, err = run_main(capsys, *check)
    assert code == 0 and "GGUF verified in llama.cpp" in out, err  # the copy passes as it is
    reader = GGUFReader(copy / "gguf" / file, "r+")
    data = np.asarray(next(t for t in reader.tensors if t.name == tensor).data)
    data[...] = -data  # every weight of that tensor flips its sign
    del reader, data
    code, _, err = run_main(capsys, *check)
    assert code == 1, err
    assert "the GGUF files do not answer like the merged model" in err
    info = json.loads((copy / "export.json").read_text())
    assert info["gguf"]["verified"] is False
    assert (copy / "gguf" / "UNVERIFIED.txt").is_file()
    code, _, err = run_main(capsys, "serve", copy)  # and they are not served
    assert code == 2 and "not verified" in err


@pytest.mark.gguf
def test_the_model_cards_server_answers_a_chat_request_with_an_image(gguf_export: dict,
                                                                     tmp_path: Path) -> None:
    """The server command of the model card, run on loopback: an OpenAI-style chat request with
    an image gets the answer the verification recorded for that sample."""
    import shlex
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    from qvl_helpers.data import load_records
    from qvl_helpers.evaluate import plan_for_run
    from qvl_helpers.llama_run import openai_messages

    out = gguf_export["out"]
    card = (out / "README.md").read_text(encoding="utf-8")
    (command,) = [line for line in card.splitlines() if line.startswith("qvl serve")]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = shlex.split(command.replace("--port 8000", f"--port {port}"))
    info = json.loads((out / "export.json").read_text())
    first = info["gguf"]["results"]["f16"]["answers"][0]
    record = next(r for r in load_records(plan_for_run(gguf_export["run"]).data)
                  if r["id"] == first["sample"])
    server = subprocess.Popen([sys.executable, "-m", "qvl_helpers.cli", *args[1:]], cwd=out,
                              stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2)
                break
            except OSError:
                assert server.poll() is None, server.stderr.read()[-2000:]
                assert time.monotonic() < deadline, "the server did not start in 2 minutes"
                time.sleep(0.5)
        # the record's own image, not resized first: the server resizes it within the limits
        body = {"temperature": 0, "max_tokens": 32, "messages": openai_messages(record)}
        reply = urllib.request.urlopen(urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/chat/completions", data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"}), timeout=120)
        answer = json.loads(reply.read())["choices"][0]["message"]["content"]
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert answer == first["llama_cpp"] == first["transformers"]


@pytest.mark.gguf
def test_gguf_without_held_out_samples_is_refused_before_merging(
        gguf_export: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_main(capsys, "export", "--adapter", gguf_export["run"] / "adapter",
                            "--out", tmp_path / "x", "--gguf")
    assert code == 2 and "none were given" in err and "--data TEST.jsonl" in err
    assert not (tmp_path / "x").exists()
