# Setup. On Colab or Kaggle this cell installs the course; anywhere else it does nothing
# (locally, `bash scripts/lab.sh` or the Docker image has already installed the tested versions).
# It looks for the course in this order: already installed in this session; the archive made by
# `qvl bundle` (uploaded to the session, in Google Drive, or attached as a Kaggle dataset); the
# git URL in COURSE_REPO. It never replaces the platform's own PyTorch.
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

COURSE_REPO = os.environ.get("QVL_COURSE_REPO", "")  # or paste the course's git URL here
KEEP_OUTPUTS = False  # True: runs and checkpoints go to Google Drive / Kaggle's output folder
ARCHIVE = "qvl-course*.zip"
SEARCHED = ["/content", "/content/drive/MyDrive", "/kaggle/input", "/kaggle/working"]


def on_hosted() -> bool:
    return ("google.colab" in sys.modules or "KAGGLE_KERNEL_RUN_TYPE" in os.environ
            or "QVL_HOSTED" in os.environ)


def session_root() -> Path:
    return Path(os.environ.get("QVL_SESSION_ROOT") or
                ("/kaggle/working" if "KAGGLE_KERNEL_RUN_TYPE" in os.environ else "/content"))


def find_archive(places: list[str]) -> Path | None:
    """The newest course archive in the session's upload folder, Drive or Kaggle's datasets."""
    found = [p for place in places if Path(place).is_dir()
             for p in [*Path(place).glob(ARCHIVE), *Path(place).glob("*/" + ARCHIVE)]]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def pip(*args: str) -> bool:
    return subprocess.run([sys.executable, "-m", "pip", "install", "-q", *args]).returncode == 0


def install_course(home: Path, places: list[str]) -> Path:
    """Put the course in ``home`` and install its package; return the course folder."""
    course = home / "qvl-course"
    archive = find_archive(places)
    if archive is not None:
        import zipfile

        print(f"Installing the course from {archive}")
        with zipfile.ZipFile(archive) as z:
            z.extractall(home)
        wheels = course / "wheels"
        pins = ["-c", str(course / "hosted-constraints.txt")]
        # Offline first (the archive carries the wheels), then with the package index.
        wanted = ["--find-links", str(wheels), "qvl-helpers[hosted]", *pins]
        if not pip("--no-index", *wanted) and not pip(*wanted):
            raise SystemExit("Installing the course from the archive failed (see above).")
    elif COURSE_REPO:
        print(f"Installing the course from {COURSE_REPO}")
        subprocess.run(["git", "clone", "--depth", "1", COURSE_REPO, str(course)], check=True)
        if not pip(f"{course}[hosted]", "-c", str(course / "hosted-constraints.txt")):
            raise SystemExit("Installing the course from git failed (see above).")
    else:
        raise SystemExit(
            "The course is not installed in this session. Do one of these, then run this cell "
            "again:\n  1. upload qvl-course.zip (made by `qvl bundle`) to the session's files;\n"
            "  2. put it in Google Drive (MyDrive), or attach it to this Kaggle notebook as a "
            "dataset;\n  3. set COURSE_REPO at the top of this cell to the course's git URL.")
    importlib.invalidate_caches()  # this running kernel sees the new package
    return course


def setup_hosted() -> None:
    home = session_root()
    course = home / "qvl-course"
    if importlib.util.find_spec("qvl_helpers") is None or not (course / "course.yaml").is_file():
        course = install_course(home, [str(home), *SEARCHED])
    os.chdir(course / "notebooks")  # the notebooks find course.yaml one folder up
    if KEEP_OUTPUTS:
        if "google.colab" in sys.modules:
            from google.colab import drive

            drive.mount("/content/drive")
        keep = Path("/content/drive/MyDrive" if "google.colab" in sys.modules else home)
        os.environ["QVL_OUTPUT_DIR"] = str(keep / "qvl-outputs")
        print(f"Runs and checkpoints go to {os.environ['QVL_OUTPUT_DIR']}")


if __name__ == "__main__" and on_hosted() and not Path("../course.yaml").is_file():
    setup_hosted()
