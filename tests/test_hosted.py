"""Colab and Kaggle: ``qvl bundle``, the notebooks' first cell, and ``qvl_helpers/setup_cell.py``
that the cell hands over to.

The first cell only finds ``setup_cell.py``: in the installed package, or (a new session) in the
newest archive, in a folder Kaggle unpacked from one, or in a clone of COURSE_REPO, all of which
keep it at ``qvl-course/qvl_helpers/setup_cell.py``. The fast tests run the cell in a Python
without the package (``-S``: no site-packages) against a stand-in ``setup_cell.py``, and hold
``setup_cell.find_course`` to the cell's choice over generated layouts. The slow test simulates a
hosted session: a fresh virtual environment whose PyTorch and Jupyter kernel are "the platform's"
(linked from this environment, outside the new one), the hosted marker set, the archive in the
session folder, pip cut off from every index; notebook 00 then runs with its first cell
installing the course.
"""

from __future__ import annotations

import io
import json
import os
import random
import subprocess
import sys
import venv
import zipfile
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
#: The first cell every notebook opens with (the tests below run it as it is).
FIRST_CELL = source(load(NOTEBOOKS[0])["cells"][1])


def test_every_notebook_opens_with_the_cell_that_hands_over_to_setup_cell() -> None:
    for path in NOTEBOOKS:
        assert source(load(path)["cells"][1]) == FIRST_CELL, f"{path.name}: copy 00's first cell"
    assert ('setup_cell["main"](keep_outputs=KEEP_OUTPUTS, course_repo=COURSE_REPO, found=course)'
            in FIRST_CELL)
    assert callable(setup_cell.main)


def _stub(mark: str) -> str:
    """A setup_cell.py that only says it ran, with what, and what the cell found."""
    return ("def main(keep_outputs=False, course_repo='', found=None):\n"
            f"    print('setup_cell from {mark}', keep_outputs, repr(course_repo))\n"
            "    print(found)\n")


def _said(done: subprocess.CompletedProcess[str]) -> str:
    """The stand-in's first line: which setup_cell.py ran, and with what."""
    return done.stdout.strip().split("\n")[0]


def _archive(path: Path, mark: str) -> Path:
    """An archive as ``qvl bundle`` lays it out, with a stand-in setup_cell.py; its last entry is
    a wheel stored as it is (a zip inside the zip), as ``qvl bundle`` stores them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    wheel = io.BytesIO()
    with zipfile.ZipFile(wheel, "w") as w:
        w.writestr("accelerate/__init__.py", "# a dependency\n")
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("qvl-course/course.yaml", "model: auto\n")
        z.writestr(setup_cell.SETUP, _stub(mark))
        z.writestr("qvl-course/wheels/qvl_helpers-0.1.0-py3-none-any.whl", b"the course's wheel")
        z.writestr("qvl-course/wheels/accelerate-1.0-py3-none-any.whl", wheel.getvalue())
    return path


def _cut_short(archive: Path) -> Path:
    """``archive`` as it is while still uploading: cut just after its last wheel, whose own end
    record then looks like the archive's (zipfile.is_zipfile says yes)."""
    data = archive.read_bytes()
    cut = data.rindex(b"PK\x05\x06") - 1  # the archive's own end record
    cut = data.rindex(b"PK\x05\x06", 0, cut) + 22  # the wheel's
    archive.write_bytes(data[:cut])
    assert zipfile.is_zipfile(archive)
    return archive


def _folder(parent: Path, mark: str) -> Path:
    """A course folder as Kaggle unpacks an archive into ``parent`` (or as a clone lays it out):
    the marker file is the stand-in setup_cell.py."""
    setup = parent / setup_cell.SETUP
    setup.parent.mkdir(parents=True, exist_ok=True)
    setup.write_text(_stub(mark), encoding="utf-8")
    return setup


#: Colab's Drive, as a stand-in: mounting it brings the archive in Drive into the session.
COLAB = """import shutil, sys, types
def _mount(path):
    print("mounted", path)
    shutil.copytree({drive!r}, "MyDrive")
sys.modules["google.colab"] = types.ModuleType("google.colab")
sys.modules["google.colab.drive"] = types.SimpleNamespace(mount=_mount)
"""


#: The places the cell searches, as written in it (the tests put them in temporary folders).
PLACES = '(".", "/content/drive/MyDrive", "/kaggle/input")'


def _first_cell(cwd: Path, *, repo: str = "", drive: Path | None = None,
                places: tuple[Path, ...] = ()) -> subprocess.CompletedProcess[str]:
    """The first cell run as in a new session: a Python that has not got the package (-S: no
    site-packages), with the stand-in setup_cell.py saying what it was given; on "Colab" with
    ``drive`` as Google Drive's contents; searching ``places`` (default: only its working folder,
    not this machine's /kaggle/input or Drive) instead of its own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QVL_", "KAGGLE_"))}
    env["QVL_COURSE_REPO"] = repo
    assert PLACES in FIRST_CELL
    cell = FIRST_CELL.replace(PLACES, repr(tuple(map(str, places or [Path(".")]))))
    code = (COLAB.format(drive=str(drive)) if drive else "") + cell
    return subprocess.run([sys.executable, "-S", "-c", code], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=60)


def test_a_new_session_runs_setup_cell_from_the_newest_archive(tmp_path: Path) -> None:
    old = _archive(tmp_path / "qvl-course.zip", "the old archive")
    os.utime(old, (1, 1))
    _archive(tmp_path / "drive" / "course" / "qvl-course (1).zip", "the new archive")
    done = _first_cell(tmp_path)
    assert done.returncode == 0, done.stderr
    assert _said(done) == "setup_cell from the new archive False ''"


def test_a_new_session_runs_setup_cell_from_a_folder_kaggle_unpacked(tmp_path: Path) -> None:
    _folder(tmp_path / "input" / "my-course", "the unpacked dataset")
    done = _first_cell(tmp_path)
    assert done.returncode == 0, done.stderr
    assert _said(done) == "setup_cell from the unpacked dataset False ''"


def test_on_colab_google_drive_is_mounted_only_when_nothing_was_uploaded(tmp_path: Path) -> None:
    drive = tmp_path / "drive"
    drive.mkdir()
    _archive(drive / "qvl-course.zip", "Google Drive")
    session = tmp_path / "content"
    session.mkdir()
    done = _first_cell(session, drive=drive)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:2] == ["mounted /content/drive",
                                           "setup_cell from Google Drive False ''"]
    uploaded = tmp_path / "uploaded"
    uploaded.mkdir()
    _archive(uploaded / "qvl-course.zip", "the upload")
    done = _first_cell(uploaded, drive=drive)
    assert _said(done) == "setup_cell from the upload False ''"  # Drive left alone


def test_a_new_session_clones_course_repo_when_there_is_no_archive(tmp_path: Path) -> None:
    repo = tmp_path / "upstream"
    (repo / "qvl_helpers").mkdir(parents=True)
    (repo / "qvl_helpers" / "setup_cell.py").write_text(_stub("the clone"), encoding="utf-8")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.org", "-C", str(repo)]
    for args in (["init", "-q"], ["add", "."], ["commit", "-q", "-m", "course"]):
        subprocess.run([*git, *args], check=True, capture_output=True)
    session = tmp_path / "session"
    session.mkdir()
    done = _first_cell(session, repo=f"file://{repo}")
    assert done.returncode == 0, done.stderr
    assert _said(done) == f"setup_cell from the clone False 'file://{repo}'"
    assert (session / "qvl-course" / "qvl_helpers" / "setup_cell.py").is_file()


def test_an_archive_comes_before_course_repo(tmp_path: Path) -> None:
    """COURSE_REPO is the way without an archive: with one (a Kaggle dataset with the internet
    off, say) nothing is cloned."""
    _archive(tmp_path / "qvl-course.zip", "the archive")
    done = _first_cell(tmp_path, repo="file:///nowhere/course.git")
    assert done.returncode == 0, done.stderr
    assert _said(done) == "setup_cell from the archive False 'file:///nowhere/course.git'"
    assert not (tmp_path / "qvl-course").exists()


def test_a_new_session_without_a_course_says_what_to_do(tmp_path: Path) -> None:
    done = _first_cell(tmp_path)
    assert done.returncode == 1
    assert "qvl bundle" in done.stderr and "Kaggle" in done.stderr and "COURSE_REPO" in done.stderr
    whole = _archive(tmp_path / "qvl-course.zip", "the whole archive").read_bytes()
    for partial in (whole[:len(whole) // 3], _cut_short(tmp_path / "qvl-course.zip").read_bytes()):
        (tmp_path / "qvl-course.zip").write_bytes(partial)  # still uploading
        done = _first_cell(tmp_path)
        assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
        assert "let it finish" in done.stderr
    with zipfile.ZipFile(tmp_path / "qvl-course.zip", "w") as z:  # made by an older qvl bundle
        z.writestr("qvl-course/course.yaml", "model: auto\n")
    done = _first_cell(tmp_path)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert "qvl bundle" in done.stderr


def test_the_cell_and_setup_cell_search_the_same_places_for_the_same_names() -> None:
    assert str(setup_cell.SEARCHED).replace("'", '"') == PLACES and PLACES in FIRST_CELL
    assert f'SETUP = "{setup_cell.SETUP}"' in FIRST_CELL and f'"{setup_cell.ARCHIVE}"' in FIRST_CELL


def test_the_cell_and_setup_cell_pick_the_same_course_wherever_courses_lie(tmp_path: Path) -> None:
    """Generated sessions: archives and unpacked courses at random depths in the three places,
    some with equal times, beside things that are not a course. The cell runs the setup_cell.py
    of the course that ``find_course`` then installs: the newest (the last found, on a tie)."""
    rng = random.Random(23)
    for case in range(24):
        places = tuple(tmp_path / str(case) / name for name in ("session", "drive", "kaggle"))
        marks: dict[Path, str] = {}
        for n in range(rng.randint(1, 4)):
            parent = rng.choice(places).joinpath(*rng.sample(["课程", "my course", "v2"],
                                                              rng.randint(0, 3)))
            mark = f"course {n}"
            if rng.random() < 0.5:
                found = _archive(parent / rng.choice(["qvl-course.zip", "qvl-course (1).zip"]), mark)
            else:
                found = parent / "qvl-course"
                _folder(parent, mark)
            marks[found] = mark  # the same name twice: the later one replaced it
            os.utime(found if found.suffix == ".zip" else found / "qvl_helpers" / "setup_cell.py",
                     (1, rng.choice([1_000, 2_000, 3_000])))
        places[0].mkdir(parents=True, exist_ok=True)
        (places[0] / "notes.zip").write_bytes(b"not the course")
        partial = places[rng.randrange(3)] / "qvl-course (2).zip"  # the newest, just begun
        whole = _archive(tmp_path / f"whole-{case}.zip", "a partial upload").read_bytes()
        partial.parent.mkdir(parents=True, exist_ok=True)
        partial.write_bytes(whole[:len(whole) // 3])
        (places[2] / "old" / "qvl-course" / "wheels").mkdir(parents=True)  # no setup_cell.py
        chosen = setup_cell.find_course(places)
        done = _first_cell(places[0], places=places)
        assert done.returncode == 0, done.stderr
        assert _said(done) == f"setup_cell from {marks[chosen]} False ''", (case, marks)
        handed = Path(done.stdout.strip().split("\n")[1])  # what the cell passes on to install
        assert setup_cell.course_of(places[0] / handed) == chosen
        newest = max(p.stat().st_mtime if p.suffix == ".zip" else
                     (p / "qvl_helpers" / "setup_cell.py").stat().st_mtime for p in marks)
        assert (chosen.stat().st_mtime if chosen.suffix == ".zip" else
                (chosen / "qvl_helpers" / "setup_cell.py").stat().st_mtime) == newest


def test_the_newest_archive_is_found_in_any_searched_place(tmp_path: Path) -> None:
    upload, dataset = tmp_path / "content", tmp_path / "kaggle" / "my-course-zip"
    upload.mkdir()
    dataset.mkdir(parents=True)
    old = _archive(upload / "qvl-course.zip", "old")
    new = _archive(dataset / "qvl-course (1).zip", "new")  # a dataset: one folder deeper
    os.utime(old, (1, 1))
    _archive(upload / "other.zip", "not the course's name")
    assert setup_cell.find_course([str(upload), str(tmp_path / "kaggle")]) == new
    assert setup_cell.find_course([str(tmp_path / "missing")]) is None


def test_a_kaggle_dataset_unpacked_by_kaggle_is_copied_and_installed(tmp_path: Path,
                                                                     monkeypatch) -> None:
    """Kaggle unpacks an uploaded zip: /kaggle/input/<dataset>/qvl-course/... (read-only)."""
    unpacked = tmp_path / "input" / "my-course" / "qvl-course"
    _folder(unpacked.parent, "the dataset")
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
        course = setup_cell.install_course(home, places=[str(tmp_path / "input")])
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


def test_setup_cell_installs_what_the_cell_found_and_refuses_an_archive_cut_short(
        tmp_path: Path, monkeypatch) -> None:
    """The cell passes on the course it found (no second search); an archive it took for whole
    but that lacks setup_cell.py (cut short after a wheel) is refused in one sentence."""
    calls: list[tuple[str, ...]] = []
    monkeypatch.setattr(setup_cell, "pip", lambda *args: calls.append(args) or True)
    monkeypatch.setattr(setup_cell, "find_course", lambda *a: pytest.fail("searched again"))
    home = tmp_path / "home"
    home.mkdir()
    archive = _archive(tmp_path / "upload" / "qvl-course.zip", "the upload")
    assert setup_cell.install_course(home, archive) == home / "qvl-course"
    assert (home / setup_cell.SETUP).is_file() and len(calls) == 1
    with pytest.raises(SystemExit) as stop:
        setup_cell.install_course(tmp_path / "again", _cut_short(archive))
    assert "not a whole course archive" in str(stop.value) and "let its upload finish" in str(stop.value)


def test_a_clone_the_first_cell_made_is_installed_as_cloned(tmp_path: Path,
                                                             monkeypatch) -> None:
    """COURSE_REPO in a new session: the first cell cloned the course into the session folder
    (to read setup_cell.py); it is installed from that source tree, not cloned again."""
    clone = tmp_path / "qvl-course"
    _folder(tmp_path, "the clone")
    (clone / "course.yaml").write_text("model: auto\n", encoding="utf-8")
    (clone / "pyproject.toml").write_text("[project]\nname = 'qvl-helpers'\n", encoding="utf-8")
    calls: list[tuple[str, ...]] = []
    monkeypatch.setattr(setup_cell, "pip", lambda *args: calls.append(args) or True)
    monkeypatch.setattr(setup_cell, "COURSE_REPO", "https://example.org/course.git")
    assert setup_cell.install_course(tmp_path, places=[str(tmp_path)]) == clone
    (args,) = calls
    assert args[0] == f"{clone}[hosted]" and "--no-index" not in args
    pins = (clone / "platform-constraints.txt").read_text(encoding="utf-8")
    assert f"torch=={metadata.version('torch')}" in pins  # the platform's PyTorch stays


def test_without_archive_or_repo_the_cell_names_the_three_ways(tmp_path: Path,
                                                               monkeypatch) -> None:
    monkeypatch.setattr(setup_cell, "COURSE_REPO", "")
    with pytest.raises(SystemExit) as stop:
        setup_cell.install_course(tmp_path, places=[str(tmp_path)])
    message = str(stop.value)
    assert "qvl bundle" in message and "Kaggle" in message and "COURSE_REPO" in message


def test_the_cell_does_nothing_outside_colab_and_kaggle(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items()
           if k not in ("QVL_HOSTED", "KAGGLE_KERNEL_RUN_TYPE")}
    code = FIRST_CELL  # the package installed: its own setup_cell.py
    done = subprocess.run([sys.executable, "-c", code + "\nprint(os.getcwd())"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert _said(done) == str(tmp_path)  # no install, no chdir


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
    with zipfile.ZipFile(archive) as z:  # where the first cell reads it, as the package has it
        assert z.read(setup_cell.SETUP) == Path(setup_cell.__file__).read_bytes()

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
    assert "transformers: " in text and "no tested version on record" not in text
    assert "torch: " in text and "the platform's own" in text  # held to the hosted pins
    installed = subprocess.check_output(
        [str(python), "-c", "import qvl_helpers, torch; print(qvl_helpers.__file__); "
                            "print(torch.__file__)"], text=True, env=env, cwd=tmp_path).split()
    assert installed[0].startswith(str(site))  # the wheel, into the session's environment
    assert installed[1].startswith(str(platform))  # the platform's PyTorch, untouched
    assert not list(site.glob("torch*")) and not list(site.glob("nvidia*"))
    assert (session / "qvl-course" / "course.yaml").is_file()
