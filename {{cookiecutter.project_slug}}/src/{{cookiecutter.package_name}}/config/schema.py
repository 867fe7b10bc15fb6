"""The one schema of config.toml: every key, its type and what it allows, one dataclass per table.

Two readers share this file, so each rule is defined here once:

- the template's render hook loads it by path and validates the config the answers would produce;
- the package (`config/__init__.py`) validates config.toml with it when a command loads the config.

What AWS accepts (regions, name patterns, the PyTorch images) is aws_tables.py; how a key is
declared and checked (`setting`, `Spec`, `Problem`) is validation.py.

The choices the containers also need (backbones, optimisers, image suffixes, which network an endpoint
serves) are classifier/choices.py's; this file imports them and checks config.toml against them.
Standard library only (it runs in the render hook, whose environment has cookiecutter and nothing more).

Adding a key is one line in the table's dataclass below, e.g. in `Debugger`:

    evaluation: str = setting("in_job", choices=("in_job", "sagemaker", "both"))

A field without a default is required; with one, older config files that lack it still load.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import re
import sys
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

from .aws_tables import (
    AWS_PYTORCH_IMAGE_RE,
    BUCKET_RE,
    BUCKET_RESERVED_PREFIXES,
    BUCKET_RESERVED_SUFFIXES,
    CUDA_13_TRAINING,
    DEFAULT_SDK,
    ENDPOINT_SERVERS,
    ENV_NAME_RE,
    EXPERIMENT_NAME_RE,
    IMAGE_URI_RE,
    INSTANCE_TYPE_RE,
    METRIC_NAME_RE,
    MINIMUM_PYTORCH,
    MINIMUM_PYTORCH_REASON,
    MLFLOW_ARN_RE,
    OWNER_RE,
    PREFIX_RE,
    PY_VERSION_RE,
    PYTORCH_IMAGES,
    REGION_RE,
    ROLE_ARN_RE,
    SAGEMAKER_REGIONS,
    SDK_GENERATIONS,
    SERVERLESS_MEMORY_SIZES,
    URL_RE,
    VERSION_RE,
    VOLTA_FAMILIES,
    image_in_region,
    instance_type_problem,
    partition,
    pytorch_version,
    version_tuple,
)
from .validation import (
    ABSENT,
    REF0,
    REF1,
    Problem,
    SchemaError,
    Spec,
    build,
    regex_with_one_group,
    setting,
    single_line,
    value_problem,
    without_none,
)


def _import_shared_choices() -> None:
    """Register this project's `classifier/` (two folders up) as the package `classifier`.

    An installed console script has only src/ on sys.path, and the render hook loads this file from the
    template, where another project's `classifier` could be importable: both must read this project's.
    Registered as the package it is, so `classifier.choices` is one module however it is reached.
    """
    folder = Path(__file__).resolve().parents[3] / "classifier"
    if "classifier" in sys.modules or not (folder / "choices.py").is_file():
        return  # imported already (pytest, `python -m`, the containers), or left to the import below
    spec = importlib.util.spec_from_file_location(
        "classifier", folder / "__init__.py", submodule_search_locations=[str(folder)]
    )
    assert spec is not None and spec.loader is not None, folder
    package = importlib.util.module_from_spec(spec)
    sys.modules["classifier"] = package
    spec.loader.exec_module(package)


_import_shared_choices()

from classifier.choices import (  # noqa: E402
    BACKBONES,
    FINETUNE_MODES,
    OPTIMIZERS,
    QUANTIZE_SETTINGS,
    SCHEDULERS,
)

# The package reads these through the schema (config's `schema`), which makes `classifier` importable.
from classifier.choices import IMAGE_SUFFIXES as IMAGE_SUFFIXES  # noqa: E402
from classifier.choices import readable_class_name as readable_class_name  # noqa: E402
from classifier.choices import resize_size_for as resize_size_for  # noqa: E402
from classifier.choices import serving_precision as serving_precision  # noqa: E402

# --- the names the project offers ------------------------------------------------------------------

# The backbones (classifier/choices.py) with BatchNorm layers (convnext_tiny normalises with LayerNorm).
# BatchNorm in training mode cannot normalise a batch of one image, and with finetune = "full" it trains:
# there, batch_size must be at least 2. The render's tests check this list against the networks themselves.
BATCH_NORM_BACKBONES = ("resnet18", "resnet34", "resnet50", "efficientnet_b0", "mobilenet_v3_large")
# The rules the project judges, by the names of SageMaker's built-in rules: debugger rules as the SDK's
# `rule_configs` functions, profiler rules as its classes. DataLoadingBottleneck is judged in the job only.
SAGEMAKER_DEBUGGER_RULES = (
    "vanishing_gradient",
    "overfit",
    "overtraining",
    "poor_weight_initialization",
    "loss_not_decreasing",
    "exploding_tensor",
    "dead_relu",
    "class_imbalance",
)
SAGEMAKER_PROFILER_RULES = ("LowGPUUtilization", "CPUBottleneck", "ProfilerReport")
IN_JOB_ONLY_RULES = ("DataLoadingBottleneck",)
KNOWN_RULES = (*SAGEMAKER_DEBUGGER_RULES, *SAGEMAKER_PROFILER_RULES, *IN_JOB_ONLY_RULES)
_STANDARD_RULES = (*SAGEMAKER_DEBUGGER_RULES[:5], "LowGPUUtilization", "ProfilerReport")
# The `rule_set` answer, expanded at render time into config.toml's [debugger] rules list.
RULE_SETS: dict[str, tuple[str, ...]] = {
    "standard": _STANDARD_RULES,
    "minimal": ("loss_not_decreasing", "ProfilerReport"),
    "extended": (*_STANDARD_RULES, "exploding_tensor", "dead_relu", "class_imbalance", "CPUBottleneck"),
    "none": (),
}
RULE_SET_NAMES = tuple(RULE_SETS)
# Where the rules are judged: in the training job itself (any account), by SageMaker Debugger's rule jobs
# (accounts that still have Debugger), or both.
RULE_EVALUATIONS = ("in_job", "sagemaker", "both")
LR_SCALINGS = ("Logarithmic", "Linear", "ReverseLogarithmic", "Auto")
OBJECTIVE_TYPES = ("Minimize", "Maximize")
EARLY_STOPPING_TYPES = ("Off", "Auto")
RANGE_TYPES = ("continuous", "integer", "categorical")
# The only system-monitor intervals SageMaker's profiler accepts.
PROFILER_INTERVALS = (100, 200, 500, 1000, 5000, 60000)


def smallest_batch_size(finetune: str, backbone: str) -> int:
    """The smallest batch size training `backbone` in `finetune` mode can take: 2 where BatchNorm
    trains (it cannot normalise a batch of one image), else 1."""
    return 2 if finetune == "full" and backbone in BATCH_NORM_BACKBONES else 1


def batch_size_problem(batch_size: int, finetune: str, backbone: str) -> str | None:
    """What is wrong with `batch_size` for training `backbone` in `finetune` mode, in one line naming
    the keys (as `train --hp` takes them); None when it can train."""
    smallest = smallest_batch_size(finetune, backbone)
    if batch_size >= smallest:
        return None
    return (
        f'batch_size = {batch_size}: must be at least {smallest} with finetune = "{finetune}" and '
        f'backbone = "{backbone}" (BatchNorm cannot train on one image)'
    )


# --- the tables of config.toml (in file order) --------------------------------------------------------


def _split_ratios(value: tuple[float, ...]) -> str | None:
    if len(value) != 3 or any(r < 0 for r in value) or abs(sum(value) - 1) > 1e-6 or value[0] <= 0:
        return "must be three fractions for train, valid, test that add up to 1 (e.g. [0.8, 0.1, 0.1])"
    return None


def _relative_path(value: str) -> str | None:
    parts = value.replace("\\", "/").split("/")
    if not value or value.startswith("/") or ".." in parts:
        return "must be a folder inside the project (a relative path without '..')"
    return None


def _dataset_url(value: str) -> str | None:
    """An s3:// URL names a bucket S3 accepts and an object in it (what `data prepare` downloads)."""
    if not value.startswith("s3://"):
        return None
    bucket, _, key = value[len("s3://") :].partition("/")
    problem = bucket_name_problem(bucket)
    if problem:
        return f"names bucket {bucket!r}, which {problem}"
    if not key or key.endswith("/"):
        return "must name the zip object itself (s3://bucket/path/dataset.zip), not a bucket or folder"
    return None


@dataclass(frozen=True, kw_only=True)
class Project:
    name: str = setting(max_length=200, check=single_line)
    slug: str = setting(
        pattern=re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$"),
        max_length=64,
        describe="lowercase letters, digits and single '-', starting with a letter",
    )
    package: str = setting(
        pattern=re.compile(r"^[a-z][a-z0-9_]*$"),
        max_length=64,
        describe="lowercase letters, digits and '_', starting with a letter",
    )
    description: str = setting(max_length=200, check=single_line)
    # Who the AWS resources belong to (their `owner` tag; staff find and tear down by it); empty: the slug.
    owner: str = setting(
        "",
        pattern=OWNER_RE,
        empty_ok=True,
        describe="1-128 letters, digits and _.:/=+@- (no spaces), or empty",
    )


@dataclass(frozen=True, kw_only=True)
class Data:
    # Empty: no download; the user brings a folder (`data prepare path/to/images`).
    url: str = setting(
        pattern=URL_RE,
        empty_ok=True,
        max_length=2048,
        describe="an http(s):// or s3:// URL, or empty",
        check=_dataset_url,
    )
    local_dir: str = setting("data/prepared", check=_relative_path)
    split_ratios: tuple[float, ...] = setting((0.8, 0.1, 0.1), check=_split_ratios)
    split_seed: int = setting(0, minimum=0, maximum=2**32 - 1)


@dataclass(frozen=True, kw_only=True)
class Model:
    backbone: str = setting(choices=BACKBONES)
    num_classes: int = setting(minimum=2, maximum=100_000)
    image_size: int = setting(minimum=32, maximum=1024)
    finetune: str = setting(choices=FINETUNE_MODES)
    pretrained: bool = setting()


@dataclass(frozen=True, kw_only=True)
class Hyperparameters:
    """Passed to hpo.py and train_model.py as `--name value`; None: not set, the script's default."""

    epochs: int = setting(minimum=1, maximum=1000)
    batch_size: int = setting(minimum=1, maximum=4096)
    test_batch_size: int = setting(minimum=1, maximum=4096)
    lr: float = setting(above=0, maximum=10)
    optimizer: str | None = setting(None, choices=OPTIMIZERS)
    momentum: float | None = setting(None, minimum=0, maximum=1)
    weight_decay: float | None = setting(None, minimum=0, maximum=1)
    scheduler: str | None = setting(None, choices=SCHEDULERS)
    patience: int | None = setting(None, minimum=0, maximum=1000)
    min_delta: float | None = setting(None, minimum=0, maximum=1e6)
    seed: int | None = setting(None, minimum=0, maximum=2**32 - 1)
    num_workers: int | None = setting(None, minimum=-1, maximum=256)
    augment: bool | None = setting(None)
    feature_cache: bool | None = setting(None)
    pixel_cache_gb: float | None = setting(None, minimum=0, maximum=4096)
    class_weights: bool | None = setting(None)
    amp: bool | None = setting(None)
    quantize: str | None = setting(None, choices=QUANTIZE_SETTINGS)


Scalar = Union[int, float, str, bool]  # noqa: UP007 - get_type_hints needs a runtime union on 3.10


# What SageMaker's tuner takes: a categorical range lists at most 30 values.
MAX_CATEGORICAL_VALUES = 30


@dataclass(frozen=True, kw_only=True)
class Range:
    """`[tuning.ranges.<hyperparameter>]`: continuous/integer take min, max, scaling; categorical values."""

    type: str = setting(choices=RANGE_TYPES)
    min: int | float | None = setting(None)  # as written: an integer range keeps whole numbers
    max: int | float | None = setting(None)
    scaling: str = setting("Auto", choices=LR_SCALINGS)
    values: tuple[Scalar, ...] = setting(())

    def problems(self, path: tuple[str, ...]) -> Iterator[Problem]:
        if self.type == "categorical":
            if not self.values:
                yield Problem(path + ("values",), list(self.values), "must list at least one value")
            elif len(self.values) > MAX_CATEGORICAL_VALUES:
                yield Problem(
                    path + ("values",),
                    list(self.values),
                    f"lists {len(self.values)} values; the tuner takes {MAX_CATEGORICAL_VALUES} at most",
                )
            elif len(set(map(repr, self.values))) != len(self.values):
                yield Problem(path + ("values",), list(self.values), "lists a value twice")
            return
        for end in ("min", "max"):
            value = getattr(self, end)
            if value is None:
                yield Problem(path + (end,), ABSENT, f"is missing; a {self.type} range needs min and max")
            elif self.type == "integer" and value != int(value):
                yield Problem(path + (end,), value, "must be a whole number in an integer range")
        if self.min is None or self.max is None:
            return
        if self.min >= self.max:
            yield Problem(
                path + ("min",),
                self.min,
                "must be smaller than {0} " + f"({self.max:g})",
                refs=(path + ("max",),),
            )
        if "Logarithmic" in self.scaling and self.min <= 0:
            yield Problem(path + ("min",), self.min, f"must be greater than 0 with {self.scaling} scaling")
        if self.scaling == "ReverseLogarithmic" and self.type != "continuous":
            yield Problem(path + ("scaling",), self.scaling, "is for continuous ranges only (SageMaker)")
        elif self.scaling == "ReverseLogarithmic" and self.max >= 1:
            yield Problem(path + ("max",), self.max, "must be below 1 with ReverseLogarithmic scaling")


def objective_direction(metric_name: str) -> str | None:
    """Minimize for a metric whose name says loss or error, Maximize for accuracy; None for others."""
    name = metric_name.lower()
    words = set(re.split(r"[^a-z0-9]+", name))
    falls = "loss" in name or "error" in name or bool(words & {"err", "nll", "mse", "mae", "rmse"})
    rises = "accuracy" in name or bool(words & {"acc", "top1", "top5", "f1", "auc", "precision", "recall"})
    if falls != rises:  # a name that says both (or neither) is left to the user
        return "Minimize" if falls else "Maximize"
    return None


@dataclass(frozen=True, kw_only=True)
class Tuning:
    max_jobs: int = setting(minimum=1, maximum=500)
    max_parallel_jobs: int = setting(minimum=1, maximum=100)
    objective_metric_name: str = setting(pattern=METRIC_NAME_RE, describe="1-255 letters, digits and _:./=+-")
    objective_type: str = setting(choices=OBJECTIVE_TYPES)
    objective_metric_regex: str = setting(max_length=500, check=regex_with_one_group)
    early_stopping_type: str = setting(choices=EARLY_STOPPING_TYPES)
    ranges: dict[str, Range] = setting(default_factory=dict)

    def problems(self, path: tuple[str, ...]) -> Iterator[Problem]:
        if not self.ranges:
            yield Problem(
                path + ("ranges",),
                ABSENT,
                "has no range: the tuner needs at least one [tuning.ranges.<hyperparameter>] table "
                "(e.g. lr, with type, min, max)",
            )
        direction = objective_direction(self.objective_metric_name)
        if direction and direction != self.objective_type:
            why = "a loss or error falls" if direction == "Minimize" else "an accuracy rises"
            yield Problem(
                path + ("objective_type",),
                self.objective_type,
                f"must be {direction} for {REF0} {self.objective_metric_name} ({why} as the model improves)",
                refs=(path + ("objective_metric_name",),),
            )
        if self.max_parallel_jobs > self.max_jobs:
            yield Problem(
                path + ("max_parallel_jobs",),
                self.max_parallel_jobs,
                "must not exceed {0} " + f"({self.max_jobs})",
                refs=(path + ("max_jobs",),),
            )


def _known_rules(rules: tuple[str, ...]) -> str | None:
    unknown = [name for name in rules if name not in KNOWN_RULES]
    if unknown:
        return f"names unknown rules ({', '.join(unknown)}); choose from {', '.join(KNOWN_RULES)}"
    if len(set(rules)) != len(rules):
        return "names a rule twice"
    return None


# The parameters of each debugger rule that [debugger.rule_parameters.<rule>] may set, with what AWS's
# page allows ("Valid values"; training/'s rule functions hold the defaults; a test keeps the two in step).
# Regex and collection parameters are left out: the in-job recording names tensors by module.
RULE_PARAMETERS: dict[str, dict[str, tuple[type, Spec]]] = {
    "vanishing_gradient": {"threshold": (float, Spec(above=0))},
    "overfit": {
        "start_step": (int, Spec(minimum=0)),
        "patience": (int, Spec(minimum=1)),
        "ratio_threshold": (float, Spec(above=0)),
    },
    "overtraining": {
        "patience_train": (int, Spec(minimum=1)),
        "patience_validation": (int, Spec(minimum=1)),
        "delta": (float, Spec(minimum=0)),
    },
    "poor_weight_initialization": {
        "threshold": (float, Spec(above=0)),
        "distribution_range": (float, Spec(above=0)),
        "patience": (int, Spec(minimum=1)),
        "steps": (int, Spec(minimum=1)),
    },
    "loss_not_decreasing": {
        "num_steps": (int, Spec(minimum=1)),
        "diff_percent": (float, Spec(above=0, maximum=100)),
        "increase_threshold_percent": (float, Spec(above=0, maximum=100)),
        "mode": (str, Spec(choices=("EVAL", "TRAIN", "GLOBAL"))),
    },
    "exploding_tensor": {"only_nan": (bool, Spec())},
    "dead_relu": {
        "threshold_inactivity": (float, Spec(minimum=0, maximum=100)),
        "threshold_layer": (float, Spec(minimum=0, maximum=100)),
    },
    "class_imbalance": {
        "threshold_imbalance": (float, Spec(minimum=1)),
        "threshold_misprediction": (float, Spec(minimum=0, maximum=1)),
        "samples": (int, Spec(minimum=1)),
    },
}


@dataclass(frozen=True, kw_only=True)
class Debugger:
    rules: tuple[str, ...] = setting(check=_known_rules)
    evaluation: str = setting("both", choices=RULE_EVALUATIONS)
    train_save_interval: int = setting(minimum=1, maximum=1_000_000)
    eval_save_interval: int = setting(minimum=1, maximum=1_000_000)
    # Per rule, parameters over its AWS defaults, as SageMaker's Rule.sagemaker(rule_parameters=...) takes
    # them: [debugger.rule_parameters.loss_not_decreasing] mode = "TRAIN".
    rule_parameters: dict[str, dict[str, Scalar]] = setting(default_factory=dict)

    def problems(self, path: tuple[str, ...]) -> Iterator[Problem]:
        where = path + ("rule_parameters",)
        for rule, values in self.rule_parameters.items():
            if rule not in RULE_PARAMETERS:
                yield Problem(
                    where + (rule,),
                    ABSENT,
                    f"is no debugger rule; parameters can be set for {', '.join(RULE_PARAMETERS)}",
                )
                continue
            if rule not in self.rules:
                yield Problem(
                    where + (rule,),
                    ABSENT,
                    "sets parameters of a rule that {0} does not list",
                    refs=(path + ("rules",),),
                )
            known = RULE_PARAMETERS[rule]
            for name, value in values.items():
                if name not in known:
                    yield Problem(
                        where + (rule, name),
                        value,
                        f"is not a parameter of {rule}; it takes {', '.join(known)}",
                    )
                    continue
                hint, spec = known[name]
                message = value_problem(value, hint, spec)
                if message:
                    yield Problem(where + (rule, name), value, message)


@dataclass(frozen=True, kw_only=True)
class Profiler:
    system_monitor_interval_millis: int = setting(choices=PROFILER_INTERVALS)


@dataclass(frozen=True, kw_only=True)
class Tracking:
    # The MLflow App or tracking server the SageMaker jobs log to; empty: they install and log nothing.
    server_arn: str = setting(
        "",
        pattern=MLFLOW_ARN_RE,
        empty_ok=True,
        describe="the ARN of a SageMaker MLflow App or tracking server (arn:aws:sagemaker:<region>:"
        "<account>:mlflow-app/<id> or ...:mlflow-tracking-server/<name>), or empty",
    )
    # The experiment the runs are recorded in; empty: the project's slug.
    experiment: str = setting(
        "",
        pattern=EXPERIMENT_NAME_RE,
        empty_ok=True,
        describe="letters, digits and _ . / - (at most 256), or empty for the project's slug",
    )


def _region(value: str) -> str | None:
    if not REGION_RE.match(value):
        return "must be a region like us-east-1"
    if value not in SAGEMAKER_REGIONS:
        return "is not a region where the SageMaker SDK serves the PyTorch images (e.g. us-east-1, eu-west-1)"
    return None


def bucket_name_problem(value: str) -> str | None:
    """Why S3 refuses `value` as a bucket name; None when it takes it."""
    if not BUCKET_RE.match(value):
        return (
            "must be a bucket name (3-63 lowercase letters, digits, '.', '-'; starting and ending "
            "with a letter or digit)"
        )
    if ".." in value:
        return "is not a bucket name S3 accepts: it holds '..'"
    if re.match(r"^\d+\.\d+\.\d+\.\d+$", value):
        return "is not a bucket name S3 accepts: it has the form of an IP address"
    for prefix in BUCKET_RESERVED_PREFIXES:
        if value.startswith(prefix):
            return f"is not a bucket name S3 accepts: names starting {prefix!r} are reserved"
    for suffix in BUCKET_RESERVED_SUFFIXES:
        if value.endswith(suffix):
            return f"is not a bucket name S3 accepts: names ending {suffix!r} are reserved"
    return None


def _bucket(value: str) -> str | None:
    problem = bucket_name_problem(value) if value else None
    return f"{problem}, or empty for the session's default bucket" if problem else None


def _prefix(value: str) -> str | None:
    if not PREFIX_RE.match(value) or value.startswith("/") or value.endswith("/"):
        return "must be an S3 key prefix without leading or trailing '/'"
    return None


@dataclass(frozen=True, kw_only=True)
class Aws:
    region: str = setting(check=_region)
    bucket: str = setting("", check=_bucket)
    prefix: str = setting(check=_prefix)
    role_arn: str = setting(
        "",
        pattern=ROLE_ARN_RE,
        empty_ok=True,
        describe="an IAM role ARN like arn:aws:iam::123456789012:role/Name, or empty",
    )
    # The SageMaker SDK generation the launcher uses (src/<package>/sdk.py picks its module).
    sagemaker_sdk: str = setting("v2", choices=SDK_GENERATIONS)

    def problems(self, path: tuple[str, ...]) -> Iterator[Problem]:
        match = ROLE_ARN_RE.match(self.role_arn)
        if match and REGION_RE.match(self.region) and match.group(1) != partition(self.region):
            yield Problem(
                path + ("role_arn",),
                self.role_arn,
                f"is in partition {match.group(1)}, but "
                + "{0} "
                + f"{self.region} is in {partition(self.region)} "
                f"(arn:{partition(self.region)}:iam::...)",
                refs=(path + ("region",),),
            )


def _instance_type(value: str) -> str | None:
    if not INSTANCE_TYPE_RE.match(value):
        return "must be an instance type like ml.g4dn.xlarge (ml.<family>.<size>)"
    return instance_type_problem(value)


@dataclass(frozen=True, kw_only=True)
class Machines:
    type: str = setting(check=_instance_type)
    count: int = setting(minimum=1, maximum=100)


@dataclass(frozen=True, kw_only=True)
class Instances:
    tuning: Machines = setting()
    training: Machines = setting()
    endpoint: Machines = setting()


@dataclass(frozen=True, kw_only=True)
class Jobs:
    use_spot: bool = setting()
    max_run_seconds: int = setting(minimum=60, maximum=28 * 24 * 3600)
    max_wait_seconds: int = setting(minimum=60, maximum=28 * 24 * 3600)

    def problems(self, path: tuple[str, ...]) -> Iterator[Problem]:
        if self.use_spot and self.max_wait_seconds < self.max_run_seconds:
            yield Problem(
                path + ("max_wait_seconds",),
                self.max_wait_seconds,
                f"must be at least {REF0} ({self.max_run_seconds}) with {REF1} = true",
                refs=(path + ("max_run_seconds",), path + ("use_spot",)),
            )


@dataclass(frozen=True, kw_only=True)
class Image:
    framework_version: str = setting(pattern=VERSION_RE, describe="a PyTorch version like 2.6.0")
    py_version: str = setting(pattern=PY_VERSION_RE, describe="a Python tag like py312")
    image_uri: str = setting(
        "",
        pattern=IMAGE_URI_RE,
        empty_ok=True,
        max_length=255,  # SageMaker's limit on a job's or model's image
        describe="an ECR image URI (<account>.dkr.ecr.<region>.amazonaws.com/<repo>:<tag>), "
        "or empty to use the versions",
    )

    def problems_for(self, path: tuple[str, ...], generation: str, region: str) -> Iterator[Problem]:
        """The image's problems with the SDK generation and region that resolve it (Settings.problems)."""
        scope = path[-1]
        if scope not in MINIMUM_PYTORCH:
            return
        minimum = MINIMUM_PYTORCH[scope]
        if self.image_uri:  # a custom image: the versions are not used; AWS's own name theirs in the tag
            tagged = AWS_PYTORCH_IMAGE_RE.search(self.image_uri)
            if tagged and version_tuple(tagged.group(2)) < version_tuple(minimum):
                yield Problem(
                    path + ("image_uri",),
                    self.image_uri,
                    f"brings PyTorch {tagged.group(2)}, older than {minimum}, the oldest the {scope} code "
                    f"runs on ({MINIMUM_PYTORCH_REASON[scope]})",
                )
            return
        if not VERSION_RE.match(self.framework_version):
            return
        known = PYTORCH_IMAGES.get(generation, PYTORCH_IMAGES[DEFAULT_SDK])[scope]
        full = pytorch_version(scope, self.framework_version, generation)
        supported = [v for v in known if version_tuple(v) >= version_tuple(minimum)]
        sdk = f"SageMaker SDK {generation}"
        if version_tuple(self.framework_version) < version_tuple(minimum):
            yield Problem(
                path + ("framework_version",),
                self.framework_version,
                f"is older than {minimum}, the oldest PyTorch the {scope} code runs on "
                f"({MINIMUM_PYTORCH_REASON[scope]}); choose one of {', '.join(supported)}",
            )
        elif full is None:
            newer = [
                other
                for other in SDK_GENERATIONS
                if other != generation and pytorch_version(scope, self.framework_version, other)
            ]
            yield Problem(
                path + ("framework_version",),
                self.framework_version,
                f"has no PyTorch {scope} image that {sdk} knows; choose one of {', '.join(supported)}"
                + (f" (SageMaker SDK {newer[0]} knows it)" if newer else ""),
            )
        elif self.py_version not in known[full]:
            yield Problem(
                path + ("py_version",),
                self.py_version,
                f"has no PyTorch {full} {scope} image; {REF0} {full} comes with " + ", ".join(known[full]),
                refs=(path + ("framework_version",),),
            )
        elif region and not image_in_region(scope, full, region):
            here = [v for v in supported if image_in_region(scope, v, region)]
            yield Problem(
                path + ("framework_version",),
                self.framework_version,
                f"has no PyTorch {scope} image in {REF0} {region} yet; choose {max(here, key=version_tuple)} "
                "or another region",
                refs=(("aws", "region"),),
            )


@dataclass(frozen=True, kw_only=True)
class Images:
    training: Image = setting()
    inference: Image = setting()


@dataclass(frozen=True, kw_only=True)
class Endpoint:
    # A serverless endpoint (billed per request, CPU only, at most 6 GB) instead of [instances.endpoint].
    serverless: bool = setting(False)
    server: str = setting("torchserve", choices=ENDPOINT_SERVERS)
    memory_mb: int = setting(3072, choices=SERVERLESS_MEMORY_SIZES)
    max_concurrency: int = setting(5, minimum=1, maximum=200)


@dataclass(frozen=True, kw_only=True)
class Budget:
    # USD the launches may cost; 0: no budget (nothing is refused).
    usd: float = setting(0.0, minimum=0, maximum=1_000_000)
    # How long `cost` and `deploy` expect an endpoint to stay up, in hours.
    endpoint_hours: float = setting(24.0, minimum=0, maximum=24 * 366)


# SageMaker's limits on a job's environment: at most 100 variables, names and values of 512 characters.
MAX_ENVIRONMENT_VARIABLES, MAX_ENVIRONMENT_CHARS = 100, 512


def _environment_value(value: Any) -> str | None:
    if not isinstance(value, (str, int, float, bool)):
        return "must be text, a number or true/false"
    if len(str(value)) > MAX_ENVIRONMENT_CHARS:
        return f"is longer than {MAX_ENVIRONMENT_CHARS} characters, SageMaker's limit for a variable"
    return None


@dataclass(frozen=True, kw_only=True)
class Settings:
    """config.toml, typed: `settings.model.backbone`, `settings.tuning.max_jobs`, `settings.prices[...]`."""

    project: Project = setting()
    data: Data = setting()
    model: Model = setting()
    hyperparameters: Hyperparameters = setting()
    tuning: Tuning = setting()
    debugger: Debugger = setting()
    profiler: Profiler = setting()
    # Optional: without it, local runs still record into the project's own store (tracking module).
    tracking: Tracking = setting(default_factory=Tracking)
    aws: Aws = setting()
    instances: Instances = setting()
    jobs: Jobs = setting()
    images: Images = setting()
    endpoint: Endpoint = setting(default_factory=Endpoint)
    budget: Budget = setting(default_factory=Budget)
    # Optional tables: USD per instance-hour for `cost`; environment variables of the training jobs.
    prices: dict[str, float] = setting(default_factory=dict, above=0, maximum=10_000)
    environment: dict[str, Scalar] = setting(default_factory=dict, check=_environment_value)

    def problems(self, path: tuple[str, ...]) -> Iterator[Problem]:
        generation = str(getattr(self.aws, "sagemaker_sdk", DEFAULT_SDK))
        for scope in ("training", "inference"):
            region = self.aws.region if REGION_RE.match(self.aws.region) else ""
            yield from getattr(self.images, scope).problems_for(("images", scope), generation, region)
        yield from self._cuda_problems()
        if self.hyperparameters.feature_cache and self.model.finetune != "head":
            # training/train_model.py's check_args stops the job on it (after the instance is billed).
            yield Problem(
                ("hyperparameters", "feature_cache"),
                True,
                f'needs {REF0} = "head": with "{self.model.finetune}" the backbone changes every step',
                refs=(("model", "finetune"),),
            )
        if self.aws.sagemaker_sdk == "v3" and self.debugger.evaluation != "in_job":
            # v3's ModelTrainer has no Debugger or Profiler fields: SageMaker's rule jobs cannot be asked for.
            yield Problem(
                ("debugger", "evaluation"),
                self.debugger.evaluation,
                f'must be "in_job" with {REF0} = "v3": SDK v3 sends no Debugger or Profiler '
                "configuration, so train_model.py judges the rules in the job",
                refs=(("aws", "sagemaker_sdk"),),
            )
        yield from self._batch_size_problems()
        if self.endpoint.server == "ray_serve" and self.endpoint.serverless:
            # The container's entry point sleeps 15 s and starts a Ray cluster before the model loads:
            # every cold start would pay it, inside serverless's 6 GB.
            yield Problem(
                ("endpoint", "server"),
                self.endpoint.server,
                f"needs {REF0} = false: the Ray Serve container starts a Ray cluster on every cold start",
                refs=(("endpoint", "serverless"),),
            )
        hyperparameters = {f.name: f for f in dataclasses.fields(Hyperparameters)}
        hints = typing.get_type_hints(Hyperparameters)
        for name, spec in self.tuning.ranges.items():
            where = ("tuning", "ranges", name)
            if name not in hyperparameters:
                tunable = ", ".join(hyperparameters)
                yield Problem(where, ABSENT, f"tunes no hyperparameter; tunable: {tunable}")
                continue
            hint = without_none(hints[name])
            rules = hyperparameters[name].metadata["spec"]
            ends = (
                [("values", v) for v in spec.values]
                if spec.type == "categorical"
                else [(end, getattr(spec, end)) for end in ("min", "max") if getattr(spec, end) is not None]
            )
            for end, value in ends:
                message = value_problem(value, hint, rules)
                if message:
                    yield Problem(where + (end,), value, f"{message} (as [hyperparameters] {name})")
        for name, price in self.prices.items():
            if not INSTANCE_TYPE_RE.match(name):
                yield Problem(("prices", name), price, "names no instance type like ml.g4dn.xlarge")
        if len(self.environment) > MAX_ENVIRONMENT_VARIABLES:
            yield Problem(
                ("environment",),
                ABSENT,
                f"holds {len(self.environment)} variables; a job takes {MAX_ENVIRONMENT_VARIABLES} at most",
            )
        for name in self.environment:
            if not ENV_NAME_RE.match(name) or len(name) > MAX_ENVIRONMENT_CHARS:
                yield Problem(
                    ("environment", name),
                    self.environment[name],
                    "is not an environment variable name (letters, digits, '_')",
                )

    def _cuda_problems(self) -> Iterator[Problem]:
        image = self.images.training
        if image.image_uri or not VERSION_RE.match(image.framework_version):
            return
        if version_tuple(image.framework_version) < CUDA_13_TRAINING:
            return
        for role in ("tuning", "training"):
            machines = getattr(self.instances, role)
            family = machines.type.split(".")[1] if machines.type.count(".") == 2 else ""
            if family in VOLTA_FAMILIES:
                yield Problem(
                    ("instances", role, "type"),
                    machines.type,
                    f"is a V100 (Volta) type, which the CUDA 13 image of {REF0} "
                    f"{image.framework_version} cannot run on; choose ml.g4dn, ml.g5 or ml.p4d",
                    refs=(("images", "training", "framework_version"),),
                )

    def _batch_size_problems(self) -> Iterator[Problem]:
        """batch_size, and the tuner's range of it, stay at or above what the network can train on
        (training/train_model.py's check_args stops the job otherwise, after the instance is billed)."""
        smallest = smallest_batch_size(self.model.finetune, self.model.backbone)
        if smallest == 1:
            return
        refs = (("model", "finetune"), ("model", "backbone"))
        backbone = self.model.backbone
        least = (
            f'at least {smallest} with {REF0} = "full" and {REF1} = "{backbone}" (BatchNorm needs 2 images)'
        )
        if self.hyperparameters.batch_size < smallest:
            value = self.hyperparameters.batch_size
            yield Problem(("hyperparameters", "batch_size"), value, f"must be {least}", refs)
        tuned = self.tuning.ranges.get("batch_size")
        where = ("tuning", "ranges", "batch_size")
        if tuned is not None and tuned.type == "categorical":
            numbers = [v for v in tuned.values if isinstance(v, int | float) and not isinstance(v, bool)]
            if any(v < smallest for v in numbers):
                yield Problem(where + ("values",), list(tuned.values), f"must each be {least}", refs)
        elif tuned is not None and tuned.min is not None and tuned.min < smallest:
            yield Problem(where + ("min",), tuned.min, f"must be {least}", refs)


def hyperparameter_problem(name: str, value: Any) -> str | None:
    """What is wrong with `value` for hyperparameter `name` (a [hyperparameters] or [model] key, as
    `train --hp name=value` overrides it); None when it fits, or when the schema has no such key."""
    for table in (Hyperparameters, Model):
        fields = {f.name: f for f in dataclasses.fields(table)}
        if name in fields:
            hint = typing.get_type_hints(table)[name]
            return value_problem(value, hint, fields[name].metadata.get("spec", Spec()))
    return None


def _check(document: dict[str, Any]) -> tuple[Any, list[Problem]]:
    problems: list[Problem] = []
    settings = build(Settings, document, (), problems)
    first: dict[tuple[str, ...], Problem] = {}
    for problem in problems:  # one problem per key: the first rule it breaks
        first.setdefault(problem.path, problem)
    return settings, list(first.values())


def validate(document: dict[str, Any]) -> list[Problem]:
    """Every problem of a parsed config.toml (one per key); empty when it fits the schema."""
    return _check(document)[1]


def parse(document: dict[str, Any]) -> Settings:
    """The typed settings of a parsed config.toml; SchemaError lists every problem."""
    settings, problems = _check(document)
    if problems:
        raise SchemaError(problems)
    return settings
