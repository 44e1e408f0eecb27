"""Colab and Kaggle: ``qvl bundle`` and the notebooks' first cell (``qvl_helpers/setup_cell.py``).

The slow test simulates a hosted session: a fresh virtual environment whose PyTorch and Jupyter
kernel are "the platform's" (linked from this environment, outside the new one), the hosted
marker set, the archive in the session folder, pip cut off from every index; notebook 00 then
runs with its first cell installing the course.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import venv
from importlib import metadata
from pathlib import Path

import nbformat
import pytest
from limits import HANG_GUARD_S
from nbcheck import load, source
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from qvl_helpers import bundle, setup_cell
from qvl_helpers.env import load_tested_versions
from qvl_helpers.errors import OutputExistsError

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))


def test_every_notebook_opens_with_the_setup_cell_module() -> None:
    cell = (REPO / "qvl_helpers" / "setup_cell.py").read_text(encoding="utf-8").rstrip("\n")
    for path in NOTEBOOKS:
        assert source(load(path)["cells"][1]) == cell, f"{path.name}: run the setup cell update"


def test_the_newest_archive_is_found_in_any_searched_place(tmp_path: Path) -> None:
    upload, dataset = tmp_path / "content", tmp_path / "kaggle" / "my-course-zip"
    upload.mkdir()
    dataset.mkdir(parents=True)
    old = upload / "qvl-course.zip"
    old.write_bytes(b"old")
    new = dataset / "qvl-course (1).zip"  # a dataset: one folder deeper
    new.write_bytes(b"new")
    os.utime(old, (1, 1))
    (upload / "other.zip").write_bytes(b"not the course")
    assert setup_cell.find_course([str(upload), str(tmp_path / "kaggle")]) == new
    assert setup_cell.find_course([str(tmp_path / "missing")]) is None


def test_a_kaggle_dataset_unpacked_by_kaggle_is_copied_and_installed(tmp_path: Path,
                                                                     monkeypatch) -> None:
    """Kaggle unpacks an uploaded zip: /kaggle/input/<dataset>/qvl-course/... (read-only)."""
    unpacked = tmp_path / "input" / "my-course" / "qvl-course"
    (unpacked / "wheels").mkdir(parents=True)
    (unpacked / "course.yaml").write_text("model: auto\n", encoding="utf-8")
    (unpacked / "wheels" / "qvl_helpers-0.1.0-py3-none-any.whl").write_bytes(b"wheel")
    for path in [*unpacked.rglob("*"), unpacked]:
        path.chmod(0o555 if path.is_dir() else 0o444)
    calls: list[tuple[str, ...]] = []
    monkeypatch.setattr(setup_cell, "pip", lambda *args: calls.append(args) or True)
    home = tmp_path / "working"
    home.mkdir()
    try:
        course = setup_cell.install_course(home, [str(tmp_path / "input")])
    finally:
        for path in [unpacked, *unpacked.rglob("*")]:
            path.chmod(0o755)
    assert course == home / "qvl-course" and (course / "course.yaml").is_file()
    (course / "outputs").mkdir()  # the copy is writable
    (args,) = calls
    assert "--no-index" in args  # offline first
    assert f"{course / 'wheels' / 'qvl_helpers-0.1.0-py3-none-any.whl'}[hosted]" in args
    pins = (course / "platform-constraints.txt").read_text(encoding="utf-8")
    assert f"torch=={metadata.version('torch')}" in pins  # the platform's PyTorch stays


def test_without_archive_or_repo_the_cell_names_the_three_ways(tmp_path: Path,
                                                               monkeypatch) -> None:
    monkeypatch.setattr(setup_cell, "COURSE_REPO", "")
    with pytest.raises(SystemExit) as stop:
        setup_cell.install_course(tmp_path, [str(tmp_path)])
    message = str(stop.value)
    assert "qvl bundle" in message and "Kaggle" in message and "COURSE_REPO" in message


def test_the_cell_does_nothing_outside_colab_and_kaggle(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items()
           if k not in ("QVL_HOSTED", "KAGGLE_KERNEL_RUN_TYPE")}
    code = (REPO / "qvl_helpers" / "setup_cell.py").read_text(encoding="utf-8")
    done = subprocess.run([sys.executable, "-c", code + "\nprint(os.getcwd())"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(tmp_path)  # no install, no chdir


def test_an_installed_course_is_reused_and_outputs_kept_on_kaggle(tmp_path: Path,
                                                                monkeypatch) -> None:
    course = tmp_path / "qvl-course"
    (course / "notebooks").mkdir(parents=True)
    (course / "course.yaml").write_text("model: tiny\n", encoding="utf-8")
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Interactive")
    monkeypatch.setenv("QVL_SESSION_ROOT", str(tmp_path))
    monkeypatch.setenv("QVL_OUTPUT_DIR", "unset after the test")
    monkeypatch.delenv("QVL_OUTPUT_DIR")
    monkeypatch.setattr(setup_cell, "KEEP_OUTPUTS", True)
    monkeypatch.setattr(setup_cell, "install_course", lambda *a: pytest.fail("reinstalled"))
    monkeypatch.chdir(tmp_path)  # restored after the test
    setup_cell.setup_hosted()
    assert Path.cwd() == course / "notebooks"
    assert os.environ["QVL_OUTPUT_DIR"] == str(tmp_path / "qvl-outputs")  # Kaggle's output folder


def test_hosted_pins_are_the_course_packages_never_the_platforms() -> None:
    pins = load_tested_versions(REPO / "constraints.txt")
    text = bundle.hosted_constraints(pins, bundle.direct_dependencies())
    assert (REPO / "hosted-constraints.txt").read_text(encoding="utf-8") == text, \
        "hosted-constraints.txt is stale: run bash scripts/freeze.sh"
    pinned = {canonicalize_name(Requirement(line).name) for line in text.splitlines()
              if line and not line.startswith("#")}
    assert {"transformers", "peft", "bitsandbytes", "accelerate", "safetensors"} <= pinned
    assert not pinned & {"torch", "torchvision", "numpy", "pillow"}
    assert not [name for name in pinned if bundle.is_platform(name)]
    assert all(f"{name}=={pins[name]}" in text for name in pinned)


def test_the_offline_wheel_set_skips_the_platforms_pytorch() -> None:
    needed = bundle.closure(bundle.HOSTED_REQUIREMENT,
                            load_tested_versions(REPO / "constraints.txt"))
    names = {canonicalize_name(Requirement(r).name) for r in needed}
    assert {"transformers", "peft", "ipywidgets", "matplotlib", "numpy"} <= names
    assert not [n for n in names if bundle.is_platform(n)]
    assert "jupyterlab" not in names  # the platform's own


def test_the_wheels_are_for_a_hosted_linux_python_whatever_makes_the_archive() -> None:
    env = bundle.target_environment("3.12")  # e.g. made on a Mac for Colab's Python
    assert (env["sys_platform"], env["platform_machine"], env["python_version"]) == (
        "linux", "x86_64", "3.12")
    assert env["python_full_version"].startswith("3.12.")
    assert bundle.target_environment()["python_version"] == f"{sys.version_info[0]}.{sys.version_info[1]}"


def test_an_existing_archive_is_never_replaced_without_force(tmp_path: Path) -> None:
    out = tmp_path / "qvl-course.zip"
    out.write_bytes(b"the learner's")
    with pytest.raises(OutputExistsError):
        bundle.make_bundle(out)
    assert out.read_bytes() == b"the learner's"


# -- the simulated hosted session -------------------------------------------------------------

PLATFORM = ("torch", "torchvision", "ipykernel")


def _dist_closure(names: tuple[str, ...]) -> set[str]:
    """These installed distributions and everything they need, with the extras asked for
    (PyTorch asks for cuda-toolkit[cudart, ...])."""
    done: set[tuple[str, frozenset[str]]] = set()
    todo = [Requirement(name) for name in names]
    while todo:
        req = todo.pop()
        key = (canonicalize_name(req.name), frozenset(req.extras))
        if key in done:
            continue
        done.add(key)
        for text in metadata.requires(key[0]) or []:
            sub = Requirement(text)
            if sub.marker is None or any(sub.marker.evaluate({"extra": e})
                                         for e in ["", *req.extras]):
                todo.append(sub)
    return {name for name, _ in done}


def _platform_folder(target: Path) -> Path:
    """The 'platform's' packages: links to this environment's PyTorch and Jupyter kernel."""
    target.mkdir()
    for name in _dist_closure(PLATFORM):
        dist = metadata.distribution(name)
        for top in {Path(str(f)).parts[0] for f in dist.files or [] if ".." not in str(f)}:
            source_path = Path(dist.locate_file(top))
            if source_path.exists() and not (target / top).exists():
                (target / top).symlink_to(source_path)
    return target


def _kernel(tmp_path: Path, python: Path) -> dict[str, str]:
    spec = tmp_path / "jupyter" / "kernels" / "hosted"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [str(python), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "hosted session", "language": "python"}), encoding="utf-8")
    return {"JUPYTER_PATH": str(tmp_path / "jupyter")}


@pytest.mark.slow
def test_a_hosted_session_installs_the_archive_offline_and_runs_notebook_00(
        tmp_path: Path) -> None:
    session = tmp_path / "content"  # Colab's upload folder
    session.mkdir()
    archive = session / "qvl-course.zip"
    made = subprocess.run([sys.executable, "-m", "qvl_helpers.cli", "bundle", "--out",
                           str(archive)], capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert made.returncode == 0, made.stderr[-2000:]

    env_dir = tmp_path / "session-python"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    site = Path(subprocess.check_output(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        text=True).strip())
    # Python 3.11's venv adds an old setuptools that would hide the platform's (which PyTorch
    # needs); a platform's Python has only its own.
    subprocess.run([str(python), "-m", "pip", "uninstall", "-q", "-y", "setuptools"], check=True)
    platform = _platform_folder(tmp_path / "platform")
    (site / "platform.pth").write_text(str(platform) + "\n", encoding="utf-8")

    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("QVL_", "PIP_", "VIRTUAL_ENV", "PYTHON"))}
    env.update(_kernel(tmp_path, python))
    env.update({"QVL_HOSTED": "1", "QVL_SESSION_ROOT": str(session),
                "QVL_CACHE_DIR": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1",
                "PIP_CONFIG_FILE": os.devnull, "PIP_NO_INDEX": "1",  # no package index at all
                "PATH": f"{env_dir / 'bin'}:{os.environ['PATH']}"})
    notebook = nbformat.read(REPO / "notebooks" / "00_environment_check.ipynb", as_version=4)
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)  # the kernel inherits this process's environment
    try:
        from nbclient import NotebookClient

        NotebookClient(notebook, timeout=HANG_GUARD_S, kernel_name="hosted",
                       resources={"metadata": {"path": str(session)}}).execute()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    text = "\n".join(o.get("text", "") or o.get("data", {}).get("text/plain", "")
                     for cell in notebook.cells for o in cell.get("outputs", []))
    assert f"Installing the course from {archive}" in text
    assert "tiny" in text.lower()  # the config cell's banner: the stand-in on a CPU
    installed = subprocess.check_output(
        [str(python), "-c", "import qvl_helpers, torch; print(qvl_helpers.__file__); "
                            "print(torch.__file__)"], text=True, env=env, cwd=tmp_path).split()
    assert installed[0].startswith(str(site))  # the wheel, into the session's environment
    assert installed[1].startswith(str(platform))  # the platform's PyTorch, untouched
    assert not list(site.glob("torch*")) and not list(site.glob("nvidia*"))
    assert (session / "qvl-course" / "course.yaml").is_file()
