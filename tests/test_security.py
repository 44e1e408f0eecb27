"""The rules of docs/security.md that a test can hold: no remote code, no pickled weights, no
secret printed, JupyterLab never without a token or on the network unless asked.

The scanners are tested on planted bad code too, so that a scanner that finds nothing proves
something.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from qvl_helpers.errors import ModelError
from qvl_helpers.model import load_model, refuse_pickled_weights

REPO = Path(__file__).resolve().parent.parent
#: Calls that would run code from a download or a pickle.
UNSAFE = {
    r"trust_remote_code\s*=\s*True": "runs Python code downloaded with a model",
    r"use_safetensors\s*=\s*False": "allows pickled weights",
    r"weights_only\s*=\s*False": "unpickles arbitrary objects",
    r"\bpickle\.loads?\(": "unpickles arbitrary objects",
    r"""from_pretrained\([^)]*\.bin['"]""": "loads a pickled .bin checkpoint",
}
SECRET_NAME = re.compile(r"(?i)^(token|secret|password|api_?key|hf_token|jupyter_token|"
                         r"access_token|auth_token)$")
SECRET_VAR = re.compile(r"(?i)(TOKEN|SECRET|PASSWORD|API_?KEY)")
#: A JupyterLab launch without a token, or on every interface of the host.
AUTH_OFF = re.compile(r"token\s*=\s*(''|\"\"|\s|$)|disable_check_xsrf|password_required=False|"
                      r"(--ip|ServerApp\.ip)[= ]['\"]?0\.0\.0\.0", flags=re.M)
HUB_TOKEN = re.compile(r"\bhf_[A-Za-z0-9]{30,}\b")


def _python_sources() -> list[tuple[str, str]]:
    """(name, code) for the package, scripts, benchmarks and every notebook code cell."""
    found = [(str(p.relative_to(REPO)), p.read_text(encoding="utf-8"))
             for folder in ("qvl_helpers", "benchmarks", "scripts", "docker")
             for p in sorted((REPO / folder).rglob("*.py"))]
    for nb in sorted((REPO / "notebooks").glob("*.ipynb")):
        cells = json.loads(nb.read_text(encoding="utf-8"))["cells"]
        for i, cell in enumerate(cells):
            if cell["cell_type"] == "code":
                code = "".join(cell["source"])
                code = "\n".join(line for line in code.splitlines()
                                 if not line.lstrip().startswith(("!", "%")))
                found.append((f"{nb.name} cell {i}", code))
    return found


def unsafe_calls(name: str, code: str) -> list[str]:
    found = [f"{name}: {why}" for pattern, why in UNSAFE.items() if re.search(pattern, code)]
    for node in ast.walk(ast.parse(code)):
        if (isinstance(node, ast.Call) and ast.unparse(node.func).endswith("torch.load")
                and not any(k.arg == "weights_only" and isinstance(k.value, ast.Constant)
                            and k.value.value is True for k in node.keywords)):
            found.append(f"{name}:{node.lineno}: torch.load without weights_only=True")
    return found


def _is_secret(node: ast.AST) -> bool:
    """A name that holds a secret, or a read of a secret environment variable."""
    if isinstance(node, ast.Name):
        return bool(SECRET_NAME.match(node.id))
    if isinstance(node, ast.Attribute):
        return bool(SECRET_NAME.match(node.attr))
    if isinstance(node, (ast.Subscript, ast.Call)):
        text = ast.unparse(node)
        if "environ" in text or "getenv" in text:
            keys = [c.value for c in ast.walk(node) if isinstance(c, ast.Constant)
                    and isinstance(c.value, str)]
            return any(SECRET_VAR.search(k) for k in keys)
    return False


def printed_secrets(name: str, code: str) -> list[str]:
    """print()/logging/write calls whose arguments contain a secret's value."""
    found = []
    for node in ast.walk(ast.parse(code)):
        if not isinstance(node, ast.Call):
            continue
        func = ast.unparse(node.func)
        if func == "print" or func.endswith((".info", ".warning", ".error", ".debug",
                                             ".write", ".echo")):
            args = [*node.args, *(k.value for k in node.keywords)]
            if any(_is_secret(sub) for arg in args for sub in ast.walk(arg)):
                found.append(f"{name}:{node.lineno}: {ast.unparse(node)[:100]}")
    return found


def test_no_remote_code_pickles_or_printed_secrets_in_the_course() -> None:
    problems = []
    for name, code in _python_sources():
        problems += unsafe_calls(name, code) + printed_secrets(name, code)
    assert problems == []


@pytest.mark.parametrize("bad", [
    'model = AutoModel.from_pretrained(path, trust_remote_code=True)',
    'state = torch.load("observed.pt")',
    'model = X.from_pretrained("out/pytorch_model.bin")',
    'print(os.environ["HF_TOKEN"])',
    'print(f"token: {os.environ.get(\'JUPYTER_TOKEN\')}")',
    'logger.info("using %s", hf_token)',
    'print("your token is", token)',
])
def test_the_scanners_catch_planted_code(bad: str) -> None:
    assert unsafe_calls("x", bad) + printed_secrets("x", bad)


def test_the_scanners_let_safe_code_pass() -> None:
    good = ('state = torch.load(p, weights_only=True)\n'
            'print(f"{tokens} visual tokens")\nprint("HF_TOKEN", "set" if x else "not set")\n')
    assert unsafe_calls("x", good) + printed_secrets("x", good) == []


def test_no_hub_token_is_committed() -> None:
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True)
    if tracked.returncode != 0:
        pytest.skip("not a git checkout")  # the scan needs the list of committed files
    hits = []
    for name in tracked.stdout.splitlines():
        path = REPO / name
        if path.is_file() and path.stat().st_size < 5_000_000:
            text = path.read_text(encoding="utf-8", errors="ignore")
            hits += [f"{name}: {m.group()[:6]}..." for m in HUB_TOKEN.finditer(text)]
    assert hits == []


def test_pickled_weights_are_refused_before_anything_loads(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}", encoding="utf-8")
    (tmp_path / "pytorch_model.bin").write_bytes(b"a pickle could run code here")
    with pytest.raises(ModelError) as refused:
        load_model(str(tmp_path), "none")
    message = str(refused.value)
    assert "pytorch_model.bin" in message and "safetensors" in message
    assert str(tmp_path) in message


def test_a_folder_with_safetensors_is_not_refused(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors").write_bytes(b"")
    (tmp_path / "training_args.bin").write_bytes(b"")  # beside safetensors: never loaded
    refuse_pickled_weights(tmp_path)
    refuse_pickled_weights("Qwen/Qwen2.5-VL-3B-Instruct")  # a hub id: from_pretrained refuses


def test_the_docker_service_is_loopback_only_with_a_token() -> None:
    compose = yaml.safe_load((REPO / "docker" / "compose.yaml").read_text(encoding="utf-8"))
    for name, service in compose["services"].items():
        for port in service["ports"]:
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"
        assert service["env_file"] == ".env"
    ignored = subprocess.run(["git", "check-ignore", "-q", "docker/.env"], cwd=REPO)
    assert ignored.returncode == 0, "docker/.env (the token) must be git-ignored"
    start = (REPO / "docker" / "start_lab.sh").read_text(encoding="utf-8")
    assert 'export JUPYTER_TOKEN="$token"' in start and "secrets.token_urlsafe" in start
    dockerfile = (REPO / "docker" / "Dockerfile").read_text(encoding="utf-8")
    users = re.findall(r"^USER\s+(\S+)", dockerfile, flags=re.M)
    assert users and users[-1] not in ("root", "0", "0:0")


@pytest.mark.parametrize("bad", ["jupyter lab --ServerApp.token=''", "jupyter lab --IdentityProvider.token=",
                                 "jupyter lab --ServerApp.ip=0.0.0.0", "jupyter lab --ip 0.0.0.0"])
def test_the_launcher_scan_catches_authentication_turned_off(bad: str) -> None:
    assert AUTH_OFF.search(bad)


def test_no_launcher_turns_authentication_off() -> None:
    for path in [REPO / "scripts" / "lab.sh", REPO / "docker" / "start_lab.sh"]:
        code = "\n".join(line for line in path.read_text(encoding="utf-8").splitlines()
                         if not line.lstrip().startswith("#"))
        assert not AUTH_OFF.search(code), path.name
