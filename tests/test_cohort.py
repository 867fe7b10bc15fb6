"""scripts/cohort.py: one project per roster row; bad rows reported in the template's words; re-runs
leave projects alone; --update keeps a student's edits; --check collects every project's check."""

from __future__ import annotations

import csv
import filecmp
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import QUESTIONS, TEMPLATE_DIR, project_env, read_config

SCRIPT = TEMPLATE_DIR / "scripts" / "cohort.py"
GIT_ENV = {
    "GIT_AUTHOR_NAME": "Test",
    "GIT_AUTHOR_EMAIL": "test@example.com",
    "GIT_COMMITTER_NAME": "Test",
    "GIT_COMMITTER_EMAIL": "test@example.com",
}


def load_cohort():
    spec = importlib.util.spec_from_file_location("cohort", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["cohort"] = module
    spec.loader.exec_module(module)
    return module


cohort = load_cohort()


def write_roster(path: Path, rows: list[list[str]], header: list[str]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as file:
        csv.writer(file).writerows([header, *rows])
    return path


def run_cohort(
    roster: Path, out: Path, *args: str, template: Path = TEMPLATE_DIR
) -> subprocess.CompletedProcess:
    command = [sys.executable, str(SCRIPT), str(roster), "--out", str(out), "--course", "Dog Breeds"]
    command += ["--prefix", "dogs", "--template", str(template), "--jobs", "2", *args]
    env = {**os.environ, **GIT_ENV, "SAGEMAKER_SUPPRESS_V2_WARNING": "1"}
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)


def summary(out: Path) -> dict[int, dict[str, str]]:
    with (out / "cohort-summary.csv").open(newline="", encoding="utf-8") as file:
        return {int(row["row"]): row for row in csv.DictReader(file)}


def git(cwd: Path, *args: str) -> str:
    result = subprocess.run(
        ["git", *args], cwd=cwd, capture_output=True, text=True, env={**os.environ, **GIT_ENV}, check=True
    )
    return result.stdout


HEADER = ["Student ID", "Name", "Email", "aws_region", "backbone", "num_classes", "training_instance_type"]
ROSTER = [
    ["a1001", "Ada Lovelace", "ada@example.edu", "", "", "", ""],  # row 2: defaults
    ["a1002", "Alan Turing", "alan@example.edu", "eu-west-1", "resnet50", "10", ""],  # 3: overrides
    ["a1001", "Ada Again", "ada2@example.edu", "", "", "", ""],  # 4: duplicate id
    ["A1002!", "Exclaimed Turing", "x@example.edu", "", "", "", ""],  # 5: another id, row 3's slug
    ["", "No Id", "noid@example.edu", "", "", "", ""],  # 6: missing id
    ["a1007", "Bad Classes", "b@example.edu", "", "", "ten", ""],  # 7: refused by the hook
    ["a1008", "Bad Backbone", "b@example.edu", "", "resnet9", "", ""],  # 8: refused by cookiecutter
    ["a1009", "Bad Machine", "b@example.edu", "", "", "", "m5.large"],  # 9: refused by the schema
    ["a1010", "Grace Hopper", "grace@example.edu", "", "", "", ""],  # 10: good again
    ["=1+2", "Formula", "f@example.edu", "", "", "", ""],  # 11: a formula, not an id
    ['=HYPERLINK("http://evil.example/x","open me")', "Link", "l@example.edu", "", "", "", ""],  # 12
]


@pytest.fixture(scope="module")
def cohort_run(tmp_path_factory) -> tuple[Path, Path, subprocess.CompletedProcess]:
    tmp = tmp_path_factory.mktemp("cohort")
    roster = write_roster(tmp / "roster.csv", ROSTER, HEADER)
    out = tmp / "students"
    return roster, out, run_cohort(roster, out, "--git")


def test_good_rows_are_rendered_and_bad_ones_reported_with_the_templates_message(cohort_run):
    _, out, result = cohort_run
    assert result.returncode == 1, result.stderr
    rows = summary(out)
    assert {row: rows[row]["status"] for row in rows} == {
        2: "created",
        3: "created",
        4: "failed",
        5: "failed",
        6: "failed",
        7: "failed",
        8: "failed",
        9: "failed",
        10: "created",
        11: "failed",
        12: "failed",
    }
    assert rows[4]["reason"] == "duplicate student_id 'a1001' (row 2)"
    assert rows[5]["reason"] == "duplicate project_slug 'dogs-a1002' (row 3)"
    assert rows[6]["reason"] == "missing student_id"
    assert rows[7]["reason"].startswith("num_classes: 'ten' must be")
    assert rows[8]["reason"].startswith("backbone: 'resnet9' is not one of ['resnet18'")
    assert rows[9]["reason"].startswith("training_instance_type: 'm5.large'")
    assert rows[11]["reason"].startswith("student_id '=1+2' starts with '=', which a spreadsheet runs")
    assert (rows[2]["name"], rows[6]["name"], rows[7]["name"]) == ("Ada Lovelace", "No Id", "Bad Classes")
    for row in (4, 5, 6, 7, 8, 9, 11, 12):
        assert rows[row]["folder"] == ""
        assert f"row {row} (" in result.stderr
    assert sorted(path.name for path in out.iterdir() if path.is_dir()) == [
        "dogs-a1001",
        "dogs-a1002",
        "dogs-a1010",
    ]


def test_the_summary_shows_formulas_as_text(cohort_run):
    """A cell a spreadsheet would run (=, +, -, @, tab, CR first) is written with an apostrophe before it."""
    _, out, _ = cohort_run
    rows = summary(out)
    assert rows[11]["student"] == "'=1+2"
    assert rows[12]["student"] == '\'=HYPERLINK("http://evil.example/x","open me")'
    assert rows[11]["reason"].startswith("student_id '=1+2'"), (
        "a reason starting with a letter is left as it is"
    )
    for row in rows.values():
        assert not any(str(cell).startswith(cohort.FORMULA_STARTS) for cell in row.values()), row


@pytest.mark.parametrize("start", ["=", "+", "-", "@", "\t", "\r"])
def test_every_csv_the_cohort_writes_escapes_formula_starts(tmp_path, start):
    text = start + "cmd|' /C calc'!A0"
    results = [cohort.RowResult(2, text, "dogs-x", cohort.FAILED, text, checks=[], name=text)]
    results[0].checks = [{"name": text, "status": "fail", "detail": "x"}]
    results[0].handin = [{"name": text, "status": "fail", "detail": text}]
    cohort.write_summary(tmp_path / "summary.csv", results)
    cohort.write_class_table(tmp_path / "checks.csv", results)
    for name in ("summary.csv", "checks.csv"):
        with (tmp_path / name).open(newline="", encoding="utf-8") as file:
            cells = [cell for record in csv.reader(file) for cell in record]
        assert "'" + text in cells, (name, cells)
        assert not any(cell.startswith(cohort.FORMULA_STARTS) for cell in cells), (name, cells)
    assert cohort.spreadsheet_cell("a=1") == "a=1" and cohort.spreadsheet_cell(2) == 2


def test_the_class_table_has_every_roster_row_its_name_check_and_hand_in(tmp_path):
    """One row per roster row, in roster order: a row that never rendered keeps its reason; a checked
    project has its check (per check and what failed) and its hand-in (complete, or what is missing)."""
    passed = [{"name": "config", "status": "pass", "detail": "valid"}]
    failed = [{"name": "config", "status": "fail", "detail": "[model] num_classes must be > 1"}]
    done = [{"name": "WRITEUP.md", "status": "warn", "detail": "still the generated write-up"}]
    missing = [
        {"name": "train_and_deploy.ipynb", "status": "fail", "detail": "not executed: " + "x" * 300},
        {"name": "WRITEUP.md", "status": "pass", "detail": "filled"},
        {"name": "screenshots/endpoint.png", "status": "fail", "detail": "missing; take it at SageMaker"},
    ]
    results = [
        cohort.RowResult(4, "b2", "/s/dogs-b2", cohort.EXISTS, "", passed, "Bo", missing),
        cohort.RowResult(3, "", "", cohort.FAILED, "missing student_id", name="No Id"),
        cohort.RowResult(2, "a1", "/s/dogs-a1", cohort.CREATED, "", failed, "Ada", done),
        cohort.RowResult(5, "c3", "/s/dogs-c3", cohort.CREATED, name="Cy"),  # not checked (yet)
    ]
    cohort.write_class_table(tmp_path / "class.csv", results)
    with (tmp_path / "class.csv").open(newline="", encoding="utf-8") as file:
        reader = csv.DictReader(file)
        table = list(reader)
    assert reader.fieldnames == [*cohort.CLASS_FIELDS, "config", *cohort.CLASS_TAIL]
    assert [(row["row"], row["student"], row["name"]) for row in table] == [
        ("2", "a1", "Ada"),
        ("3", "", "No Id"),
        ("4", "b2", "Bo"),
        ("5", "c3", "Cy"),
    ]
    ada, no_id, bo, cy = table
    assert (ada["check result"], ada["config"], ada["handin"]) == ("fail", "fail", "complete")
    assert ada["failed checks"] == "config: [model] num_classes must be > 1" and ada["handin missing"] == ""
    assert (no_id["status"], no_id["reason"]) == ("failed", "missing student_id")
    assert no_id["check result"] == no_id["handin"] == "no project"
    assert (bo["check result"], bo["handin"]) == ("pass", "incomplete")
    cut = cohort.HANDIN_DETAIL_CHARS - len("not executed: ")
    assert bo["handin missing"] == (
        "train_and_deploy.ipynb: not executed: " + "x" * cut + "; screenshots/endpoint.png: missing"
    )
    assert cy["check result"] == cy["handin"] == "not checked"


@pytest.mark.parametrize("student_id", ["=1+2", "+1", "-1", "@SUM(A1)", "\tx1", '=HYPERLINK("u","t")'])
def test_a_formula_id_gets_no_project(student_id):
    students = [cohort.Student(2, student_id, "", ""), cohort.Student(3, "b2", "", "")]
    (failure,) = cohort.plan(students, "Course", "course", QUESTIONS)
    assert failure.row == 2 and "runs as a formula" in failure.reason
    assert [student.slug for student in students] == ["course-b2"]


def test_each_student_gets_their_own_slug_prefix_and_owner_and_the_overrides(cohort_run):
    _, out, _ = cohort_run
    ada, alan = read_config(out / "dogs-a1001"), read_config(out / "dogs-a1002")
    assert ada["project"]["slug"] == "dogs-a1001"
    assert ada["project"]["package"] == "dogs_a1001"
    assert ada["aws"]["prefix"] == "dogs/a1001"
    assert alan["aws"]["region"] == "eu-west-1"
    assert alan["model"]["backbone"] == "resnet50"
    assert alan["model"]["num_classes"] == 10
    assert ada["model"]["backbone"] == QUESTIONS["backbone"][0]
    answers = json.loads((out / "dogs-a1002" / ".cookiecutter.json").read_text())["cookiecutter"]
    assert (answers["author_name"], answers["author_email"]) == ("Alan Turing", "alan@example.edu")
    if "owner" in QUESTIONS:  # the owner answer lands with the preflight/tags work
        assert answers["owner"] == "a1002"
        assert "a1002" in (out / "dogs-a1002" / "config.toml").read_text()


def test_the_student_part_survives_in_every_sagemaker_name(cohort_run, tmp_path):
    """Tuning job names are cut to 32 characters: the slug's first 16 must tell students apart."""
    _, out, _ = cohort_run
    names = {}
    for slug in ("dogs-a1001", "dogs-a1002"):
        project = out / slug
        package = read_config(project)["project"]["package"]
        code = (
            f"from {package}.config import ProjectConfig; from {package}.aws.sagemaker_api import job_name\n"
            "config = ProjectConfig.load()\n"
            "print(job_name(config, 'hpo', max_length=32), job_name(config, 'endpoint'))"
        )
        ran = subprocess.run(
            [sys.executable, "-c", code],
            cwd=project,
            env=project_env(project),
            capture_output=True,
            text=True,
        )
        assert ran.returncode == 0, ran.stderr
        names[slug] = ran.stdout.split()
    (tune_1, endpoint_1), (tune_2, endpoint_2) = names.values()
    assert tune_1.startswith("dogs-a1001-hpo-") and tune_2.startswith("dogs-a1002-hpo-")
    assert len(tune_1) <= 32 and endpoint_1.startswith("dogs-a1001-") and endpoint_2.startswith("dogs-a1002-")


def test_slugs_that_agree_as_far_as_tuning_names_keep_are_refused():
    students = [cohort.Student(row, sid, "", "") for row, sid in ((2, "abcdefghijk1"), (3, "abcdefghijk2"))]
    failures = cohort.plan(students, "Course", "course", QUESTIONS)
    assert [student.slug for student in students] == ["course-abcdefghijk1"]
    (failure,) = failures
    assert failure.row == 3 and "starts like row 2's for the first 16 characters" in failure.reason
    assert cohort.TUNING_SLUG_CHARS == 16


def test_every_project_is_a_git_repository_with_one_commit_and_a_cruft_record(cohort_run):
    _, out, _ = cohort_run
    project = out / "dogs-a1001"
    assert len(git(project, "log", "--oneline").splitlines()) == 1
    assert git(project, "status", "--porcelain") == ""
    state = json.loads((project / ".cruft.json").read_text())
    assert state["template"] == str(TEMPLATE_DIR)
    assert state["context"]["cookiecutter"]["project_slug"] == "dogs-a1001"
    assert not (out / cohort.STAGING).exists()


def test_a_rerun_leaves_existing_projects_alone(cohort_run, tmp_path):
    roster, first_out, _ = cohort_run
    # A copy: the rerun rewrites the summary the other tests of the first run read, in any order.
    out = Path(shutil.copytree(first_out, tmp_path / "students", symlinks=True))
    config = out / "dogs-a1001" / "config.toml"
    config.write_text(config.read_text() + "\n# the student's note\n")
    again = run_cohort(roster, out)
    assert again.returncode == 1  # the bad rows are still bad
    rows = summary(out)
    assert [rows[row]["status"] for row in (2, 3, 10)] == ["exists"] * 3
    assert config.read_text().endswith("# the student's note\n")
    assert sorted(path.name for path in out.iterdir() if path.is_dir()) == [
        "dogs-a1001",
        "dogs-a1002",
        "dogs-a1010",
    ]


def test_the_fast_render_is_the_same_as_cookiecutters(tmp_path):
    """Hooks in the worker and templates compiled once must not change a byte of the output."""
    from cookiecutter.main import cookiecutter

    template = snapshot(tmp_path)  # a copy: others may be editing the template while this runs
    roster = write_roster(tmp_path / "roster.csv", [ROSTER[1]], HEADER)
    out = tmp_path / "students"
    assert run_cohort(roster, out, template=template).returncode == 0
    fast = out / "dogs-a1002"
    answers = json.loads((fast / ".cookiecutter.json").read_text())["cookiecutter"]
    plain = Path(cookiecutter(str(template), no_input=True, extra_context=answers, output_dir=str(tmp_path)))
    differences = []

    def compare(comparison: filecmp.dircmp, prefix: str = "") -> None:
        differences.extend(prefix + name for name in comparison.left_only + comparison.right_only)
        differences.extend(prefix + name for name in comparison.diff_files)
        for name, sub in comparison.subdirs.items():
            compare(sub, f"{prefix}{name}/")

    compare(filecmp.dircmp(plain, fast, ignore=[".cruft.json"]))
    assert differences == []


def test_isolated_hooks_give_the_same_messages(tmp_path):
    rows = [["b1", "Bee", "b@example.edu", "", "", "ten", ""], ["b2", "Cee", "c@example.edu", "", "", "", ""]]
    roster = write_roster(tmp_path / "roster.csv", rows, HEADER)
    fast, isolated = tmp_path / "fast", tmp_path / "isolated"
    assert run_cohort(roster, fast).returncode == 1
    assert run_cohort(roster, isolated, "--isolated-hooks").returncode == 1
    assert summary(fast)[2]["reason"] == summary(isolated)[2]["reason"]
    assert summary(fast)[2]["reason"].startswith("num_classes: 'ten'")
    assert summary(isolated)[3]["status"] == "created"


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (["name", "email"], "no student_id column"),
        (["student_id", "name", "aws_regoin"], "aws_regoin are not template answers"),
        (["student_id", "name", "name"], "name appear more than once"),
    ],
)
def test_a_roster_that_cannot_be_read_stops_before_rendering(tmp_path, header, message):
    roster = write_roster(tmp_path / "roster.csv", [["x"] * len(header)], header)
    result = run_cohort(roster, tmp_path / "out")
    assert result.returncode == 1 and message in result.stderr
    assert not (tmp_path / "out").exists()


def test_a_cell_past_the_csv_modules_limit_is_one_line_naming_row_and_column(tmp_path):
    """131,073 characters used to end in a `_csv.Error` traceback; any cell over MAX_CELL_CHARS is refused."""
    rows = [["a1", "Ann", "a@example.edu", "", "", "", ""], ["a2", "B" * 131_073, "b@example.edu"] + [""] * 4]
    roster = write_roster(tmp_path / "roster.csv", rows, HEADER)
    with pytest.raises(cohort.RosterError) as raised:
        cohort.read_roster(roster, QUESTIONS)
    assert "row 3, column 'Name': a cell of 131,073 characters; at most 1,000" in str(raised.value)
    result = run_cohort(roster, tmp_path / "out")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "row 3, column 'Name'" in result.stderr and not (tmp_path / "out").exists()
    assert csv.field_size_limit() == 131_072, "the csv module's limit is restored"


def test_rows_and_bytes_of_a_roster_are_bounded(tmp_path, monkeypatch):
    rows = [[f"s{i}", "N", "n@example.edu", "", "", "", ""] for i in range(4)]
    roster = write_roster(tmp_path / "roster.csv", rows, HEADER)
    monkeypatch.setattr(cohort, "MAX_ROSTER_ROWS", 3)
    with pytest.raises(cohort.RosterError, match="more than 3 rows after the header"):
        cohort.read_roster(roster, QUESTIONS)
    monkeypatch.setattr(cohort, "MAX_ROSTER_BYTES", 100)
    with pytest.raises(cohort.RosterError, match="over 100 bytes"):
        cohort.read_roster(roster, QUESTIONS)
    with pytest.raises(cohort.RosterError, match="over 100 bytes"):  # endless: read only to the bound
        cohort.read_roster(Path("/dev/zero"), QUESTIONS)


def test_a_spreadsheets_byte_order_mark_and_header_spellings_are_read(tmp_path):
    roster = tmp_path / "roster.csv"
    roster.write_text("\ufeffStudent-ID,Full Name,E-mail,Backbone\r\ns1,Sam,s@example.edu,resnet34\r\n\r\n")
    students, failures = cohort.read_roster(roster, QUESTIONS)
    assert failures == []
    (student,) = students
    assert (student.row, student.student_id, student.name, student.email) == (2, "s1", "Sam", "s@example.edu")
    assert student.overrides == {"backbone": "resnet34"}


def snapshot(tmp_path: Path) -> Path:
    """A copy of the template as it is now."""
    return Path(
        shutil.copytree(
            TEMPLATE_DIR,
            tmp_path / "template",
            ignore=shutil.ignore_patterns(
                ".git", ".venv", "build", "site", "__pycache__", ".pytest_cache", ".ruff_cache"
            ),
        )
    )


def template_repo(tmp_path: Path) -> Path:
    """A git repository holding a copy of the template (cruft follows templates by commit)."""
    repo = snapshot(tmp_path)
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "template v1")
    return repo


def test_update_brings_a_template_change_keeps_edits_and_reports_a_conflict(tmp_path):
    repo = template_repo(tmp_path)
    rows = [["u1", "Una", "u@example.edu", "", "", "", ""], ["u2", "Uwe", "w@example.edu", "", "", "", ""]]
    roster = write_roster(tmp_path / "roster.csv", rows, HEADER)
    out = tmp_path / "students"
    assert run_cohort(roster, out, "--git", template=repo).returncode == 0

    # Una edits her config; Uwe edits the README's last line, which the template changes too.
    una, uwe = out / "dogs-u1", out / "dogs-u2"
    config = una / "config.toml"
    config.write_text(config.read_text().replace("\nepochs = 5\n", "\nepochs = 12\n"))
    git(una, "commit", "-q", "-am", "more epochs")
    last = (uwe / "README.md").read_text().rstrip("\n").splitlines()[-1]
    (uwe / "README.md").write_text((uwe / "README.md").read_text().replace(last, "Uwe's own last line"))
    git(uwe, "commit", "-q", "-am", "my README")
    readme = repo / "{{cookiecutter.project_slug}}" / "README.md"
    readme.write_text(readme.read_text().replace(last, last + "\n\nTemplate v2: a new closing section."))
    git(repo, "commit", "-q", "-am", "template v2")

    result = run_cohort(roster, out, "--update", "--git", template=repo)
    rows = summary(out)
    assert result.returncode == 1, result.stderr  # a conflict needs a person; the cohort still ran
    assert rows[2]["status"] == "updated"
    assert "Template v2: a new closing section." in (una / "README.md").read_text()
    assert read_config(una)["hyperparameters"]["epochs"] == 12, "the student's edit must survive"
    assert git(una, "status", "--porcelain") == ""  # --git commits the update
    assert rows[3]["status"] == "conflict" and "README.md" in rows[3]["reason"]

    again = run_cohort(roster, out, "--update", template=repo)
    assert summary(out)[2]["status"] == "up-to-date", again.stderr


@pytest.mark.slow
def test_check_runs_every_projects_check_into_one_class_table(tmp_path):
    """--check: one class table of every roster row (the one that never rendered too), with each
    project's check and hand-in, the projects checked side by side."""
    rows = [
        ["c1", "Cai", "c@example.edu", "", "", "", ""],
        ["c2", "Cleo", "d@example.edu", "", "", "", ""],
        ["c3", "Cy", "e@example.edu", "", "", "ten", ""],  # refused by the template: no project
    ]
    roster = write_roster(tmp_path / "roster.csv", rows, HEADER)
    out = tmp_path / "students"
    assert run_cohort(roster, out).returncode == 1  # row 4 failed
    (out / "dogs-c2" / "inference" / "inference.py").write_text("def model_fn(:\n")
    (out / "dogs-c1" / "WRITEUP.md").write_text("# Write-up\n\nInsights: TODO\n")
    result = run_cohort(roster, out, "--check", "--fast")
    assert result.returncode == 1, result.stderr
    with (out / "class-checks.csv").open(newline="") as file:
        table = {row["row"]: row for row in csv.DictReader(file)}
    cai, cleo, cy = table["2"], table["3"], table["4"]
    assert list(table) == ["2", "3", "4"]
    assert (cai["name"], cleo["name"], cy["name"]) == ("Cai", "Cleo", "Cy")
    assert cai["check result"] == "pass" and cai["config"] == "pass"
    assert cleo["check result"] == "fail"
    assert cleo["inference/inference.py"] == "fail"
    assert cleo["failed checks"].startswith("inference/inference.py: SyntaxError")
    assert cleo["train --local"] == "skip"
    assert (cy["status"], cy["check result"], cy["handin"]) == ("failed", "no project", "no project")
    assert cy["reason"].startswith("num_classes: 'ten' must be")
    # The hand-in, from each project's own `handin`: an untouched render is incomplete, and says why.
    assert cai["handin"] == cleo["handin"] == "incomplete"
    assert "train_and_deploy.ipynb: not executed" in cleo["handin missing"]
    assert "WRITEUP.md: missing" in cleo["handin missing"]
    assert "WRITEUP.md: placeholders left: 'TODO'" in cai["handin missing"]
    assert "screenshots/endpoint.png: missing" in cai["handin missing"]
    assert "Cy" in result.stderr and "no id" not in result.stderr


def _fake_python(path: Path, label: str) -> str:
    """An executable standing in for an environment's Python: prints one check record naming itself and
    the command it was given (`-m <package> check ...`)."""
    path.write_text(
        "#!/bin/sh\n"
        f'printf \'{{"name": "which", "status": "pass", "seconds": 0, "detail": "{label} %s"}}\\n\' "$*"\n'
    )
    path.chmod(0o755)
    return str(path)


def test_each_project_is_checked_with_the_python_of_its_sdk_generation(tmp_path):
    """A v3 project runs under the v3 environment's Python, a v2 one under v2's; without a v3 Python a v3
    project's check and hand-in fail in one line saying what to give (not the SDK mismatch inside)."""
    projects = {}
    for generation in ("v2", "v3"):
        project = tmp_path / f"dogs-{generation}"
        project.mkdir()
        (project / "config.toml").write_text(f'[aws]\nsagemaker_sdk = "{generation}"\n')
        (project / cohort.ANSWERS_FILE).write_text(json.dumps({"cookiecutter": {"package_name": "dogs"}}))
        projects[generation] = project
    # A config.toml that cannot be read: the answers record says the generation.
    broken = tmp_path / "dogs-broken"
    broken.mkdir()
    (broken / "config.toml").write_text("[aws\n")
    (broken / cohort.ANSWERS_FILE).write_text(json.dumps({"cookiecutter": {"sagemaker_sdk": "v3"}}))
    assert [cohort.sdk_generation_of(p) for p in (*projects.values(), broken, tmp_path)] == [
        "v2",
        "v3",
        "v3",
        "v2",
    ]

    pythons = {"v2": _fake_python(tmp_path / "py2", "v2-env"), "v3": _fake_python(tmp_path / "py3", "v3-env")}
    for generation, project in projects.items():
        row = cohort.RowResult(2, "s", str(project), cohort.CREATED)
        checked = cohort.check_student(cohort.CheckJob(row, True, 30, pythons))
        assert [record["detail"] for record in checked.checks] == [
            f"{generation}-env -m dogs check --json --fast"
        ]
        assert checked.handin[0]["detail"] == f"{generation}-env -m dogs handin --json --offline"

    row = cohort.RowResult(2, "s", str(projects["v3"]), cohort.CREATED)
    checked = cohort.check_student(cohort.CheckJob(row, True, 30, {"v2": pythons["v2"], "v3": None}))
    (record,) = checked.checks
    assert (
        record["status"] == "fail"
        and "--v3-python" in record["detail"]
        and "SDK_V3_PYTHON" in record["detail"]
    )
    assert cohort.check_outcome(checked)[0] == "fail"
