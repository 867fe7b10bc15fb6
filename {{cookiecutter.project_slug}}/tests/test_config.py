"""config.toml is checked against config/schema.py: every command refuses an invalid edit in one line."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import itertools
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import tiny_args

PROJECT_ROOT = Path(__file__).resolve().parents[1]
PACKAGE = next(p.parent.parent.name for p in (PROJECT_ROOT / "src").glob("*/config/__init__.py"))
config_module = __import__(f"{PACKAGE}.config", fromlist=["ProjectConfig"])
cli = __import__(f"{PACKAGE}.cli", fromlist=["main"])
schema = __import__(f"{PACKAGE}.config.schema", fromlist=["parse"])
aws_tables = __import__(f"{PACKAGE}.config.aws_tables", fromlist=["PYTORCH_IMAGES"])
validation = __import__(f"{PACKAGE}.config.validation", fromlist=["value_problem"])

COMMANDS = [
    ["data", "upload", "--dry-run"],
    ["tune", "--dry-run"],
    ["train", "--dry-run"],
    ["deploy", "--dry-run"],
    ["cost"],
    ["status"],
    ["teardown", "--dry-run", "--yes"],
    ["iam-policy"],
    ["predict", "--dry-run", "dog.jpg"],
]
EDITS = {
    "lr is text": ("lr = ", 'lr = "fast"\n#', '[hyperparameters] lr = "fast": must be a number'),
    "typo'd key": ("epochs = ", "epochz = ", "[hyperparameters] epochz: is not a known key"),
    "unknown rule": ("rules = [", 'rules = ["loud_rule", ', "[debugger] rules = "),
    "unknown evaluation": (
        'evaluation = "',
        'evaluation = "often" #"',
        '[debugger] evaluation = "often": must be',
    ),
    "missing key": ("num_classes = ", "# num_classes = ", "[model] num_classes: is missing"),
}


def edited_project(tmp_path: Path, old: str, new: str) -> Path:
    project = tmp_path / "project"
    project.mkdir()
    text = (PROJECT_ROOT / "config.toml").read_text(encoding="utf-8")
    assert old in text
    (project / "config.toml").write_text(text.replace(old, new, 1), encoding="utf-8")
    for folder in ("classifier", "training", "inference"):
        shutil.copytree(PROJECT_ROOT / folder, project / folder)
    return project


def test_the_rendered_config_fits_the_schema() -> None:
    config = config_module.ProjectConfig.load(PROJECT_ROOT)
    assert config.settings.model.backbone in schema.BACKBONES
    assert config.settings.tuning.max_jobs == config.section("tuning")["max_jobs"]
    assert config.settings.hyperparameters.lr == config.hyperparameters["lr"]


@pytest.mark.parametrize("edit", sorted(EDITS))
def test_load_names_file_key_value_and_what_is_allowed(tmp_path: Path, edit: str) -> None:
    old, new, words = EDITS[edit]
    project = edited_project(tmp_path, old, new)
    with pytest.raises(config_module.ConfigError) as raised:
        config_module.ProjectConfig.load(project)
    message = str(raised.value)
    assert message.startswith(str(project / "config.toml") + ": ")
    assert words in message and "\n" not in message


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c))
def test_every_command_refuses_an_invalid_config_in_one_line(tmp_path: Path, command: list[str]) -> None:
    project = edited_project(tmp_path, *EDITS["lr is text"][:2])
    (project / "dog.jpg").write_bytes(b"not read: the config is refused first")
    command = [str(project / part) if part == "dog.jpg" else part for part in command]
    result = CliRunner().invoke(cli.main, ["--project", str(project), *command], catch_exceptions=False)
    assert result.exit_code != 0
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("Error: ") and "[hyperparameters] lr" in lines[-1], result.output
    assert "Traceback" not in result.output


def test_optional_tables_and_ranges_of_any_hyperparameter_are_allowed() -> None:
    document = config_module.ProjectConfig.load(PROJECT_ROOT).data
    document = {**document, "environment": {"MY_FLAG": "1"}, "prices": {"ml.g6.xlarge": 1.0}}
    momentum = {"type": "continuous", "min": 0.5, "max": 0.99}
    document["tuning"] = {**document["tuning"], "ranges": {"momentum": momentum}}
    assert schema.validate(document) == []
    document["tuning"]["ranges"] = {"momentun": {"type": "continuous", "min": 0.5, "max": 0.99}}
    assert "tunes no hyperparameter" in schema.validate(document)[0].text()


def _installed_sdk() -> tuple[str, object]:
    """The installed SDK's generation and its image_uris module (v3 keeps it in sagemaker-core)."""
    try:
        generation = "v" + importlib.metadata.version("sagemaker").split(".")[0]
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("no SageMaker SDK installed")
    if generation == "v3":
        return generation, pytest.importorskip("sagemaker.core.image_uris")
    return generation, pytest.importorskip("sagemaker.image_uris")


def test_the_schema_regions_and_images_are_what_the_sdk_serves() -> None:
    """Every image the installed SDK's generation may pick resolves, on a GPU and a CPU type; the
    defaults in every region (but where the schema says an image is not there yet, and it is not)."""
    generation, image_uris = _installed_sdk()
    for scope, versions in aws_tables.PYTORCH_IMAGES[generation].items():
        for version, py_versions in versions.items():
            for py_version, instance_type in itertools.product(
                py_versions, ("ml.g4dn.xlarge", "ml.m5.large")
            ):
                uri = image_uris.retrieve(
                    aws_tables.sdk_image_framework(version),
                    "us-east-1",
                    version=version,
                    py_version=py_version,
                    instance_type=instance_type,
                    image_scope=scope,
                )
                assert f":{version}" in uri, uri
    for region in aws_tables.SAGEMAKER_REGIONS:
        for scope in ("training", "inference"):
            version, py_version = aws_tables.newest_image(generation, scope, region)
            assert aws_tables.image_in_region(scope, version, region)
            image_uris.retrieve(
                aws_tables.sdk_image_framework(version),
                region,
                version=version,
                py_version=py_version,
                instance_type="ml.m5.large",
                image_scope=scope,
            )
    for (scope, version), regions in aws_tables.PYTORCH_IMAGE_NOT_IN_REGIONS.items():
        if version in aws_tables.PYTORCH_IMAGES[generation][scope]:
            with pytest.raises(ValueError, match="region"):
                image_uris.retrieve(
                    aws_tables.sdk_image_framework(version), regions[0], version=version, image_scope=scope
                )


def test_the_sdk_generations_differ_only_by_the_newer_images() -> None:
    """v3 knows every image v2 does, with the same Python; the default is each generation's newest."""
    for scope, v2_images in aws_tables.PYTORCH_IMAGES["v2"].items():
        v3_images = aws_tables.PYTORCH_IMAGES["v3"][scope]
        assert {v: v3_images[v] for v in v2_images} == v2_images
    assert aws_tables.newest_image("v2", "training") == ("2.8.0", "py312")
    assert aws_tables.newest_image("v3", "training") == ("2.14", "py312")
    assert aws_tables.newest_image("v3", "training", "us-gov-west-1") == ("2.13", "py312")
    assert (
        aws_tables.newest_image("v3", "inference")
        == aws_tables.newest_image("v2", "inference")
        == ("2.6.0", "py312")
    )


def test_rule_sets_and_image_suffixes_are_defined_once(training) -> None:
    # The in-job rules (training/rules.py) know exactly the schema's rule names.
    rules = training("rules")
    assert set(rules.KNOWN_RULES) == set(schema.KNOWN_RULES)
    assert set(config_module.ProjectConfig.load(PROJECT_ROOT).section("debugger")["rules"]) <= set(
        schema.KNOWN_RULES
    )
    assert ".tif" in schema.IMAGE_SUFFIXES


def test_a_rule_between_keys_names_both() -> None:
    document = config_module.ProjectConfig.load(PROJECT_ROOT).data
    document["tuning"] = {**document["tuning"], "max_parallel_jobs": document["tuning"]["max_jobs"] + 1}
    (problem,) = schema.validate(document)
    assert problem.text().startswith("[tuning] max_parallel_jobs = ")
    assert "must not exceed [tuning] max_jobs" in problem.text()


# --- values TOML allows that no job can run: each refused in one short line naming the key -----------

INTEGER_RANGE = '\n[tuning.ranges.epochs]\ntype = "integer"\nmin = 1\nmax = {}\n'
UNRUNNABLE = {
    "integer range max = inf": (
        INTEGER_RANGE.format("inf"),
        "[tuning.ranges.epochs] max = inf: must be a finite",
    ),
    "integer range max = nan": (
        INTEGER_RANGE.format("nan"),
        "[tuning.ranges.epochs] max = nan: must be a finite",
    ),
    "integer range max = 1e309": (INTEGER_RANGE.format("1e309"), "[tuning.ranges.epochs] max = inf"),
    "integer range max = 10**40": (
        INTEGER_RANGE.format("1" + "0" * 40),
        "[tuning.ranges.epochs] max = <a whole",
    ),
    "an array nested 100 deep": (
        '\n[tuning.ranges.epochs]\ntype = "categorical"\nvalues = ' + "[" * 100 + "1" + "]" * 100 + "\n",
        "[tuning.ranges.epochs] values = [[[...]]]: holds",
    ),
    "an array nested 5,000 deep": (
        "\n[environment]\nA = " + "[" * 5000 + "]" * 5000 + "\n",
        "nested too deeply",
    ),
    "an integer of 5,000 digits": (
        "\n[environment]\nA = " + "9" * 5000 + "\n",
        "holds a value Python cannot",
    ),
    "environment value of 600 characters": ('\n[environment]\nA = "' + "x" * 600 + '"\n', "longer than 512"),
    "environment value inf": ("\n[environment]\nA = -inf\n", "[environment] A = -inf: must be a finite"),
    "price of inf": ('\n[prices]\n"ml.m5.large" = inf\n', "at most 10000"),
}


def with_tail(tmp_path: Path, tail: str) -> Path:
    """The rendered config.toml with `tail` appended (into the last table, or tables of its own)."""
    project = edited_project(tmp_path, "[prices]", "[prices]")
    config_file = project / "config.toml"
    text = config_file.read_text(encoding="utf-8")
    if tail.startswith("\n[prices]"):  # a table that exists: replace it
        text = text[: text.index("[prices]")]
    config_file.write_text(text + tail, encoding="utf-8")
    return project


@pytest.mark.parametrize("case", sorted(UNRUNNABLE))
def test_an_unrunnable_value_is_one_short_line(tmp_path: Path, case: str) -> None:
    tail, words = UNRUNNABLE[case]
    project = with_tail(tmp_path, tail)
    with pytest.raises(config_module.ConfigError) as raised:
        config_module.ProjectConfig.load(project)
    message = str(raised.value)
    assert words in message, message
    assert "\n" not in message and len(message) < 600, message


def test_the_cli_refuses_an_infinite_range_in_one_line(tmp_path: Path) -> None:
    project = with_tail(tmp_path, INTEGER_RANGE.format("inf"))
    result = CliRunner().invoke(cli.main, ["--project", str(project), "tune", "--dry-run"])
    assert result.exit_code != 0 and "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "[tuning.ranges.epochs] max = inf" in lines[0], result.output


def test_a_config_file_over_a_megabyte_is_refused_unread(tmp_path: Path) -> None:
    project = with_tail(tmp_path, "\n# " + "x" * config_module.MAX_CONFIG_BYTES + "\n")
    with pytest.raises(config_module.ConfigError, match="is over 1024 KB"):
        config_module.ProjectConfig.load(project)


def edited_document(**tables: dict) -> dict:
    document = config_module.ProjectConfig.load(PROJECT_ROOT).data
    for name, changes in tables.items():
        document[name] = {**document.get(name, {}), **changes}
    return document


FULL_RESNET = {"finetune": "full", "backbone": "resnet50"}


@pytest.mark.parametrize(
    ("tables", "words"),
    [
        ({"tuning": {"ranges": {}}}, "[tuning] ranges: has no range"),
        ({"tuning": {"objective_type": "Maximize"}}, "must be Minimize for [tuning] objective_metric_name"),
        ({"aws": {"bucket": "sthree-course"}}, "names starting 'sthree-' are reserved"),
        ({"aws": {"bucket": "course--table-s3"}}, "names ending '--table-s3' are reserved"),
        ({"aws": {"bucket": "10.0.0.1"}}, "IP address"),
        ({"data": {"url": "s3://amzn-s3-demo-data/dogs.zip"}}, "[data] url"),
        ({"images": {"training": {"framework_version": "2.1.0", "py_version": "py310"}}}, "older than 2.3.0"),
        ({"hyperparameters": {"lr": 1e300}}, "at most 10"),
        (
            {"hyperparameters": {"feature_cache": True}, "model": {"finetune": "full"}},
            '[hyperparameters] feature_cache = true: needs [model] finetune = "head"',
        ),
        (
            {"hyperparameters": {"batch_size": 1}, "model": FULL_RESNET},
            '[hyperparameters] batch_size = 1: must be at least 2 with [model] finetune = "full" and '
            '[model] backbone = "resnet50"',
        ),
        (
            {
                "tuning": {"ranges": {"batch_size": {"type": "categorical", "values": [8, 1]}}},
                "model": FULL_RESNET,
            },
            "[tuning.ranges.batch_size] values = [8, 1]: must each be at least 2 with [model] finetune",
        ),
        (
            {
                "tuning": {"ranges": {"batch_size": {"type": "integer", "min": 1, "max": 64}}},
                "model": FULL_RESNET,
            },
            "[tuning.ranges.batch_size] min = 1: must be at least 2 with [model] finetune",
        ),
    ],
)
def test_values_the_service_or_the_code_would_refuse_are_named(tables: dict, words: str) -> None:
    document = edited_document(**tables)
    problems = schema.validate(document)
    assert len(problems) == 1 and words in problems[0].text(), [p.text() for p in problems]
    config = config_module.ProjectConfig(root=PROJECT_ROOT, data=document)
    with pytest.raises(config_module.ConfigError, match="config.toml: "):
        config.settings  # noqa: B018 - what every command does first


def image_problems(generation: str, scope: str, version: str, py_version: str, region: str) -> list[str]:
    """What the schema says of an [images.<scope>] table, with the SDK generation ([aws] sagemaker_sdk)
    and region that would resolve it."""
    image = schema.Image(framework_version=version, py_version=py_version, image_uri="")
    return [p.text() for p in image.problems_for(("images", scope), generation, region)]


@pytest.mark.parametrize("generation", aws_tables.SDK_GENERATIONS)
def test_every_supported_image_version_passes(generation: str) -> None:
    """The refusal is the minimum: every image the SDK generation serves from it on is accepted."""
    for scope, versions in aws_tables.PYTORCH_IMAGES[generation].items():
        minimum = aws_tables.version_tuple(aws_tables.MINIMUM_PYTORCH[scope])
        for version, py_versions in versions.items():
            problems = image_problems(generation, scope, version, py_versions[0], "us-east-1")
            assert (problems == []) is (aws_tables.version_tuple(version) >= minimum), (version, problems)
    # The document's own check is the same one (the default [aws] has no sagemaker_sdk: v2).
    image = {"framework_version": "2.3.0", "py_version": "py311", "image_uri": ""}
    assert schema.validate(edited_document(images={"training": image})) == []


def test_a_cuda_13_training_image_is_refused_on_a_v100_type() -> None:
    """PyTorch 2.9 and later GPU images are CUDA 13, which has no V100 code; 2.8 (CUDA 12.9) still has."""
    image = schema.Image(framework_version="2.10.0", py_version="py313", image_uri="")
    base = config_module.ProjectConfig.load(PROJECT_ROOT).settings
    v100 = dataclasses.replace(base.instances.training, type="ml.p3.2xlarge")
    newer = dataclasses.replace(
        base,
        images=dataclasses.replace(base.images, training=image),
        instances=dataclasses.replace(base.instances, training=v100),
    )
    assert [p.text() for p in newer._cuda_problems()] == [
        '[instances.training] type = "ml.p3.2xlarge": is a V100 (Volta) type, which the CUDA 13 image of '
        "[images.training] framework_version 2.10.0 cannot run on; choose ml.g4dn, ml.g5 or ml.p4d"
    ]
    cuda_12 = schema.Image(framework_version="2.8.0", py_version="py312", image_uri="")  # v2's default
    older = dataclasses.replace(newer, images=dataclasses.replace(base.images, training=cuda_12))
    assert list(older._cuda_problems()) == []


def test_an_image_the_sdk_generation_does_not_know_is_refused_naming_the_one_that_does() -> None:
    image = {"framework_version": "2.14", "py_version": "py312", "image_uri": ""}
    # The document pinned to SDK v2, whichever generation rendered it.
    on_v2 = edited_document(images={"training": image}, aws={"sagemaker_sdk": "v2"})
    (problem,) = schema.validate(on_v2)
    assert problem.text().startswith('[images.training] framework_version = "2.14": has no PyTorch training')
    assert "choose one of 2.3.0" in problem.text() and "(SageMaker SDK v3 knows it)" in problem.text()
    assert image_problems("v3", "training", "2.14", "py312", "us-gov-west-1") == [
        '[images.training] framework_version = "2.14": has no PyTorch training image in [aws] region '
        "us-gov-west-1 yet; choose 2.13 or another region"
    ]
    assert image_problems("v3", "training", "2.10.0", "py312", "us-east-1") == [
        '[images.training] py_version = "py312": has no PyTorch 2.10.0 training image; '
        "[images.training] framework_version 2.10.0 comes with py313"
    ]


@pytest.mark.parametrize(
    ("override", "words"),
    [
        ("lr=NaN", "lr = nan: must be a number greater than 0"),
        ("lr=1e999", "lr = inf: must be"),
        ("epochs=100000000000000000000", "must be a whole number from 1 to 1000"),
        ("batch_size=[[[1]]]", "batch_size = [[[...]]]: must be"),
        ("optimizer=adm", "must be one of adamw, sgd"),
        ("backbone=resnet9", "must be one of resnet18"),
    ],
)
def test_a_hyperparameter_override_is_held_to_the_schema(override: str, words: str) -> None:
    """`train --hp` values reach the job as config.toml's do: refused in one line, before any request."""
    arguments = ["--project", str(PROJECT_ROOT), "train", "--dry-run", "--hp", override]
    result = CliRunner().invoke(cli.main, arguments)
    assert result.exit_code == 2 and "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines[-1].startswith("Error: Invalid value for --hp: ") and words in lines[-1], result.output


# --- a batch of one image: BatchNorm cannot train on it ---------------------------------------------------


def test_the_schemas_batch_norm_backbones_are_those_whose_networks_have_batch_norm() -> None:
    """The schema (standard library only) names them; the networks themselves say which they are."""
    from classifier import backbones

    having = {name for name in schema.BACKBONES if backbones.has_batch_norm(name)}
    assert having == set(schema.BATCH_NORM_BACKBONES)
    assert "convnext_tiny" not in having and "resnet18" in having  # the check tells them apart


@pytest.mark.parametrize("backbone", schema.BACKBONES)
@pytest.mark.parametrize("finetune", schema.FINETUNE_MODES)
def test_a_batch_of_one_is_refused_exactly_where_batch_norm_trains(backbone: str, finetune: str) -> None:
    model = {"backbone": backbone, "finetune": finetune}
    refused = finetune == "full" and backbone != "convnext_tiny"  # convnext normalises with LayerNorm
    one = schema.validate(edited_document(hyperparameters={"batch_size": 1}, model=model))
    assert [problem.path for problem in one] == ([("hyperparameters", "batch_size")] if refused else [])
    assert schema.validate(edited_document(hyperparameters={"batch_size": 2}, model=model)) == []


def test_train_hp_refuses_a_batch_of_one_for_full_finetuning_in_one_line() -> None:
    overrides = ["--hp", "backbone=resnet50", "--hp", "finetune=full", "--hp", "batch_size=1"]
    result = CliRunner().invoke(cli.main, ["--project", str(PROJECT_ROOT), "train", "--dry-run", *overrides])
    assert result.exit_code == 2 and "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    refusal = 'batch_size = 1: must be at least 2 with finetune = "full" and backbone = "resnet50"'
    assert lines[-1].startswith(f"Error: Invalid value for --hp: {refusal}"), lines


@pytest.mark.parametrize(("backbone", "refused"), [("mobilenet_v3_large", True), ("convnext_tiny", False)])
def test_train_models_argument_check_refuses_a_batch_of_one_where_batch_norm_trains(
    training, tmp_path: Path, backbone: str, refused: bool
) -> None:
    train_model = training("train_model")
    arguments = ("--backbone", backbone, "--finetune", "full", "--batch_size", "1")
    args = tiny_args(train_model, tmp_path / "data", tmp_path / "run", *arguments)
    if not refused:
        train_model.check_args(args)
        return
    with pytest.raises(SystemExit) as stopped:
        train_model.check_args(args)
    message = str(stopped.value)
    assert message.startswith(f"batch_size 1 cannot train {backbone} with finetune=full"), message
    assert "\n" not in message


def with_rule_parameters(parameters: dict) -> dict:
    document = config_module.ProjectConfig.load(PROJECT_ROOT).data
    rules = list(schema.SAGEMAKER_DEBUGGER_RULES)
    document["debugger"] = {**document["debugger"], "rules": rules, "rule_parameters": parameters}
    return document


def test_rule_parameters_are_the_in_job_rules_parameters(training) -> None:
    rules = training("rules")
    for rule, parameters in schema.RULE_PARAMETERS.items():
        defaults = rules.settable_parameters(rule)
        assert set(parameters) == set(defaults), rule
        # Every AWS default passes the schema (mode's default, None: "not passed", is no value to set).
        for name, value in defaults.items():
            hint, spec = parameters[name]
            # Of the schema's type, so that whatever the schema accepts the job's own check accepts too.
            assert value is None or type(value) is hint, (rule, name, value)
            assert value is None or validation.value_problem(value, hint, spec) is None, (rule, name, value)
    document = with_rule_parameters({"loss_not_decreasing": {"mode": "TRAIN", "num_steps": 20}})
    assert schema.validate(document) == []


@pytest.mark.parametrize(
    ("parameters", "words"),
    [
        (
            {"overfitt": {"patience": 2}},
            "[debugger.rule_parameters] overfitt: is no debugger rule; parameters",
        ),
        (
            {"overfit": {"patient": 2}},
            "overfit] patient = 2: is not a parameter of overfit; it takes start_step",
        ),
        ({"overfit": {"patience": 0}}, "overfit] patience = 0: must be"),
        ({"loss_not_decreasing": {"mode": "PREDICT"}}, 'mode = "PREDICT": must be one of'),
        ({"loss_not_decreasing": {"diff_percent": 100.5}}, "diff_percent = 100.5: must be"),
        ({"exploding_tensor": {"only_nan": "yes"}}, 'only_nan = "yes": must be true or false'),
        ({"LowGPUUtilization": {"window": 5}}, "LowGPUUtilization: is no debugger rule"),
    ],
)
def test_bad_rule_parameters_are_named(parameters: dict, words: str) -> None:
    problems = schema.validate(with_rule_parameters(parameters))
    assert len(problems) == 1 and words in problems[0].text(), [p.text() for p in problems]


def test_parameters_of_a_rule_not_listed_are_refused() -> None:
    document = with_rule_parameters({"overfit": {"patience": 2}})
    document["debugger"]["rules"] = ["loss_not_decreasing"]
    (problem,) = schema.validate(document)
    assert "sets parameters of a rule that [debugger] rules does not list" in problem.text()
