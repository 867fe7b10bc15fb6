"""`handin`: is a student's hand-in complete? An untouched project fails with the reasons a reviewer would
give; a completed one passes; an error output, a placeholder, a screenshot that is no picture and an
endpoint left running are each named. No AWS: without an account the endpoint is "not checked"."""

from __future__ import annotations

import copy
import json
import re
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import NO_ACCOUNT, PROJECT_ROOT, project_module
from PIL import Image

handin = project_module("checks.handin")
cli = project_module("cli")
ProjectConfig = project_module("config").ProjectConfig
ProjectState = project_module("aws.state").ProjectState

# What a copy leaves out: records of earlier runs and caches, and whatever a hand-in adds.
NOT_COPIED = shutil.ignore_patterns(
    "dry-run", ".state", "runs", "data", "reports", "__pycache__", ".venv", ".pytest_cache", ".ruff_cache",
    "tests", "benchmarks", "WRITEUP*.md", handin.SCREENSHOTS_FOLDER,
)  # fmt: skip


# A render without the notebook (include_notebook=no) has none to hand in: those tests have nothing to run.
needs_notebook = pytest.mark.skipif(
    not (PROJECT_ROOT / handin.NOTEBOOK).exists(), reason="rendered without the notebook"
)


@pytest.fixture()
def project(project_root, tmp_path) -> Path:
    """The project as rendered, in a folder of its own."""
    return Path(shutil.copytree(project_root, tmp_path / "project", ignore=NOT_COPIED))


def run_handin(project: Path, *args: str) -> tuple[int, dict[str, dict]]:
    arguments = ["--project", str(project), "handin", "--json", *args]
    result = CliRunner().invoke(cli.main, arguments, env=NO_ACCOUNT)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    records = [json.loads(line) for line in result.output.splitlines() if line.startswith("{")]
    return result.exit_code, {record["name"]: record for record in records}


def executed(notebook: dict, error_in: int | None = None) -> dict:
    """The notebook as Jupyter saves it after Run All: counts in order, an output per code cell; the code
    cell at position `error_in` (1-based, among all cells) ended in an AttributeError."""
    done = copy.deepcopy(notebook)
    count = 0
    for number, cell in enumerate(done["cells"], 1):
        if cell["cell_type"] != "code":
            continue
        count += 1
        cell["execution_count"] = count
        cell["outputs"] = [{"output_type": "stream", "name": "stdout", "text": [f"ran {count}\n"]}]
        if number == error_in:
            cell["outputs"].append(
                {
                    "output_type": "error",
                    "ename": "AttributeError",
                    "evalue": "'Hook' object has no attribute 'parent_forward_event'",
                    "traceback": ["..."],
                }
            )
    return done


def hand_in(project: Path, *, error_in: int | None = None) -> None:
    """What a student adds: the executed notebook, a filled write-up that shows a picture, the screenshots."""
    path = project / handin.NOTEBOOK
    path.write_text(json.dumps(executed(json.loads(path.read_text()), error_in)), encoding="utf-8")
    (project / "reports" / "local").mkdir(parents=True)
    Image.new("RGB", (40, 30), "white").save(project / "reports" / "local" / "loss.png")
    (project / handin.WRITEUP_FILENAME).write_text(
        "# Write-up\n\nThe best learning rate was 0.0042; it overfit after epoch 3, so I stopped there.\n\n"
        "![loss](reports/local/loss.png)\n\n"
        "```python\nendpoint = '<your endpoint>'  # TODO in an example\n```\n",
        encoding="utf-8",
    )
    (project / handin.SCREENSHOTS_FOLDER).mkdir()
    for number, (name, _) in enumerate(handin.CONSOLE_SCREENSHOTS):
        suffix = ".jpg" if number % 2 else ".png"  # either format is fine
        Image.new("RGB", (64, 48), "grey").save(project / handin.SCREENSHOTS_FOLDER / f"{name}{suffix}")


def code_cell_numbers(project: Path) -> list[int]:
    cells = json.loads((project / handin.NOTEBOOK).read_text())["cells"]
    return [number for number, cell in enumerate(cells, 1) if cell["cell_type"] == "code"]


@needs_notebook
def test_an_untouched_project_fails_with_the_reasons(project):
    code, items = run_handin(project)
    assert code == 1
    assert list(items) == [
        handin.NOTEBOOK,
        handin.WRITEUP_FILENAME,
        *(f"{handin.SCREENSHOTS_FOLDER}/{name}.png" for name, _ in handin.CONSOLE_SCREENSHOTS),
        *handin.SCRIPTS,
        handin.ENDPOINT_ITEM,
        handin.COST_ITEM,
    ]
    assert items[handin.NOTEBOOK]["status"] == "fail" and "not executed" in items[handin.NOTEBOOK]["detail"]
    assert items[handin.WRITEUP_FILENAME]["status"] == "fail"
    assert "report --write-up" in items[handin.WRITEUP_FILENAME]["detail"]
    for name, where in handin.CONSOLE_SCREENSHOTS:
        screenshot = items[f"{handin.SCREENSHOTS_FOLDER}/{name}.png"]
        assert screenshot["status"] == "fail" and where in screenshot["detail"]
    assert all(items[script]["status"] == "pass" for script in handin.SCRIPTS)
    # No account: said, not failed.
    for name in (handin.ENDPOINT_ITEM, handin.COST_ITEM):
        assert items[name]["status"] == "skip" and "not checked: no AWS credentials" in items[name]["detail"]


@needs_notebook
def test_a_completed_hand_in_passes(project):
    hand_in(project)
    code, items = run_handin(project, "--offline")
    assert code == 0, items
    statuses = {name: item["status"] for name, item in items.items()}
    assert statuses.pop(handin.ENDPOINT_ITEM) == statuses.pop(handin.COST_ITEM) == "skip"
    assert set(statuses.values()) == {"pass"}, items
    assert "not checked (--offline)" in items[handin.ENDPOINT_ITEM]["detail"]
    jpeg = items[f"{handin.SCREENSHOTS_FOLDER}/training-job.png"]
    assert jpeg["detail"].startswith("training-job.jpg: JPEG")


@needs_notebook
def test_an_error_output_fails_naming_the_cell(project):
    cell = code_cell_numbers(project)[4]
    hand_in(project, error_in=cell)
    code, items = run_handin(project, "--offline")
    assert code == 1
    notebook = items[handin.NOTEBOOK]
    assert notebook["status"] == "fail"
    assert f"cell {cell} (AttributeError: 'Hook' object has no attribute" in notebook["detail"]


@needs_notebook
def test_the_table_and_the_last_line_name_what_is_missing(project):
    result = CliRunner().invoke(
        cli.main, ["--project", str(project), "handin", "--offline"], env=NO_ACCOUNT, terminal_width=250
    )
    assert result.exit_code == 1
    assert "hand-in:" in result.output and "not executed" in result.output
    assert "incomplete: train_and_deploy.ipynb, WRITEUP.md, screenshots/tuning-jobs.png" in result.output


@pytest.mark.parametrize(
    ("change", "status", "words"),
    [
        (lambda cells: cells[1].update(execution_count=None), "fail", "cell {1} (of {n} code cells) never"),
        (lambda cells: cells[2].update(execution_count=99), "warn", "run out of order (cell {3} ran before"),
        (
            lambda cells: cells[0]["outputs"].append(
                {"output_type": "stream", "name": "stderr", "text": "Traceback (most recent call last):\n"}
            ),
            "warn",
            "a traceback printed in cell {0}",
        ),
        (lambda cells: [cell.update(outputs=[]) for cell in cells], "fail", "no outputs saved"),
    ],
    ids=["a cell never ran", "out of order", "a printed traceback", "outputs cleared"],
)
@needs_notebook
def test_a_notebook_not_run_cleanly_is_named(project, change, status, words):
    numbers = code_cell_numbers(project)
    notebook = executed(json.loads((project / handin.NOTEBOOK).read_text()))
    code_cells = [cell for cell in notebook["cells"] if cell["cell_type"] == "code"]
    change(code_cells)
    found, detail = handin.notebook_problems(notebook)
    assert found == status
    assert words.format(*numbers, n=len(numbers)) in detail


def test_a_write_up_generated_before_the_steps_ran_fails_on_its_placeholders(project, tmp_path):
    """The generator's own placeholders are what `handin` looks for; once every step ran, none is left
    and only the marker line (not yet the student's words) is a warning."""
    writeup = project_module("checks.writeup")
    report = project_module("report")
    launcher = project_module("workflow.launcher")
    config = ProjectConfig.load(project)
    state = ProjectState(tmp_path / "state")
    bare = report.Report(run="local run runs/local", folder=tmp_path, source="a local run")
    status, detail = handin.writeup_problems(writeup.render(config, state, bare), project)
    assert status == "fail"
    for placeholder in (handin.NO_TUNING_JOB, handin.NO_TUNING_RESULT, handin.NO_TEST_ACCURACY):
        assert f"'{placeholder}'" in detail
    state.set_value(
        launcher.BEST_HYPERPARAMETERS,
        {"tuning_job": "hpo-1", "training_job": "hpo-1-003", "hyperparameters": {"lr": 0.0042}},
    )
    state.record("endpoint", "my-endpoint")
    done = report.Report(run="job-1", folder=tmp_path, source="job-1", test_accuracy=0.8, test_images=10)
    text = writeup.render(config, state, done)
    assert handin.writeup_problems(text, project) == (
        "warn",
        "still the generated write-up: add your insights in your own words and delete its first line "
        "(the generator then leaves it alone)",
    )
    for name, where in handin.CONSOLE_SCREENSHOTS:
        assert f"- {where} `{handin.SCREENSHOTS_FOLDER}/{name}.png`" in text
    assert handin.writeup_problems(text.split("\n", 1)[1], project)[0] == "pass"


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("Insights: TODO\n", "placeholders left: 'TODO'"),
        ("![loss](reports/gone/loss.png)\n", "points at reports/gone/loss.png, not in the project"),
        ("See `reports/gone/index.html`.\n", "points at reports/gone/index.html, not in the project"),
    ],
)
def test_a_write_up_with_a_note_to_self_or_a_missing_picture_fails(project, text, words):
    status, detail = handin.writeup_problems("# Write-up\n\n" + text, project)
    assert status == "fail" and words in detail


def test_a_screenshot_that_is_no_picture_fails(project):
    name = handin.CONSOLE_SCREENSHOTS[0][0]
    (project / handin.SCREENSHOTS_FOLDER).mkdir()
    (project / handin.SCREENSHOTS_FOLDER / f"{name}.png").write_text("not a picture")
    item = handin.check_screenshot(project, *handin.CONSOLE_SCREENSHOTS[0])
    assert (item.status, item.detail) == ("fail", f"{name}.png is not a picture PIL can read")


def endpoint_row(status: str) -> dict:
    return {"kind": "endpoint", "name": "e", "status": status}


@pytest.mark.parametrize(
    ("rows", "status", "words"),
    [
        ([endpoint_row("InService")], "fail", "still up, billed every hour: e (InService); run `s teardown`"),
        ([endpoint_row("Failed")], "warn", "not billed but not deleted: e (Failed)"),
        ([endpoint_row("Deleted")], "pass", "no endpoint"),
        ([{"kind": "training-job", "name": "job-1", "status": "Completed"}], "pass", "no endpoint"),
    ],
)
def test_an_endpoint_left_up_fails(rows, status, words):
    item = handin.endpoint_item(rows, "s")
    assert item.status == status and words in item.detail


def test_the_cost_so_far_is_summed_and_compared_with_the_budget():
    rows = [
        {"kind": "training-job", "name": "job-1", "status": "Completed", "usd": 1.25},
        {"kind": "endpoint", "name": "ep-1", "status": "InService", "usd": None},
        {"kind": "model", "name": "m-1", "status": "Exists", "usd": 0.0},
    ]
    item = handin.cost_item(rows, budget_usd=5)
    assert item.status == "pass"
    assert item.detail == "1.25 USD for 3 resources (from start and end times); no figure for ep-1"
    assert handin.cost_item(rows, budget_usd=1).status == "warn"


def test_offline_an_endpoint_in_the_local_record_is_a_warning_naming_teardown(project):
    config = ProjectConfig.load(project)
    ProjectState(config.state_dir).record("endpoint", "dogs-ep-1")
    code, items = run_handin(project, "--offline")
    endpoint = items[handin.ENDPOINT_ITEM]
    assert endpoint["status"] == "warn"
    assert "local record still lists dogs-ep-1" in endpoint["detail"] and "teardown`" in endpoint["detail"]


@needs_notebook
def test_a_notebook_too_large_to_read_fails_without_reading_it(project, monkeypatch):
    monkeypatch.setattr(handin, "MAX_NOTEBOOK_BYTES", 1000)
    item = handin.check_notebook(project)
    size = (project / handin.NOTEBOOK).stat().st_size
    assert (item.status, item.detail) == (
        "fail",
        f"{size:,} bytes, over the 1,000 this check reads: clear large outputs, then save",
    )


def test_every_command_the_readme_hand_in_section_names_exists(project_root):
    """`<slug> <command> --option` in the README's hand-in walk-through: each command and option is real."""
    readme = (project_root / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Handing in\n", 1)[1].split("\n## ", 1)[0]
    slug = ProjectConfig.load(project_root).section("project")["slug"]
    named = [span.split() for span in re.findall(r"`([^`]+)`", section)]
    commands = [words[1:] for words in named if words[0] == slug]
    # Also `report --local --write-up`, `tune`...: a span that starts with a command of the CLI.
    commands += [words for words in named if words[0] in cli.main.commands]
    assert {"check", "report", "teardown", "status", "handin"} <= {words[0] for words in commands}
    for words in commands:
        command = cli.main.commands.get(words[0])
        assert command is not None, f"`{' '.join(words)}`: no such command"
        options = {option for param in command.params for option in param.opts}
        for word in words[1:]:
            assert not word.startswith("-") or word in options, f"`{' '.join(words)}`: no option {word}"
    for option in re.findall(r"`(--[a-z-]+)`", section):  # `--fast`, `--json`: options of some command
        assert any(option in p.opts for c in cli.main.commands.values() for p in c.params), option


def test_a_project_rendered_without_the_notebook_is_not_failed_for_it(project):
    """The answers record says whether the notebook was part of the render; without the record it is due."""
    (project / handin.NOTEBOOK).unlink(missing_ok=True)
    answers = project / handin.ANSWERS_FILE
    record = json.loads(answers.read_text(encoding="utf-8"))
    record["cookiecutter"]["include_notebook"] = "no"
    answers.write_text(json.dumps(record), encoding="utf-8")
    assert handin.check_notebook(project).status == "skip"
    answers.unlink()
    item = handin.check_notebook(project)
    assert (item.status, item.detail) == ("fail", "missing")


def test_with_an_account_the_endpoint_and_cost_come_from_status(project, monkeypatch):
    """What `status` finds (here a stand-in for the account's answer) decides the two AWS items."""
    import contextlib

    resources = project_module("workflow.resources")
    session = project_module("aws.session")
    asked = []

    @contextlib.contextmanager
    def account(config, **options):
        asked.append(options)
        yield "the session"

    rows = [
        {"kind": "endpoint", "name": "dogs-ep-1", "status": "InService", "usd": 0.75},
        {"kind": "training-job", "name": "dogs-train-1", "status": "Completed", "usd": 1.5},
    ]
    monkeypatch.setattr(session, "open_session", account)
    monkeypatch.setattr(resources, "status", lambda config, opened: rows if opened == "the session" else [])
    endpoint, cost = handin.aws_items(project, offline=False)
    assert asked == [{}], "a real session: no dry run"
    slug = ProjectConfig.load(project).section("project")["slug"]
    assert (endpoint.status, endpoint.detail) == (
        "fail",
        f"still up, billed every hour: dogs-ep-1 (InService); run `{slug} teardown`",
    )
    assert (cost.status, cost.detail) == ("pass", "2.25 USD for 2 resources (from start and end times)")
