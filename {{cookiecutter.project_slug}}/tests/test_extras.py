"""The core install (`pip install -e .`, as in SageMaker Studio) without the optional extras.

A child process blocks every module that only an extra brings (`sys.modules[name] = None`: importing
it raises ModuleNotFoundError and `importlib.util.find_spec` finds nothing, as when it is not
installed), then imports every module of the package and runs commands: each must work, or end in one
line naming the extra it needs. The template's tests/test_install_paths.py installs a render each way
for real; this is its fast guard, in the project's own suite.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import os
import re
import subprocess
import sys

from conftest import PACKAGE, project_module, tomllib
from launch_helpers import copy_project, model_archive

# What only the extras bring (pyproject.toml's local, ray, debug and dev), by top-level module.
EXTRA_ONLY = (
    "torch",
    "torchvision",
    "sagemaker_training",
    "sagemaker_inference",
    "sagemaker_pytorch_serving_container",
    "waitress",
    "ray",
    "mlflow",
    "sagemaker_mlflow",
    "onnx",
    "onnxscript",
    "onnxruntime",
    "matplotlib",
    "nbclient",
    "nbformat",
    "ipykernel",
    "hypothesis",
    "pytest",
)

_CHILD = """
import importlib, json, pkgutil, sys
package, blocked, commands = sys.argv[1], sys.argv[2].split(","), json.loads(sys.argv[3])
for name in blocked:
    sys.modules[name] = None
imported = importlib.import_module(package)
failed = {}
for info in pkgutil.walk_packages(imported.__path__, package + "."):
    name = info.name[len(package) + 1 :]
    if name != "__main__":  # it runs the CLI
        try:
            importlib.import_module(info.name)
        except ImportError as error:
            failed[name] = repr(error)
from click.testing import CliRunner
cli = importlib.import_module(package + ".cli")
results = [CliRunner().invoke(cli.main, args) for args in commands]
# A ClickException ends in SystemExit; anything else escaped the CLI's handler (a traceback outside tests).
answers = [dict(exit_code=r.exit_code, output=r.output, ended_by=type(r.exception).__name__) for r in results]
print(json.dumps({"failed": failed, "answers": answers}))
"""


def run_without_extras(project_root, commands: list[list[str]]) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(project_root / "src"), str(project_root)])}
    result = subprocess.run(
        [sys.executable, "-c", _CHILD, PACKAGE, ",".join(EXTRA_ONLY), json.dumps(commands)],
        cwd=project_root,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.splitlines()[-1])


def test_without_the_extras_every_module_imports_and_commands_name_the_extra(project_root, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.toml").write_text("[model\n", encoding="utf-8")
    on_ray = copy_project(project_root, tmp_path / "on-ray")
    text = (on_ray / "config.toml").read_text(encoding="utf-8")
    text = text.replace('server = "torchserve"', 'server = "ray_serve"')
    (on_ray / "config.toml").write_text(text, encoding="utf-8")
    model = model_archive(tmp_path / "model.tar.gz")
    commands = [
        ["serve", "--model-data", str(project_root / "README.md")],
        ["train", "--local", "--run-dir", str(tmp_path / "run")],
        ["serve", "--server", "ray_serve", "--model-data", str(project_root / "README.md")],
        ["--project", str(broken), "cost", "--offline"],
        # The package for the Ray Serve container carries the toolkit: from a core install, one line.
        ["--project", str(on_ray), "deploy", "--dry-run", "--dry-run-dir", str(tmp_path / "dry")]
        + ["--model-data", str(model)],
        ["runs"],
    ]
    outcome = run_without_extras(project_root, commands)
    extras = project_module("extras")
    # The other SDK generation's module needs the SDK this environment cannot hold beside its own.
    installed = "v" + importlib.metadata.version("sagemaker").split(".")[0]
    sdk = project_module("aws.sdk")
    other_sdk = {f"aws.{module}" for generation, module in sdk.SDK_MODULES.items() if generation != installed}
    unexpected = {
        name: why
        for name, why in outcome["failed"].items()
        if name not in extras.EXTRA_MODULES and name not in other_sdk
    }
    assert not unexpected, f"modules that need an extra at import: {unexpected}"
    serve, train, serve_under_ray, config, deploy_on_ray, runs = outcome["answers"]
    for answer in (serve, train, serve_under_ray, config, deploy_on_ray, runs):
        assert (answer["exit_code"], answer["ended_by"]) == (1, "SystemExit"), answer
    for answer in (serve, train):
        # One line, and nothing announced before it (no run folder claimed for a run that cannot start).
        (line,) = answer["output"].strip().splitlines()
        assert "needs the 'local' extra" in line and "pip install -e '.[local]'" in line, answer
    (line,) = serve_under_ray["output"].strip().splitlines()
    assert "needs the 'ray' extra" in line and "pip install -e '.[ray]'" in line, serve_under_ray
    assert "not valid TOML" in config["output"], config
    # After the preflight's table, one line; nothing uploaded.
    line = deploy_on_ray["output"].strip().splitlines()[-1]
    assert "sagemaker-inference toolkit" in line and "pip install -e '.[local]'" in line, deploy_on_ray
    assert not list(tmp_path.glob("dry/**/*.tar.gz")), "a model was uploaded before the refusal"
    (line,) = runs["output"].strip().splitlines()
    assert "runs needs the 'tracking' extra" in line and "pip install -e '.[tracking]'" in line, runs


def test_the_error_handler_imports_nothing_to_recognise_an_error():
    """An error class whose module was never imported cannot have been raised: the handler looks in
    sys.modules only, so recognising an error never imports a module (which could fail)."""
    cli = project_module("cli.shared")
    config = project_module("config")
    before = set(sys.modules)
    assert cli._is_expected(config.ConfigError("bad"))
    assert not cli._is_expected(ValueError("a bug"))
    assert set(sys.modules) == before
    for qualified_name in cli._EXPECTED_ERRORS:  # each names a class that exists where it says
        module_name, _, class_name = qualified_name.rpartition(".")
        assert issubclass(getattr(importlib.import_module(module_name), class_name), Exception)


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_the_modules_a_command_checks_for_come_from_its_extra(project_root):
    """extras.EXTRAS (import names) and pyproject.toml's extras (distribution names) say the same."""
    extras = project_module("extras")
    pyproject = tomllib.loads((project_root / "pyproject.toml").read_text(encoding="utf-8"))
    distributions = importlib.metadata.packages_distributions()
    for extra, modules in extras.EXTRAS.items():
        requirements = pyproject["project"]["optional-dependencies"][extra]
        named = {
            _normalized(re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0]) for requirement in requirements
        }
        for module in modules:
            providers = {_normalized(name) for name in distributions.get(module, [])}
            assert providers & named, f"{module} (from {sorted(providers)}) is not in the {extra!r} extra"
