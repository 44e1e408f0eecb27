"""What the notebooks' first cell runs: on Colab or Kaggle, install the course once per session and
work from its notebooks folder; anywhere else, nothing (locally, `bash scripts/lab.sh` or the Docker
image has already installed the tested versions).

In a new session the first cell has already found the course: the newest archive made by `qvl
bundle` (uploaded to the session, in Google Drive, or attached as a Kaggle dataset, which Kaggle
unpacks), else a clone of COURSE_REPO. It read this file from there (the archive keeps it where a
clone does, :data:`SETUP`) and calls :func:`main` with what it found, which this file installs.
Where the package is installed but its course folder is gone, this file looks for the course by
the cell's own rule (:func:`find_course`). The platform's own PyTorch is never replaced.

Standard library only: this file runs before the package and its dependencies are installed.
"""

import importlib.util
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

COURSE_REPO = os.environ.get("QVL_COURSE_REPO", "")  # the first cell's COURSE_REPO, when given
KEEP_OUTPUTS = False  # the first cell's KEEP_OUTPUTS: runs go to Google Drive or /kaggle/working
ARCHIVE = "qvl-course*.zip"
#: Where a clone and the archive keep this file (the archive's one folder is ``qvl-course/``).
SETUP = "qvl-course/qvl_helpers/setup_cell.py"
#: Where the first cell looks, as this module does: the session's folder (the kernel's working
#: folder in a new session), Google Drive, Kaggle's inputs.
SEARCHED = (".", "/content/drive/MyDrive", "/kaggle/input")


def on_hosted() -> bool:
    return ("google.colab" in sys.modules or "KAGGLE_KERNEL_RUN_TYPE" in os.environ
            or "QVL_HOSTED" in os.environ)


def session_root() -> Path:
    return Path(os.environ.get("QVL_SESSION_ROOT") or
                ("/kaggle/working" if "KAGGLE_KERNEL_RUN_TYPE" in os.environ else "/content"))


def course_of(found: str | Path) -> Path:
    """The archive, or the course folder, that ``found`` (an archive, a course folder or its
    :data:`SETUP` file) stands for."""
    found = Path(found).absolute()
    return found.parents[1] if found.name == "setup_cell.py" else found


def find_course(places: tuple[str, ...] | list[str] = SEARCHED) -> Path | None:
    """The newest whole course archive (not one still uploading), or course folder (one Kaggle
    unpacked from an archive, or a clone), up to three folders below each place: the first
    cell's rule (the last of equal times)."""
    import zipfile

    found = [p for place in places for depth in range(4) for name in (ARCHIVE, SETUP)
             for p in Path(place).glob("*/" * depth + name)
             if name == SETUP or zipfile.is_zipfile(p)]
    return course_of(sorted(found, key=lambda p: p.stat().st_mtime)[-1]) if found else None


def pip(*args: str) -> bool:
    return subprocess.run([sys.executable, "-m", "pip", "install", "-q", *args]).returncode == 0


def platform_pins(course: Path) -> list[str]:
    """Constraints: the course's tested packages, and the platform's PyTorch as it is."""
    keep = course / "platform-constraints.txt"
    keep.write_text("".join(f"{name}=={metadata.version(name)}\n" for name in
                            ("torch", "torchvision") if importlib.util.find_spec(name)))
    return ["-c", str(course / "hosted-constraints.txt"), "-c", str(keep)]


def unpack(found: Path, course: Path) -> None:
    print(f"Installing the course from {found}")
    if found.suffix == ".zip":
        import zipfile

        with zipfile.ZipFile(found) as z:
            if SETUP not in z.namelist():  # the end of a wheel inside an archive cut short
                raise SystemExit(f"{found} is not a whole course archive: let its upload finish, "
                                 "or make it again with this course's `qvl bundle`.")
            z.extractall(course.parent)
    elif found.resolve() != course.resolve():  # an unpacked dataset (read-only): copy it
        import shutil

        shutil.copytree(found, course, dirs_exist_ok=True, copy_function=shutil.copyfile)
        for path in [course, *course.rglob("*")]:  # writable, whatever the input's modes were
            path.chmod(path.stat().st_mode | 0o200)


def install_course(home: Path, found: str | Path | None = None,
                   places: tuple[str, ...] | list[str] = SEARCHED) -> Path:
    """Put the course in ``home`` and install its package; return the course folder. ``found``
    is what the first cell found (see :func:`course_of`); without it the course is looked for
    in ``places`` (:func:`find_course`)."""
    course = home / "qvl-course"
    found = course_of(found) if found is not None else find_course(places)
    if found is None and "google.colab" in sys.modules:  # an archive in Drive: mount it and look
        from google.colab import drive

        drive.mount("/content/drive")
        found = find_course(places)
    if found is not None and not (found / "wheels").is_dir() and (found / "pyproject.toml").is_file():
        # A clone of COURSE_REPO, made by the first cell (a source tree, no wheels): install it as is.
        print(f"Installing the course from {COURSE_REPO or found}")
        if not pip(f"{found}[hosted]", *platform_pins(found)):
            raise SystemExit("Installing the course from git failed (see above).")
        course = found
    elif found is not None:
        unpack(found, course)
        wheels = sorted((course / "wheels").glob("qvl_helpers-*.whl"))
        if not wheels:
            raise SystemExit(f"{found} holds no wheels/qvl_helpers-*.whl: make the archive "
                             "with `qvl bundle` and upload that.")
        wheel = wheels[-1]  # the archive's own wheel, never a package of that name from PyPI
        wanted = ["--find-links", str(course / "wheels"), f"{wheel}[hosted]",
                  *platform_pins(course)]
        # Offline first (the archive carries the wheels), then with the package index.
        if not pip("--no-index", *wanted) and not pip(*wanted):
            raise SystemExit("Installing the course from the archive failed (see above).")
    elif COURSE_REPO:  # the package is installed but its course folder is gone: clone it again
        print(f"Installing the course from {COURSE_REPO}")
        subprocess.run(["git", "clone", "--depth", "1", COURSE_REPO, str(course)], check=True)
        if not pip(f"{course}[hosted]", *platform_pins(course)):
            raise SystemExit("Installing the course from git failed (see above).")
    else:
        raise SystemExit(
            "The course is not installed in this session. Do one of these, then run this cell "
            "again:\n  1. upload qvl-course.zip (made by `qvl bundle`) to the session's files;\n"
            "  2. put it in Google Drive (MyDrive), or attach it to this Kaggle notebook as a "
            "dataset;\n  3. set COURSE_REPO at the top of this cell to the course's git URL.")
    importlib.invalidate_caches()  # this running kernel sees the new package
    return course


def setup_hosted(found: str | Path | None = None) -> None:
    """Install the course (``found``: what the first cell found) unless this session has it, and
    work from its notebooks folder; keep the runs if :data:`KEEP_OUTPUTS`."""
    home = session_root()
    course = home / "qvl-course"
    if not Path("../course.yaml").is_file():  # not yet inside the course's notebooks folder
        if importlib.util.find_spec("qvl_helpers") is None or not (course / "course.yaml").is_file():
            course = install_course(home, found)
        os.chdir(course / "notebooks")  # the notebooks find course.yaml one folder up
    if KEEP_OUTPUTS:  # on every run of the cell, so that turning it on later works too
        if "google.colab" in sys.modules:
            from google.colab import drive

            drive.mount("/content/drive")
        keep = Path("/content/drive/MyDrive" if "google.colab" in sys.modules else home)
        os.environ["QVL_OUTPUT_DIR"] = str(keep / "qvl-outputs")
        print(f"Runs and checkpoints go to {os.environ['QVL_OUTPUT_DIR']}")


def main(keep_outputs: bool = False, course_repo: str = "",
         found: str | Path | None = None) -> None:
    """The first cell's hand-over: on Colab or Kaggle, install the course it ``found`` (once) and
    work from its notebooks folder, keeping runs in Drive or /kaggle/working if ``keep_outputs``."""
    global KEEP_OUTPUTS, COURSE_REPO
    KEEP_OUTPUTS, COURSE_REPO = keep_outputs, course_repo or COURSE_REPO
    if on_hosted():
        setup_hosted(found)


if __name__ == "__main__":
    main()
