"""``qvl bundle``: the whole course in one archive for Colab, Kaggle and offline rooms.

The archive holds one folder, ``qvl-course/``: the notebooks, presets, sample data, settings,
the docs, the tested-versions files and ``wheels/`` (the package's own wheel plus, unless
``--no-deps``, every dependency it needs except PyTorch), and ``qvl_helpers/setup_cell.py`` where a
clone has it. Every notebook's first cell finds the archive and hands over to that file, which
installs the course, offline if the wheels suffice.

Hosted platforms bring their own PyTorch, CUDA and scientific stack. The hosted install pins only
the packages that decide how the course behaves (``hosted-constraints.txt``: transformers, PEFT,
bitsandbytes and the rest of the direct dependencies), keeps the platform's PyTorch family
untouched, and accepts the platform's versions of generic packages (numpy, Pillow, ...) wherever
they satisfy the package's own ranges.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from . import processes
from .env import load_tested_versions
from .errors import QVLError
from .outputs import claim_output

#: What the archive carries besides the wheels and :data:`SETUP_CELL` (relative to the
#: course's root).
CONTENTS = ("notebooks", "configs", "data_samples", "course.yaml", "constraints.txt",
            "hosted-constraints.txt", "README.md", "README.zh.md", "docs")
#: The one package file the archive carries as source too, where a clone has it: in a new session
#: every notebook's first cell reads it from there, before anything is installed.
SETUP_CELL = "qvl_helpers/setup_cell.py"
#: The platform's: never installed, replaced or pinned by the hosted install.
PLATFORM = ("torch", "torchvision", "torchaudio", "triton")
PLATFORM_PREFIXES = ("nvidia-", "cuda-")
#: Direct dependencies left to the platform's versions on hosted sessions (any version in the
#: package's own range works; pinning them would replace packages the platform relies on).
HOSTED_FREE = ("numpy", "pillow", "pyyaml", "tqdm", "packaging")
#: What a hosted session installs: the library plus the notebooks' widgets and plots
#: (JupyterLab itself is the platform's).
HOSTED_REQUIREMENT = "qvl-helpers[hosted]"
TOP = "qvl-course"
#: Wheel platform tags a hosted session runs: Linux x86_64 with glibc up to 2.35 (Ubuntu 22.04,
#: Colab's and Kaggle's base). pip needs each tag named: manylinux_2_28 does not imply 2_24.
HOSTED_PLATFORMS = (*(f"manylinux_2_{minor}_x86_64" for minor in range(17, 36)),
                    "manylinux2014_x86_64", "linux_x86_64", "any")


class BundleError(QVLError):
    """The archive cannot be made (no course checkout, pip failed)."""


@dataclass
class Bundle:
    path: Path
    files: int
    wheels: list[str]
    size: int
    left_out: list[str] = field(default_factory=list)  # course.yaml's files not in the archive

    def summary(self) -> str:
        """What was written, then one warning per course.yaml path the archive lacks."""
        return "\n".join([f"wrote {self.path} ({self.size / 1e6:.1f} MB: {self.files} course "
                          f"files, {len(self.wheels)} wheels)",
                          *(f"Warning: {line}" for line in self.left_out)])


#: The course.yaml keys that name the learner's files.
PATH_KEYS = ("data", "image_root")


def files_left_out(root: Path, packed: list[Path]) -> list[str]:
    """One sentence per ``course.yaml`` key (:data:`PATH_KEYS`) whose file or folder the archive
    does not carry (outside the course folder, or in a folder that is not packed), naming it
    and how to bring it."""
    import yaml

    try:
        settings = yaml.safe_load((root / "course.yaml").read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return []  # the archive carries the file as it is; its own check happens where it runs
    inside = {p.resolve() for p in packed}
    folders = {parent for p in inside for parent in p.parents}
    sentences = []
    for key in PATH_KEYS:
        value = settings.get(key) if isinstance(settings, dict) else None
        if not value or not isinstance(value, str):
            continue
        path = Path(value).expanduser()
        path = (path if path.is_absolute() else root / path).resolve()
        if path in inside or path in folders:
            continue
        sentences.append(
            f"course.yaml's {key}: {value} is not in the archive ({path} is outside what "
            f"qvl bundle packs: {', '.join(CONTENTS)}), so the hosted session will not find "
            f"it. Fix: copy it into data_samples/ (images too) and set {key}: to that path "
            f"before bundling again (--force), or upload it on the hosted session and set "
            f"{key}: there.")
    return sentences


def is_platform(name: str) -> bool:
    name = canonicalize_name(name)
    return name in PLATFORM or name.startswith(PLATFORM_PREFIXES)


def course_root() -> Path:
    """The course checkout this package runs from (an editable install's source folder)."""
    root = Path(__file__).resolve().parent.parent
    if not (root / "course.yaml").is_file() or not (root / "pyproject.toml").is_file():
        raise BundleError(f"qvl bundle needs the course's source folder; {root} is not one "
                          "(the package is installed from a wheel).",
                          fix="run it from a checkout of the course, after `bash scripts/lab.sh` "
                              "or `pip install -e .` there.")
    return root


def direct_dependencies(dist: str = "qvl-helpers") -> list[str]:
    """The package's own (non-extra) dependencies, by canonical name."""
    reqs = [Requirement(r) for r in metadata.requires(dist) or []]
    return sorted({canonicalize_name(r.name) for r in reqs
                   if r.marker is None or "extra" not in str(r.marker)})


def hosted_constraints(pins: dict[str, str], direct: list[str]) -> str:
    """The text of ``hosted-constraints.txt``: tested versions of the direct dependencies that
    decide the course's behaviour, never the platform's own packages."""
    kept = [n for n in direct if not is_platform(n) and n not in HOSTED_FREE and n in pins]
    for extra in ("safetensors",):  # reads and writes every weight file; not a direct dependency
        if extra in pins and extra not in kept:
            kept.append(extra)
    lines = [f"{n}=={pins[n]}" for n in sorted(kept)]
    return ("# Tested versions pinned on Colab/Kaggle (qvl_helpers.bundle.hosted_constraints); "
            "the platform's PyTorch and\n# generic packages stay as they are. Regenerate with "
            "`bash scripts/freeze.sh`.\n" + "\n".join(lines) + "\n")


def target_environment(python_version: str | None = None) -> dict[str, str]:
    """Marker values of a hosted session: Linux on x86_64 with ``python_version`` (default: this
    machine's Python), whatever machine makes the archive."""
    env = dict(default_environment())
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    version = python_version or here
    env.update(sys_platform="linux", platform_system="Linux", os_name="posix",
               platform_machine="x86_64", python_version=version,
               python_full_version=env["python_full_version"] if version == here
               else f"{version}.0")
    return env


def closure(requirement: str, pins: dict[str, str],
            env: dict[str, str] | None = None) -> list[str]:
    """``name==version`` for everything ``requirement`` needs in ``env`` (default: a hosted
    session with this Python), at the tested versions, without descending into the platform's
    packages (PyTorch and CUDA)."""
    env = env or target_environment()
    seen: dict[str, str] = {}
    todo = [Requirement(requirement)]
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        if name == "qvl-helpers":
            requires, extras = metadata.requires("qvl-helpers") or [], set(req.extras)
        elif is_platform(name) or name in seen:
            continue
        else:
            if name not in pins:
                raise BundleError(f"{name} is needed but not in constraints.txt.",
                                  fix="reinstall with `bash scripts/env.sh`, then run "
                                      "`bash scripts/freeze.sh` if you upgraded on purpose.")
            seen[name] = pins[name]
            requires, extras = metadata.requires(name) or [], set(req.extras)
        for text in requires:
            sub = Requirement(text)
            if sub.marker is None or any(sub.marker.evaluate({**env, "extra": e})
                                         for e in extras or {""}):
                todo.append(sub)
    return sorted(f"{n}=={v}" for n, v in seen.items())


def _pip(args: list[str], what: str) -> None:
    done = processes.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise BundleError(f"{what} failed: {processes.stderr_tail(done)}",
                          fix="check the network (pip needs the package index), then try again.")


def build_wheel(root: Path, wheels: Path) -> None:
    """The package's wheel, built from a clean copy of its sources (a ``build/`` folder left in
    the checkout would otherwise bring back deleted modules)."""
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("pyproject.toml", "README.md"):
            shutil.copy2(root / name, tmp)
        shutil.copytree(root / "qvl_helpers", Path(tmp) / "qvl_helpers",
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        _pip(["wheel", "--quiet", "--no-deps", "--wheel-dir", str(wheels), tmp],
             "building the course's wheel")


def collect_wheels(root: Path, wheels: Path, with_deps: bool,
                   python_version: str | None) -> None:
    """The package's wheel and (``with_deps``) every dependency's, into ``wheels``: the
    dependencies for Linux x86_64 (what Colab and Kaggle run) and ``python_version``."""
    build_wheel(root, wheels)
    if not with_deps:
        return
    env = target_environment(python_version)
    pins = load_tested_versions(root / "constraints.txt")
    reqs = wheels.parent / "requirements.txt"
    reqs.write_text("\n".join(closure(HOSTED_REQUIREMENT, pins, env)) + "\n", encoding="utf-8")
    target = ["--python-version", env["python_version"], "--implementation", "cp",
              *[arg for tag in HOSTED_PLATFORMS for arg in ("--platform", tag)]]
    _pip(["download", "--quiet", "--no-deps", "--only-binary", ":all:", "--dest", str(wheels),
          "-r", str(reqs), *target], "downloading the dependencies' wheels")


def make_bundle(out: str | Path, *, with_deps: bool = True, python_version: str | None = None,
                force: bool = False) -> Bundle:
    """Write the course archive to ``out`` (never over an existing file unless ``force``).

    Raises:
        BundleError: not run from a course checkout, or pip could not build or download.
        OutputExistsError: ``out`` exists and ``force`` is False.
    """
    root = course_root()
    out = claim_output(out, force=force)
    files = [p for name in CONTENTS if (root / name).exists()
             for p in ([root / name] if (root / name).is_file() else sorted((root / name).rglob("*")))
             if p.is_file() and "__pycache__" not in p.parts and ".ipynb_checkpoints" not in p.parts]
    packed = {f"{TOP}/{path.relative_to(root)}": path for path in files}
    packed[f"{TOP}/{SETUP_CELL}"] = Path(__file__).with_name("setup_cell.py")  # this package's
    with tempfile.TemporaryDirectory() as tmp:
        wheels = Path(tmp) / "wheels"
        collect_wheels(root, wheels, with_deps, python_version)
        built = sorted(wheels.glob("*.whl"))
        partial = out.with_name(f".{out.name}.partial")
        with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as z:
            for name, path in packed.items():
                z.write(path, name)
            for wheel in built:  # already compressed
                z.write(wheel, f"{TOP}/wheels/{wheel.name}", compress_type=zipfile.ZIP_STORED)
        partial.replace(out)
    return Bundle(out, len(packed), [w.name for w in built], out.stat().st_size,
                  files_left_out(root, files))


def write_hosted_constraints(root: Path | None = None) -> Path:
    """Regenerate ``hosted-constraints.txt`` from ``constraints.txt`` (scripts/freeze.sh)."""
    root = root or course_root()
    text = hosted_constraints(load_tested_versions(root / "constraints.txt"), direct_dependencies())
    path = root / "hosted-constraints.txt"
    path.write_text(text, encoding="utf-8")
    return path
