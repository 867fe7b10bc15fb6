""".github/workflows/template-ci.yml: valid YAML for GitHub Actions, its ${{ }} expressions left as
written (cookiecutter never renders the template's root), and every command it runs exists here."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import TEMPLATE_DIR
from test_matrix import CASES

WORKFLOW = TEMPLATE_DIR / ".github" / "workflows" / "template-ci.yml"
BIN = Path(sys.executable).parent
# Shell words that are not programs to look up.
SHELL_WORDS = {"cd", "export", "then", "fi", "do", "done", "PY", "EOF"}


@pytest.fixture(scope="module")
def workflow() -> dict:
    document = yaml.safe_load(WORKFLOW.read_text(encoding="utf-8"))
    # YAML 1.1 reads the key `on` as True.
    document["on"] = document.pop(True, document.get("on"))
    return document


def steps(workflow: dict) -> list[tuple[str, dict]]:
    return [(job, step) for job, spec in workflow["jobs"].items() for step in spec["steps"]]


def scripts_of(workflow: dict) -> list[str]:
    return [step["run"] for _, step in steps(workflow) if "run" in step]


def shell_lines(script: str) -> list[str]:
    """The shell command lines of a `run:` block, less the Python heredocs' bodies."""
    lines, in_heredoc = [], None
    for line in script.splitlines():
        if in_heredoc:
            in_heredoc = None if line.strip() == in_heredoc else in_heredoc
            continue
        heredoc = re.search(r"<<'?(\w+)'?", line)
        if heredoc:
            in_heredoc = heredoc.group(1)
        if line.strip():
            lines.append(line)
    return lines


def heredoc(script: str) -> str:
    return re.search(r"<<'PY'[^\n]*\n(.*?)\n\s*PY\s*$", script, re.S | re.M).group(1)


def test_the_workflow_is_a_github_actions_workflow(workflow):
    assert workflow["name"] == "template-ci"
    assert {"push", "pull_request"} <= set(workflow["on"])
    assert set(workflow["jobs"]) == {
        "template-tests",
        "install-paths",
        "matrix",
        "render",
        "sdk-generations",
        "cohort",
    }
    for job, step in steps(workflow):
        assert ("uses" in step) != ("run" in step), f"{job}: a step either uses an action or runs a command"
        if "uses" in step:
            assert re.fullmatch(r"actions/[\w-]+@v\d+", step["uses"]), step["uses"]
    # The fast tier leaves out the slow tests; the install paths get a job of their own.
    installs = [step["run"] for step in workflow["jobs"]["install-paths"]["steps"] if "run" in step]
    assert any("tests/test_install_paths.py" in command for command in installs), installs
    render = workflow["jobs"]["render"]
    assert render["needs"] == "matrix"
    assert render["strategy"]["matrix"]["case"] == "${{ fromJSON(needs.matrix.outputs.cases) }}"


def test_pip_is_cached_on_the_requirements_file(workflow):
    setups = [step for _, step in steps(workflow) if step.get("uses", "").startswith("actions/setup-python")]
    cached = [step for step in setups if step["with"].get("cache") == "pip"]
    assert len(cached) >= 3
    assert all(step["with"]["cache-dependency-path"] == "requirements-dev.txt" for step in cached)
    assert (TEMPLATE_DIR / "requirements-dev.txt").is_file()


def test_the_expressions_survive_because_cookiecutter_never_renders_the_root(cookies):
    text = WORKFLOW.read_text(encoding="utf-8")
    assert "${{ matrix.case.id }}" in text and "${{ toJSON(matrix.case.answers) }}" in text
    result = cookies.bake()
    assert result.exception is None
    project = Path(result.project_path)
    assert not list(project.rglob("template-ci.yml")), "the template's CI must not be rendered into projects"
    assert WORKFLOW.read_text(encoding="utf-8") == text


def commands(line: str) -> list[list[str]]:
    """The simple commands of a shell line, as words: split at &&, ||, |, ;, less redirections."""
    # `name=$(cmd ...)`: the command is cmd.
    line = re.sub(r"\b\w+=\$\(", "", line).replace(")", "")
    lexer = shlex.shlex(line, posix=True, punctuation_chars="&|;<>")
    lexer.whitespace_split = True
    found: list[list[str]] = [[]]
    skip_next = False
    for token in lexer:
        if skip_next:
            skip_next = False
        elif token in {"&&", "||", "|", ";"}:
            found.append([])
        elif set(token) <= set("<>"):
            skip_next = True  # the redirection's target or heredoc word
        else:
            found[-1].append(token)
    for words in found:
        while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", words[0]):  # `VAR=value cmd`: the command is cmd
            words.pop(0)
    return [words for words in found if words]


def test_every_command_and_path_it_names_exists(workflow):
    for script in scripts_of(workflow):
        for line in shell_lines(script):
            for words in commands(line):
                program = words[0]
                if program in SHELL_WORDS:
                    continue
                assert (BIN / program).exists() or shutil.which(program), f"no program {program!r}: {line}"
                if program == "python" and words[1:2] == ["-m"] and not words[2].startswith("$"):
                    ran = subprocess.run([sys.executable, "-m", words[2], "--help"], capture_output=True)
                    assert ran.returncode == 0, f"python -m {words[2]}: {line}"
                for word in words[1:]:
                    if (
                        re.match(r"(scripts|examples|tests|hooks|docs)/", word)
                        or word == "local_extensions.py"
                    ):
                        assert (TEMPLATE_DIR / word).exists(), f"{word} does not exist: {line}"


def test_the_command_splitter_reads_the_workflows_shell():
    assert commands('PYTHONPATH=src:. python -m "$package" check --json | tee check.jsonl') == [
        ["python", "-m", "$package", "check", "--json"],
        ["tee", "check.jsonl"],
    ]
    assert commands("python - <<'PY' >> \"$GITHUB_OUTPUT\"") == [["python", "-"]]
    assert commands('package=$(python -c "import a; print(a.b)")')[0][:2] == ["python", "-c"]


def test_the_matrix_step_prints_the_cases_the_template_tests_render(workflow, tmp_path):
    (script,) = [step["run"] for _, step in steps(workflow) if step.get("id") == "cases"]
    output = tmp_path / "github_output"
    subprocess.run(
        [sys.executable, "-c", heredoc(script)], cwd=TEMPLATE_DIR, check=True, stdout=output.open("w")
    )
    key, _, value = output.read_text().strip().partition("=")
    cases = json.loads(value)
    assert key == "cases" and len(cases) >= 4
    sys.path.insert(0, str(TEMPLATE_DIR / "tests"))

    assert [case["answers"] for case in cases] == json.loads(json.dumps(CASES))


def test_the_render_step_renders_a_case_and_names_its_folder(workflow, tmp_path):
    (script,) = [step["run"] for _, step in steps(workflow) if step.get("name") == "Render the case"]
    env_file = tmp_path / "github_env"
    answers = {"backbone": "resnet34", "include_notebook": False}
    # A copy as actions/checkout leaves it: the step renders into rendered/ beside the template.
    checkout = Path(
        shutil.copytree(
            TEMPLATE_DIR,
            tmp_path / "checkout",
            ignore=shutil.ignore_patterns(".git", ".venv", "site", "__pycache__", ".ruff_cache", "rendered"),
        )
    )
    subprocess.run(
        [sys.executable, "-c", heredoc(script)],
        cwd=checkout,
        check=True,
        capture_output=True,
        env={**os.environ, "ANSWERS": json.dumps(answers), "GITHUB_ENV": str(env_file)},
    )
    project = Path(env_file.read_text().strip().removeprefix("PROJECT="))
    assert project.parent == checkout / "rendered"
    assert (project / "config.toml").is_file()
    assert not (project / "train_and_deploy.ipynb").exists()


def test_both_sdk_generations_run(workflow):
    # v2 renders run their suite and `check` in the v2 environment; v3 renders their launcher tests in v3's;
    # one job compares both generations' requests.
    steps = workflow["jobs"]["render"]["steps"]
    by_generation = {
        generation: [step["name"] for step in steps if step.get("if", "").endswith(f"'{generation}'")]
        for generation in ("v2", "v3")
    }
    assert len(by_generation["v2"]) == 2 and len(by_generation["v3"]) == 1, by_generation
    v3_step = next(step for step in steps if step.get("if", "").endswith("'v3'"))
    assert v3_step["run"] == 'bash scripts/setup-sdk3-env.sh "$PROJECT"'
    compared = " ".join(step.get("run", "") for step in workflow["jobs"]["sdk-generations"]["steps"])
    assert "SDK_V3_PYTHON=.venv-sdk3/bin/python" in compared and "tests/test_sdk_generations.py" in compared
    assert {case["sagemaker_sdk"] for case in CASES} == {"v2", "v3"}
