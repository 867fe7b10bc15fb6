"""What a grader (or CI) checks in a project: `check` in the CLI runs these, in this order.

Each check is a plain function of a `Workspace` that returns a one-line detail or raises; nothing
is written into the project (dry runs, the tiny dataset, the trained model all go to a temporary
folder). Checks that need another's result name it in `needs` and are skipped when it failed, so a
broken config is reported once, as `config`, not again by every dry run.

Every check is bounded in time: the ones that run code of the project in a child process (imports,
local training) kill that process's whole group at the limit; the ones that run in this process
(config, dry runs, serving) are interrupted by SIGALRM (POSIX main thread only; elsewhere they run
unbounded).
"""

from __future__ import annotations

import ast
import contextlib
import io
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import botocore.session
import botocore.validate

from .. import extras
from ..aws.session import open_session
from ..config import ConfigError, ProjectConfig
from ..local.endpoint import running_endpoint
from ..workflow import launcher
from ..workflow.synthetic import make_dataset
from .handin import NOTEBOOK, rendered_without_notebook

PASS, FAIL, SKIP = "pass", "fail", "skip"
# One line per result: a traceback's worth of detail belongs in the log it came from.
DETAIL_CHARS = 400
# What the tiny local run trains on: seconds on a CPU, no download (as the project's tests train).
TINY_CLASSES = 3
TINY_IMAGES = {"train": 4, "valid": 2, "test": 2}
TINY_HYPERPARAMETERS = {
    "epochs": 1,
    "batch_size": 4,
    "test_batch_size": 4,
    "image_size": 32,
    "pretrained": False,
    "num_workers": 0,
    "num_classes": TINY_CLASSES,
}
# The project's package (this module is its .checks.project_check).
_PACKAGE = (__package__ or "").rpartition(".")[0]
_RESULT_MARKER = "@@check-result@@"


class CheckFailed(Exception):
    """An expected failure: its message is the check's detail."""


class CheckTimeout(BaseException):
    """The check ran past its limit.

    A BaseException, so that the project's own `except Exception` cannot swallow it.
    """


@dataclass(frozen=True)
class CheckResult:
    name: str
    status: str
    seconds: float
    detail: str

    def record(self) -> dict[str, Any]:
        """What `check --json` prints for it, one JSON object per line."""
        return {**asdict(self), "seconds": round(self.seconds, 2)}


@dataclass
class Workspace:
    """The project being checked, a scratch folder, and what earlier checks produced for later ones."""

    root: Path
    scratch: Path
    config: Any = None  # ProjectConfig, once `config` passed
    model: Path | None = None  # model.tar.gz, once `train --local` passed
    dataset: Path | None = None
    _imports: dict[str, dict[str, str]] = field(default_factory=dict)

    @property
    def dry_run_dir(self) -> Path:
        return self.scratch / "dry-run"


@dataclass(frozen=True)
class Check:
    name: str
    run: Callable[[Workspace, float], str]
    timeout_s: float
    slow: bool = False  # trains or serves: skipped by --fast
    needs: tuple[str, ...] = ()


# --- helpers ----------------------------------------------------------------------------------------


def one_line(text: str, limit: int = DETAIL_CHARS) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def error_line(error: BaseException) -> str:
    """`TypeError: ... (launcher.py line 12)`: the error and the deepest frame of the project's own code."""
    where = ""
    frames = [frame for frame in _frames(error) if "site-packages" not in frame.filename]
    if frames:
        where = f" ({Path(frames[-1].filename).name} line {frames[-1].lineno})"
    return one_line(f"{type(error).__name__}: {error}{where}")


def _frames(error: BaseException) -> list[Any]:
    return list(traceback.extract_tb(error.__traceback__))


@contextlib.contextmanager
def time_limit(seconds: float, name: str) -> Iterator[None]:
    """Raise CheckTimeout in this thread after `seconds` (POSIX main thread; elsewhere no limit)."""
    if not hasattr(signal, "setitimer") or threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum: int, frame: Any) -> None:
        raise CheckTimeout(f"{name} took longer than {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def child_environment(root: Path) -> dict[str, str]:
    """This environment less the project's own paths: the child sees what a SageMaker container sees."""
    env = dict(os.environ)
    keep = [
        entry
        for entry in env.get("PYTHONPATH", "").split(os.pathsep)
        if entry and not _inside(Path(entry), root)
    ]
    env["PYTHONPATH"] = os.pathsep.join(keep)
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # no __pycache__ left in the student's folders
    env.setdefault("SAGEMAKER_SUPPRESS_V2_WARNING", "1")
    return env


def _inside(path: Path, root: Path) -> bool:
    try:
        (root / path).resolve().relative_to(root.resolve())
    except ValueError:
        return False
    return True


def run_bounded(command: Sequence[str], timeout: float, *, cwd: Path, env: dict[str, str]) -> tuple[int, str]:
    """Run `command` in its own process group; past `timeout`, kill the group (the child's children too)."""
    process = subprocess.Popen(
        list(command),
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=timeout)
    except BaseException:  # TimeoutExpired, CheckTimeout, Ctrl-C: nothing may outlive the check
        _kill_group(process)
        process.communicate()
        raise
    return process.returncode, output


def _kill_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (AttributeError, ProcessLookupError, PermissionError):  # no process groups, or gone already
        process.kill()


def _result_of(output: str) -> Any:
    for line in reversed(output.splitlines()):
        if line.startswith(_RESULT_MARKER):
            return json.loads(line[len(_RESULT_MARKER) :])
    raise CheckFailed("the child process gave no result; last lines: " + " | ".join(output.splitlines()[-3:]))


# --- the scripts and the notebook ------------------------------------------------------------------

# Run in a child process with the source folder first on sys.path, then the project root (for
# classifier/), as the container lays them out: sourcedir.tar.gz holds training/ + classifier/.
_IMPORT_CHILD = """
import importlib, json, sys, traceback
marker, folder, root, names = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
sys.path[:0] = [folder, root]
errors = dict()
for name in names:
    try:
        importlib.import_module(name)
        errors[name] = ""
    except BaseException as error:
        frames = [f for f in traceback.extract_tb(error.__traceback__) if f.filename.startswith(root)]
        where = " (%s line %s)" % (frames[-1].filename[len(root) + 1 :], frames[-1].lineno) if frames else ""
        errors[name] = "%s: %s%s" % (type(error).__name__, error, where)
print(marker + json.dumps(errors))
"""


def import_errors(workspace: Workspace, folder: str, names: Iterable[str], timeout: float) -> dict[str, str]:
    """Import each module of `folder` in one child process (one torch import for the folder)."""
    if folder not in workspace._imports:
        root = workspace.root.resolve()
        names = list(names)
        try:
            code, output = run_bounded(
                [sys.executable, "-c", _IMPORT_CHILD, _RESULT_MARKER, str(root / folder), str(root), *names],
                timeout,
                cwd=workspace.scratch,
                env=child_environment(root),
            )
        except subprocess.TimeoutExpired:
            raise CheckTimeout(f"importing {folder}/ took longer than {timeout:g} s") from None
        if code != 0:
            raise CheckFailed(f"importing {folder}/ exited with {code}: {one_line(output[-300:])}")
        workspace._imports[folder] = _result_of(output)
    return workspace._imports[folder]


def parse_python(path: Path) -> ast.Module:
    if not path.is_file():
        raise CheckFailed(f"{path.name} is missing")
    try:
        source = path.read_text(encoding="utf-8")
        tree = ast.parse(source, filename=str(path))
        # The compiler finds what the parser lets through: a misplaced __future__ import, a stray `return`.
        compile(source, str(path), "exec", dont_inherit=True)
        return tree
    except SyntaxError as error:
        raise CheckFailed(f"SyntaxError: {error.msg} (line {error.lineno})") from None
    except (UnicodeDecodeError, ValueError) as error:  # not UTF-8, a NUL byte
        raise CheckFailed(f"{path.name} cannot be read as Python: {error}") from None


def script_check(folder: str, module: str, siblings: tuple[str, ...]) -> Callable[[Workspace, float], str]:
    """Exists, parses, imports (with the other entry points of the same folder, in one child process)."""

    def run(workspace: Workspace, timeout: float) -> str:
        tree = parse_python(workspace.root / folder / f"{module}.py")
        present = [name for name in siblings if (workspace.root / folder / f"{name}.py").is_file()]
        error = import_errors(workspace, folder, present, timeout).get(module, "")
        if error:
            missing = extras.missing_modules("local")
            if missing and error.startswith("ModuleNotFoundError"):
                # The checking environment's fault, not the project's: say how to complete it.
                error += f"; this environment lacks the 'local' extra: {extras.install_command('local')}"
            raise CheckFailed(f"import fails: {error}")
        return f"parses ({len(tree.body)} top-level statements) and imports"

    return run


def _masked_cell(source: str) -> str | None:
    """A code cell as Python: IPython's line magics and shell escapes become `pass`; cell magics: None."""
    if source.lstrip().startswith("%%"):
        return None
    lines = []
    for line in source.splitlines():
        stripped = line.lstrip()
        indent = line[: len(line) - len(stripped)]
        lines.append(indent + "pass" if stripped.startswith(("%", "!")) else line)
    return "\n".join(lines)


def _module_file(src: Path, module: str) -> Path | None:
    """The source file of `pkg.a.b` under `src` (the package folder), or None."""
    relative = Path(*module.split(".")[1:])
    for candidate in ((src / relative).with_suffix(".py"), src / relative / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _defines(source: Path, name: str) -> bool:
    """Whether a module binds `name` at its top level (a def, class, assignment or import)."""
    try:
        tree = ast.parse(source.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, ValueError):
        return False
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name == name:
            return True
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(target, ast.Name) and target.id == name for target in targets):
                return True
        if isinstance(node, (ast.Import, ast.ImportFrom)) and any(
            (alias.asname or alias.name).split(".")[0] == name for alias in node.names
        ):
            return True
    return False


def missing_imports(tree: ast.Module, package: str, src: Path) -> list[str]:
    """What a cell imports from the project's package that the package does not have."""
    missing = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names if alias.name.split(".")[0] == package]
            missing += [module for module in modules if _module_file(src, module) is None]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.split(".")[0] != package:
                continue
            source = _module_file(src, node.module)
            if source is None:
                missing.append(node.module)
                continue
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                known = _module_file(src, submodule) is not None or _defines(source, alias.name)
                if alias.name != "*" and not known:
                    missing.append(submodule)
    return missing


def check_notebook(workspace: Workspace, timeout: float) -> str:
    """Present (unless rendered without it), valid nbformat 4 JSON, every code cell parses, and each
    module of the package it imports exists."""
    path = workspace.root / NOTEBOOK
    if not path.is_file():
        if rendered_without_notebook(workspace.root):
            return "not part of this project (rendered with include_notebook=no, or for SDK v3)"
        raise CheckFailed(f"{NOTEBOOK} is missing")
    try:
        notebook = json.loads(path.read_text(encoding="utf-8"))
        cells = notebook["cells"]
        assert notebook["nbformat"] == 4 and isinstance(cells, list)
    except (ValueError, KeyError, TypeError, AssertionError):
        raise CheckFailed(f"{NOTEBOOK} is not an nbformat 4 notebook") from None
    package = _PACKAGE
    src = Path(__file__).resolve().parents[1]
    missing: list[str] = []
    code_cells = 0
    for number, cell in enumerate(cells, 1):
        if cell.get("cell_type") != "code":
            continue
        code_cells += 1
        source = cell.get("source", "")
        masked = _masked_cell("".join(source) if isinstance(source, list) else str(source))
        if masked is None:
            continue
        try:
            tree = ast.parse(masked)
        except SyntaxError as error:
            raise CheckFailed(f"cell {number}: SyntaxError: {error.msg} (line {error.lineno})") from None
        missing += [f"{name} (cell {number})" for name in missing_imports(tree, package, src)]
    if missing:
        raise CheckFailed(f"imports what the package does not have: {', '.join(missing)}")
    return f"{code_cells} code cells parse; what they import from the package exists"


# --- the config and the dry runs -------------------------------------------------------------------


def check_config(workspace: Workspace, timeout: float) -> str:
    try:
        workspace.config = ProjectConfig.load(workspace.root)
    except ConfigError as error:
        raise CheckFailed(one_line(str(error))) from None
    model = workspace.config.model
    return f"valid: {model['backbone']}, {model['num_classes']} classes"


def validation_errors(call: dict[str, Any]) -> str:
    """botocore's own check of a captured request against the service model ('' when valid)."""
    session = botocore.session.get_session()
    operation = session.get_service_model(call["service"]).operation_model(call["operation"])
    report = botocore.validate.ParamValidator().validate(call["params"], operation.input_shape)
    return report.generate_report() if report.has_errors() else ""


def dry_run_check(step: str) -> Callable[[Workspace, float], str]:
    """`<step> --dry-run` in the scratch folder's dry-run record, as the CLI runs it; every request valid."""

    def run(workspace: Workspace, timeout: float) -> str:
        config = workspace.config
        with open_session(config, dry_run=True, folder=workspace.dry_run_dir) as session:
            if step == "tune":
                name = launcher.tune(config, session, wait=False).tuning_job_name
            elif step == "train":
                name = launcher.train(config, session, wait=False).training_job_name
            else:  # deploy: the stand-in model.tar.gz that `train --dry-run` left
                name = launcher.deploy(config, session, wait=False).endpoint_name
            assert session.offline is not None
            calls = list(session.offline.calls)
        invalid = [(call, errors) for call in calls if (errors := validation_errors(call))]
        if invalid:
            call, errors = invalid[0]
            raise CheckFailed(
                f"{len(invalid)} of {len(calls)} requests invalid; {call['operation']}: {one_line(errors)}"
            )
        return f"{name}: {len(calls)} requests, all valid against botocore's service models"

    return run


# --- local training and serving --------------------------------------------------------------------

_TRAIN_CHILD = """
import importlib, json, sys
from pathlib import Path
marker, package, root, data, run_dir, hyperparameters = sys.argv[1:7]
config = importlib.import_module(package + ".config").ProjectConfig.load(Path(root))
run_local_training = importlib.import_module(package + ".local.training_run").run_local_training
model = run_local_training(config, Path(data), Path(run_dir), json.loads(hyperparameters), quiet=True)
print(marker + json.dumps(str(model)))
"""


def check_local_training(workspace: Workspace, timeout: float) -> str:
    """`train --local` (train_model.py under the training toolkit) on a tiny generated dataset."""
    workspace.dataset = make_dataset(
        workspace.scratch / "data", num_classes=TINY_CLASSES, images_per_class=TINY_IMAGES, size=(40, 40)
    )
    run_dir = workspace.scratch / "train-local"
    # A child process: a run past its limit is killed with the toolkit process it starts.
    env = dict(os.environ, SAGEMAKER_SUPPRESS_V2_WARNING="1")
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[2]), env.get("PYTHONPATH", "")])
    command = [
        sys.executable,
        "-c",
        _TRAIN_CHILD,
        _RESULT_MARKER,
        _PACKAGE,
        str(workspace.root),
        str(workspace.dataset),
        str(run_dir),
        json.dumps(TINY_HYPERPARAMETERS),
    ]
    try:
        code, output = run_bounded(command, timeout, cwd=workspace.scratch, env=env)
    except subprocess.TimeoutExpired:
        raise CheckTimeout(f"train --local took longer than {timeout:g} s") from None
    if code != 0:
        lines = [line for line in output.splitlines() if line.strip()]
        raise CheckFailed(f"exited with {code}: " + " | ".join(lines[-3:]))
    workspace.model = Path(_result_of(output))
    return f"1 epoch on {TINY_CLASSES} classes of 32 px images: {workspace.model.name} written"


def serve_and_predict(model: Path, project_root: Path, images: list[Path]) -> list[dict]:
    """Serve `model` with inference.py on a free local port, under the configured server ([endpoint]
    server), and send it `images`: the one place this module touches the local endpoints' API."""
    if ProjectConfig.load(project_root).settings.endpoint.server == "ray_serve":
        from ..local.ray_endpoint import running_ray_endpoint

        with running_ray_endpoint(model, project_root) as ray_endpoint:
            return ray_endpoint.predict(images, top_k=1)
    with running_endpoint(model, project_root) as endpoint:
        return endpoint.predict(images, top_k=1)


def check_serving(workspace: Workspace, timeout: float) -> str:
    """`serve` answers a prediction for a test image, naming one of the classes it was trained on."""
    assert workspace.model is not None and workspace.dataset is not None
    image = sorted((workspace.dataset / "test").rglob("*.jpg"))[0]
    (result,) = serve_and_predict(workspace.model, workspace.root, [image])
    top = result.get("top_k") or []
    if not top:
        raise CheckFailed(f"the endpoint answered without a prediction: {one_line(json.dumps(result))}")
    label, index = top[0].get("label"), top[0].get("index")
    if not isinstance(index, int) or not 0 <= index < TINY_CLASSES:
        raise CheckFailed(f"predicted class index {index!r} ({label!r}); trained on {TINY_CLASSES} classes")
    return f"POST /invocations answered: {label} ({float(top[0].get('probability', 0)):.2f})"


# --- the list, and running it ----------------------------------------------------------------------

CHECKS: tuple[Check, ...] = (
    Check("training/hpo.py", script_check("training", "hpo", ("hpo", "train_model")), 240),
    Check("training/train_model.py", script_check("training", "train_model", ("hpo", "train_model")), 240),
    Check("inference/inference.py", script_check("inference", "inference", ("inference",)), 240),
    Check(NOTEBOOK, check_notebook, 30),
    Check("config", check_config, 60),
    Check("tune --dry-run", dry_run_check("tune"), 180, needs=("config",)),
    Check("train --dry-run", dry_run_check("train"), 180, needs=("config",)),
    Check("deploy --dry-run", dry_run_check("deploy"), 180, needs=("train --dry-run",)),
    Check("train --local", check_local_training, 900, slow=True, needs=("config",)),
    Check("serve", check_serving, 300, slow=True, needs=("train --local",)),
)
NAMES = tuple(check.name for check in CHECKS)


def selected(only: Iterable[str] = ()) -> list[Check]:
    """The checks `only` names plus what they need (in the list's order); all of them for none."""
    wanted = set(only)
    unknown = wanted - set(NAMES)
    if unknown:
        raise ValueError(f"no check named {', '.join(sorted(unknown))}; the checks: {', '.join(NAMES)}")
    if not wanted:
        return list(CHECKS)
    by_name = {check.name: check for check in CHECKS}
    pending = list(wanted)
    while pending:
        for need in by_name[pending.pop()].needs:
            if need not in wanted:
                wanted.add(need)
                pending.append(need)
    return [check for check in CHECKS if check.name in wanted]


@contextlib.contextmanager
def quiet_sdk_logs() -> Iterator[None]:
    """The SDK's INFO lines ("Creating training-job ...") would bury the table; warnings still show."""
    names = ("", "sagemaker", "sagemaker.image_uris", "botocore", _PACKAGE)
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def run_one(check: Check, workspace: Workspace) -> CheckResult:
    """One check, its time limit around it and everything it prints held back (--json owns stdout)."""
    started = time.monotonic()
    held = io.StringIO()
    try:
        with contextlib.redirect_stdout(held), time_limit(check.timeout_s, check.name):
            detail = check.run(workspace, check.timeout_s)
        status = PASS
    except CheckFailed as error:
        status, detail = FAIL, one_line(str(error))
    except CheckTimeout as error:
        status, detail = FAIL, f"timed out: {error}"
    except KeyboardInterrupt:
        raise
    except BaseException as error:  # the project's own code failing is a result, not a crash of `check`
        status, detail = FAIL, error_line(error)
    return CheckResult(check.name, status, time.monotonic() - started, detail)


def run_checks(
    root: Path,
    *,
    fast: bool = False,
    only: Iterable[str] = (),
    on_result: Callable[[CheckResult], None] | None = None,
) -> list[CheckResult]:
    """Run the checks on the project in `root`; `fast` skips training and serving."""
    results: dict[str, CheckResult] = {}
    with quiet_sdk_logs(), tempfile.TemporaryDirectory(prefix="check-") as scratch:
        workspace = Workspace(Path(root).resolve(), Path(scratch))
        for check in selected(only):
            failed_need = next((need for need in check.needs if results[need].status != PASS), None)
            if check.slow and fast:
                result = CheckResult(check.name, SKIP, 0.0, "skipped by --fast")
            elif failed_need:
                result = CheckResult(check.name, SKIP, 0.0, f"needs {failed_need}, which did not pass")
            else:
                result = run_one(check, workspace)
            results[check.name] = result
            if on_result:
                on_result(result)
    return list(results.values())


def passed(results: Iterable[CheckResult]) -> bool:
    """No check failed (skipped ones do not count against the project)."""
    return all(result.status != FAIL for result in results)
