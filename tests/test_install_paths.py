"""A render installed each way its README and notebook name, each answering its expected errors in one line.

The README installs the project with `pip install -e .` (SageMaker Studio) or `pip install -e ".[dev]"`;
the notebook's first cell adds `.[debug]`. Each path gets a fresh `python -m venv` with the pip that venv
brings (23.2.1 with Python 3.11; never upgraded here, as a student's would not be), the project installed
into it with that pip, and the installed console script run on error paths: each must end in one line,
`Error: ...`, with click's exit status (1), never a traceback.

- core, then `[debug]` on top of it (the Studio sequence: README, then the notebook's cell): nothing of
  the `local` extra is installed, so `serve` and `train --local` must name that extra, and `check`,
  `predict --local`, `deploy --dry-run` and a broken config.toml must work without it; `report` names
  `debug` for its pictures until `[debug]` is installed, then draws them. Installed for real from the
  package index, with the stock pip (here 18 s of CPU for core, 8 s for `[debug]`; the whole test about
  60 s of CPU, most of it the CLI importing the SDK).
- `[dev]`: installed fresh it would pull torch and the toolkits again (gigabytes, minutes). Instead the
  fresh venv sees this environment's packages (which hold every dependency of a render,
  tests/test_requirements.py) through a .pth file, below its own site-packages: pip still resolves
  `.[dev]` and its self-referencing extras against what is installed, installs the project and its
  entry point into the new venv, and finds nothing missing (seconds). `--system-site-packages` cannot do
  this: a venv made from a venv's Python sees the base interpreter's site-packages, not the venv's. The
  render's own tests that drive pip then run in it, with that old pip (the whole test about 30 s of CPU).
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import sysconfig
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import bake_ok

INSTALL_TIMEOUT_S = 600
COMMAND_TIMEOUT_S = 120
LOCAL_EXTRA = "needs the 'local' extra"


def make_venv(folder: Path) -> Path:
    """A fresh venv with the pip `venv` brings; returns its Python."""
    subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True, timeout=INSTALL_TIMEOUT_S)
    return folder / "bin" / "python"


def pip_install(python: Path, project: Path, target: str) -> None:
    """`pip install -e <target>` with the venv's own pip; --no-compile: Python compiles what it imports
    (a third of the install's CPU time is byte-compiling botocore, the SDK and pandas)."""
    result = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--no-compile", "-e", target],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=INSTALL_TIMEOUT_S,
    )
    errors = [line for line in result.stderr.splitlines() if "is ignored" not in line]  # mirror notes
    assert result.returncode == 0, f"pip install -e {target} failed:\n" + "\n".join(errors[-30:])


def installed_versions(python: Path) -> dict[str, str]:
    """Every distribution `python` sees, first found on its path, by normalised name: version."""
    listed = subprocess.run(
        [str(python), "-m", "pip", "list", "--format=json", "--disable-pip-version-check"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    listing = json.loads(listed.stdout)
    return {re.sub(r"[-_.]+", "-", dist["name"]).lower(): dist["version"] for dist in listing}


def version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version)[:3])


def cli_env() -> dict[str, str]:
    """The user's environment: nothing of the template's PYTHONPATH, the SDK's banner off."""
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.pop("IMAGE_CLASSIFIER_PROJECT_DIR", None)
    env["SAGEMAKER_SUPPRESS_V2_WARNING"] = "1"
    return env


def run_cli(venv: Path, project: Path, *args: str) -> subprocess.CompletedProcess:
    """The installed console script, as a user runs it from the project folder."""
    script = venv / "bin" / project.name
    return subprocess.run(
        [str(script), *args],
        cwd=project,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_S,
    )


def one_line_error(result: subprocess.CompletedProcess, *expected: str, status: int = 1) -> str | None:
    """What is wrong with `result` as a one-line error holding every `expected` text (None: nothing)."""
    output = result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    problems = []
    if result.returncode != status:
        problems.append(f"exit status {result.returncode}, not {status}")
    if "Traceback" in output:
        problems.append("a traceback")
    if len(lines) != 1 or not lines[0].startswith("Error: "):
        problems.append(f"{len(lines)} lines on stderr, not one 'Error: ...'")
    problems += [f"no {text!r}" for text in expected if text not in output]
    if not problems:
        return None
    return f"{'; '.join(problems)}:\n{output[-3000:]}"


def closed_port() -> int:
    """A localhost port nothing listens on (just released by the OS)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def project(cookies) -> Path:
    return bake_ok(cookies)


@pytest.fixture
def broken_project(tmp_path) -> Path:
    """A project folder whose config.toml is not TOML."""
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "config.toml").write_text("[model\nbackbone = \n", encoding="utf-8")
    return folder


@pytest.fixture
def run_with_history(tmp_path) -> Path:
    """A local run folder whose outputs hold a history.json only: the report has one picture to draw."""
    folder = tmp_path / "run-with-history"
    (folder / "opt_ml" / "output" / "data").mkdir(parents=True)
    (folder / "opt_ml" / "output" / "data" / "history.json").write_text(
        json.dumps({"epochs": [{"loss": 1.2, "accuracy": 0.4}]}), encoding="utf-8"
    )
    return folder


@pytest.fixture
def image(tmp_path) -> Path:
    from PIL import Image

    path = tmp_path / "dog.jpg"
    Image.new("RGB", (32, 24), (200, 120, 40)).save(path)
    return path


# An error path: the CLI's arguments, and the texts its one line must hold.
Case = tuple[tuple[str, ...], tuple[str, ...]]


def common_cases(broken: Path, image: Path) -> dict[str, Case]:
    """Error paths every install answers alike."""
    port = closed_port()
    return {
        "invalid config.toml": (
            ("--project", str(broken), "cost", "--offline"),
            ("config.toml", "not valid TOML"),
        ),
        # Waits for a server still starting (10 s) before it says nothing answers.
        "predict --local, no server": (
            ("predict", "--local", "--url", f"http://127.0.0.1:{port}", str(image)),
            (str(port),),
        ),
        "report --local, no run": (("report", "--local", "--run-dir", str(broken)), (str(broken),)),
    }


def assert_one_line_errors(venv: Path, project: Path, cases: dict[str, Case]) -> None:
    """Run every case at once (most of their time is importing the SDK, or predict's wait) and check each."""
    with ThreadPoolExecutor(max_workers=len(cases)) as pool:
        futures = {name: pool.submit(run_cli, venv, project, *args) for name, (args, _) in cases.items()}
        problems = {name: one_line_error(futures[name].result(), *cases[name][1]) for name in cases}
    bad = {name: problem for name, problem in problems.items() if problem}
    assert not bad, "\n\n".join(f"{name}: {problem}" for name, problem in bad.items())


@pytest.mark.slow
def test_core_then_debug_install_answer_in_one_line(
    project, broken_project, image, run_with_history, tmp_path
):
    venv = tmp_path / "venv"
    python = make_venv(venv)
    pip_install(python, project, ".")
    unavailable = subprocess.run([str(python), "-c", "import torch"], capture_output=True, timeout=60)
    assert unavailable.returncode != 0, "the core install must not bring torch: this test would prove nothing"

    # The launcher's path (the SDK, the offline AWS, preflight): what the core install is for.
    launcher_case = {
        "deploy --dry-run, no model trained": (
            ("deploy", "--dry-run", "--dry-run-dir", str(tmp_path / "dry-run")),
            ("--model-data",),
        )
    }
    report = ("report", "--local", "--run-dir", str(run_with_history), "--out", str(tmp_path / "reports"))
    without_debug = {"report's pictures without the debug extra": (report, ("pip install -e '.[debug]'",))}
    without_local = {
        "serve without the local extra": (
            ("serve", "--model-data", str(project / "README.md")),
            (LOCAL_EXTRA, "pip install -e '.[local]'"),
        ),
        "train --local without the local extra": (
            ("train", "--local", "--run-dir", str(tmp_path / "run")),
            (LOCAL_EXTRA, "pip install -e '.[local]'"),
        ),
    }
    assert_one_line_errors(
        venv, project, common_cases(broken_project, image) | launcher_case | without_debug | without_local
    )
    # `check` imports the local endpoint's module: it runs, and says which extra the scripts' imports need.
    checked = run_cli(venv, project, "check", "--only", "training/hpo.py", "--json")
    assert "Traceback" not in checked.stdout + checked.stderr, checked.stderr[-3000:]
    assert checked.returncode == 1 and "pip install -e '.[local]'" in checked.stdout, checked.stdout[-3000:]

    pip_install(python, project, ".[debug]")
    # What [debug] changes: the report draws; the local extra is still missing, and said so.
    reported = run_cli(venv, project, *report)
    assert reported.returncode == 0, (reported.stdout + reported.stderr)[-3000:]
    assert (tmp_path / "reports" / run_with_history.name / "index.html").is_file()
    cases = common_cases(broken_project, image)
    assert_one_line_errors(
        venv, project, {"invalid config.toml": cases["invalid config.toml"]} | without_local
    )


@pytest.mark.slow
def test_dev_install_answers_in_one_line_and_its_pip_runs_the_renders_pip_tests(
    project, broken_project, image, tmp_path
):
    venv = tmp_path / "venv"
    python = make_venv(venv)
    site_packages = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    # addsitedir, not a bare path: the template environment's own .pth files are read too.
    template_packages = sysconfig.get_path("purelib")
    (site_packages / "template-environment.pth").write_text(
        f"import site; site.addsitedir({template_packages!r})\n", encoding="utf-8"
    )
    # The setuptools `venv` seeds under Python 3.11 (65.5; 3.12's venv seeds none) would shadow the
    # environment's, which torch needs at 77 or later: pip would replace it, and that is no change made
    # to the environment.
    subprocess.run(
        [str(python), "-m", "pip", "uninstall", "--yes", "--quiet", "setuptools"], check=True, timeout=120
    )
    before = installed_versions(python)
    # What a current SageMaker Studio or Python 3.12 environment has (requirements-dev.txt asks for it).
    assert version_tuple(before["numpy"]) >= (2,), f"numpy {before['numpy']} here: rebuild the environment"
    assert version_tuple(before["pandas"]) >= (2, 3), before["pandas"]
    pip_install(python, project, ".[dev]")
    assert (venv / "bin" / project.name).is_file(), "pip did not install the console script"
    # Nothing already installed was up- or downgraded (pip would put the other version in the venv's own
    # site-packages, ahead of the environment's), and what is installed still fits together.
    after = installed_versions(python)
    # The project itself may already be there (an earlier editable install, e.g. the demo's): not counted.
    assert {name: version for name, version in after.items() if name != project.name} == {
        name: version for name, version in before.items() if name != project.name
    }
    checked = subprocess.run([str(python), "-m", "pip", "check"], capture_output=True, text=True, timeout=120)
    assert checked.returncode == 0, checked.stdout + checked.stderr

    not_an_archive = {
        "serve, not a model archive": (("serve", "--model-data", str(project / "README.md")), ("README.md",))
    }
    assert_one_line_errors(venv, project, common_cases(broken_project, image) | not_an_archive)

    # The render's tests that run pip itself, with the pip this venv brought.
    tests = subprocess.run(
        [str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not slow"]
        + ["tests/test_training_requirements.py"],
        cwd=project,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=INSTALL_TIMEOUT_S,
    )
    assert tests.returncode == 0, (tests.stdout + tests.stderr)[-3000:]
    assert " passed" in tests.stdout
