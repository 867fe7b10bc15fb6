"""The one schema of config.toml: every key, its type, what it allows, and the AWS tables it checks against.

Two readers share this file, so each rule is defined here once:

- the template's render hook loads it by path and validates the config the answers would produce;
- the package (`config.py`) validates config.toml with it when a command loads the config.

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
import json
import math
import re
import sys
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union


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

# The package reads these through the schema (config.py's `schema`), which makes `classifier` importable.
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

# --- what AWS and the SageMaker SDK accept ---------------------------------------------------------

INSTANCE_TYPE_RE = re.compile(r"^ml\.[a-z][a-z0-9-]*\.[0-9]*(x?large|medium|small|micro|nano|metal)$")
REGION_RE = re.compile(r"^[a-z]{2}(-gov|-iso[a-z]*)?-[a-z]+-[0-9]$")
ROLE_ARN_RE = re.compile(r"^arn:(aws[a-z-]*):iam::[0-9]{12}:role/[\w+=,.@/-]{1,512}$")
# A SageMaker managed MLflow App or tracking server (the pattern of the API's MlflowResourceArn).
MLFLOW_ARN_RE = re.compile(
    r"^arn:aws[a-z-]*:sagemaker:[a-z0-9-]+:[0-9]{12}:mlflow-(app|tracking-server)/[\w.-]{1,256}$"
)
# An MLflow experiment name as SageMaker's MLflow configuration accepts it.
EXPERIMENT_NAME_RE = re.compile(r"^[a-zA-Z0-9_./-]{1,256}$")
# S3's rules for general purpose bucket names (docs.aws.amazon.com/AmazonS3/latest/userguide/
# bucketnamingrules.html): 3-63 characters of lowercase letters, digits, '.' and '-', starting and
# ending with a letter or digit; no '..', no IP address form, and none of the reserved starts and ends.
BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
BUCKET_RESERVED_PREFIXES = ("xn--", "sthree-", "amzn-s3-demo-")
BUCKET_RESERVED_SUFFIXES = ("-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3")
PREFIX_RE = re.compile(r"^[A-Za-z0-9!_.*'()/-]{0,200}$")
VERSION_RE = re.compile(r"^[0-9]+\.[0-9]+(\.[0-9]+)?$")
PY_VERSION_RE = re.compile(r"^py3[0-9]{1,2}$")
IMAGE_URI_RE = re.compile(
    r"^[0-9]{12}\.dkr\.ecr\.[a-z0-9-]+\.amazonaws\.com(\.cn)?/[a-z0-9._/-]+(:[\w.-]+|@sha256:[0-9a-f]{64})$"
)
METRIC_NAME_RE = re.compile(r"^[\w:./=+-]{1,255}$")
URL_RE = re.compile(r"^(https?|s3)://\S+$")
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# An AWS tag value that is also an id (no spaces: staff type it in `--owner`).
OWNER_RE = re.compile(r"^[A-Za-z0-9_.:/=+@-]{1,128}$")
# What serves inference.py on the endpoint: TorchServe in AWS's PyTorch inference image (2.6 is the last
# one), or AWS's Ray Serve container for SageMaker (ray_serve/ in the project, src/.../ray_package.py).
ENDPOINT_SERVERS = ("torchserve", "ray_serve")
# The memory sizes a serverless endpoint accepts, in MB.
SERVERLESS_MEMORY_SIZES = (1024, 2048, 3072, 4096, 5120, 6144)

# Regions where SageMaker SDK 2.257 serves the PyTorch training and inference images
# (sagemaker/image_uri_config/pytorch.json, "registries", for the versions below).
# The rendered project's tests check this list against the installed SDK.
SAGEMAKER_REGIONS = (
    "af-south-1",
    "ap-east-1",
    "ap-east-2",
    "ap-northeast-1",
    "ap-northeast-2",
    "ap-northeast-3",
    "ap-south-1",
    "ap-south-2",
    "ap-southeast-1",
    "ap-southeast-2",
    "ap-southeast-3",
    "ap-southeast-4",
    "ap-southeast-5",
    "ap-southeast-6",
    "ap-southeast-7",
    "ca-central-1",
    "ca-west-1",
    "cn-north-1",
    "cn-northwest-1",
    "eu-central-1",
    "eu-central-2",
    "eu-north-1",
    "eu-south-1",
    "eu-south-2",
    "eu-west-1",
    "eu-west-2",
    "eu-west-3",
    "il-central-1",
    "me-central-1",
    "me-south-1",
    "mx-central-1",
    "sa-east-1",
    "us-east-1",
    "us-east-2",
    "us-gov-east-1",
    "us-gov-west-1",
    "us-west-1",
    "us-west-2",
)
# The SageMaker Python SDK generations a render can use ([aws] sagemaker_sdk; "v2" where absent): the
# images a render may pick are the ones its generation's `image_uris.retrieve` knows.
SDK_GENERATIONS = ("v2", "v3")
DEFAULT_SDK = "v2"
# PyTorch 2.x images each SDK generation can retrieve, with their Python versions: v2 from sagemaker
# 2.257.7's image_uri_config/pytorch.json; v3 from sagemaker-core 2.27.0's (sagemaker 3.27.0)
# image_uri_config/pytorch.json and pytorch-amzn2023.json. From 2.11 AWS builds the training images on
# Amazon Linux 2023, listed under "2.11" (not "2.11.0"); no PyTorch inference image came after 2.6.
_PYTORCH_V2: dict[str, dict[str, tuple[str, ...]]] = {
    "training": {
        "2.0.0": ("py310",), "2.0.1": ("py310",), "2.1.0": ("py310",), "2.2.0": ("py310",),
        "2.3.0": ("py311",), "2.4.0": ("py311",), "2.5.1": ("py311",),
        "2.6.0": ("py312",), "2.7.1": ("py312",), "2.8.0": ("py312",),
    },
    "inference": {
        "2.0.0": ("py310",), "2.0.1": ("py310",), "2.1.0": ("py310",), "2.2.0": ("py310",),
        "2.3.0": ("py311",), "2.4.0": ("py311",), "2.5.1": ("py311",), "2.6.0": ("py312",),
    },
}  # fmt: skip
PYTORCH_IMAGES: dict[str, dict[str, dict[str, tuple[str, ...]]]] = {
    "v2": _PYTORCH_V2,
    "v3": {
        "training": {
            **_PYTORCH_V2["training"],
            "2.9.0": ("py312",), "2.10.0": ("py313",),
            # Amazon Linux 2023: Python 3.12 (aws/deep-learning-containers docs/src/data/pytorch/*.yml).
            "2.11": ("py312",), "2.12": ("py312",), "2.13": ("py312",), "2.14": ("py312",),
        },
        "inference": _PYTORCH_V2["inference"],
    },
}  # fmt: skip
# The Amazon Linux 2023 images are a framework of their own in the SDK's tables ("pytorch-amzn2023"):
# repository "pytorch", tags like 2.14-cu133-amzn2023-sagemaker, with no Python version in them.
AMAZON_LINUX_PYTORCH = (2, 11, 0)
# Regions where the SDK's table has every other image but not this one yet (sagemaker-core 2.27.0).
PYTORCH_IMAGE_NOT_IN_REGIONS: dict[tuple[str, str], tuple[str, ...]] = {
    ("training", "2.14"): ("cn-north-1", "cn-northwest-1", "us-gov-east-1", "us-gov-west-1"),
}


# From PyTorch 2.9 the GPU training images are built with CUDA 13 (cu130, cu133: the `cuda:` of
# aws/deep-learning-containers docs/src/data/pytorch-training/2.9-gpu-sagemaker.yml and later), which has no
# code for Volta: on ml.p3 (V100) such a job starts, bills, and stops at its first kernel.
CUDA_13_TRAINING = (2, 9, 0)
VOLTA_FAMILIES = ("p3", "p3dn")


def sdk_generation(aws: Mapping[str, Any]) -> str:
    """The SDK generation of config.toml's [aws] table (as a dict)."""
    return str(aws.get("sagemaker_sdk") or DEFAULT_SDK)


def sdk_image_framework(version: str) -> str:
    """The `framework` the SDK's `image_uris.retrieve` files a PyTorch image version under."""
    return "pytorch-amzn2023" if version_tuple(version) >= AMAZON_LINUX_PYTORCH else "pytorch"


def image_in_region(scope: str, version: str, region: str) -> bool:
    return region not in PYTORCH_IMAGE_NOT_IN_REGIONS.get((scope, version), ())


def newest_image(generation: str, scope: str, region: str = "") -> tuple[str, str]:
    """The default image of a render: the newest PyTorch `scope` image its SDK generation knows (in
    `region`, when given), with its Python version. Newer images are patched longer (support.py's
    table, whose test holds it so), so this is the one patched longest."""
    known = PYTORCH_IMAGES.get(generation, PYTORCH_IMAGES[DEFAULT_SDK])[scope]
    version = max((v for v in known if not region or image_in_region(scope, v, region)), key=version_tuple)
    return version, known[version][0]


# The oldest PyTorch each image must bring, set by the newest API its code calls (the images above
# that are older would start, bill, and fail on that line):
# - training: torch.amp.GradScaler(device_type, ...) (training/optimisation.py), new in PyTorch 2.3;
#   before it the class was torch.cuda.amp.GradScaler only;
# - inference: torchvision.transforms.v2 (classifier/presets.py), new in torchvision 0.15, the one
#   released with PyTorch 2.0 (the oldest image the SDK serves).
MINIMUM_PYTORCH = {"training": "2.3.0", "inference": "2.0.0"}
MINIMUM_PYTORCH_REASON = {
    "training": "training/optimisation.py calls torch.amp.GradScaler(device), new in PyTorch 2.3",
    "inference": "classifier/presets.py uses torchvision.transforms.v2, new with PyTorch 2.0",
}
# AWS's own PyTorch images (<account>.dkr.ecr.<region>.amazonaws.com/pytorch-training:2.8.0-gpu-py312,
# and from 2.11 .../pytorch:2.14-cu133-amzn2023-sagemaker): their tag names the version, which is held
# to the same minimum.
AWS_PYTORCH_IMAGE_RE = re.compile(r"/pytorch(-training|-inference)?[a-z-]*:([0-9]+\.[0-9]+(\.[0-9]+)?)-")


def partition(region: str) -> str:
    """The AWS partition of a region: ARNs in cn-* regions start `arn:aws-cn:`, and so on."""
    if region.startswith("cn-"):
        return "aws-cn"
    if region.startswith("us-gov-"):
        return "aws-us-gov"
    if region.startswith("us-isob-"):
        return "aws-iso-b"
    if region.startswith("us-iso-"):
        return "aws-iso"
    return "aws"


def version_tuple(version: str) -> tuple[int, ...]:
    """Version text as numbers: 2.3.0 -> (2, 3, 0), and 2.3 too, so that the two compare equal."""
    parts = tuple(int(part) for part in version.split("."))
    return parts + (0,) * (3 - len(parts))


def pytorch_version(scope: str, version: str, generation: str = DEFAULT_SDK) -> str | None:
    """The full image version the SDK resolves `version` to ("2.8" -> "2.8.0"), None if it has none."""
    known = PYTORCH_IMAGES.get(generation, PYTORCH_IMAGES[DEFAULT_SDK])[scope]
    if version in known:
        return version
    matches = [full for full in known if full.startswith(version + ".")]
    return max(matches, key=version_tuple) if matches else None


def instance_type_problem(instance_type: str) -> str | None:
    """Why the project's PyTorch CPU/GPU images cannot run on `instance_type`; None when they can."""
    family = instance_type.split(".")[1] if instance_type.count(".") == 2 else ""
    if re.match(r"^(trn|inf)[0-9]", family):
        return (
            "is an AWS Trainium/Inferentia (Neuron) type; the PyTorch images this project uses "
            "need a CPU or NVIDIA GPU type such as ml.m5.large or ml.g4dn.xlarge"
        )
    if re.match(r"^[a-z]+[0-9]+g[a-z]*$", family):
        return "is an ARM (Graviton) type; the PyTorch images this project uses are built for x86"
    if family.startswith("eia"):
        return "is an Elastic Inference accelerator, not an instance type"
    return None


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


# --- problems ----------------------------------------------------------------------------------------


class _Absent:
    def __repr__(self) -> str:
        return "<absent>"


ABSENT: Any = _Absent()  # the value of a Problem about a missing key
# Placeholders for the keys a message names (Problem.refs). Not written as doubled braces in
# f-strings: cookiecutter renders this file with Jinja, which would read those as its own.
# The SageMaker Python SDK generations a project can use ([aws] sagemaker_sdk).
SAGEMAKER_SDKS = ("v2", "v3")
REF0, REF1 = "{0}", "{1}"


def key_name(path: tuple[str, ...]) -> str:
    """How a key is written in messages: `[hyperparameters] lr`, `[tuning.ranges.lr] min`, `[model]`."""
    if len(path) == 1:
        return f"[{path[0]}]"
    parts = [p if re.match(r"^[A-Za-z0-9_-]+$", p) else f'"{p}"' for p in path]
    return f"[{'.'.join(parts[:-1])}] {parts[-1]}"


# How much of a list a message shows: its first items, two levels deep (a value nested a thousand
# deep, or a list of a million items, is still one short line).
SHOWN_ITEMS, SHOWN_DEPTH = 8, 2


def show(value: Any, depth: int = 0) -> str:
    """A value as TOML writes it (strings quoted, true/false lowercase), cut to one short line."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        # json's escapes keep a newline or a quote in the value from breaking the one-line message.
        return json.dumps(value if len(value) <= 60 else value[:57] + "...", ensure_ascii=False)
    if isinstance(value, list):
        if depth >= SHOWN_DEPTH and value:
            return "[...]"
        items = [show(item, depth + 1) for item in value[:SHOWN_ITEMS]]
        return "[" + ", ".join(items + (["..."] if len(value) > SHOWN_ITEMS else [])) + "]"
    if isinstance(value, dict):
        return "{...}"
    if isinstance(value, int) and abs(value) >= 10**30:  # a 4,000-digit integer would take the whole line
        return f"<a whole number of about {round(abs(value).bit_length() * math.log10(2))} digits>"
    return str(value)


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the config: where, the value found, and what is allowed.

    `message` may name other keys as `{0}`, `{1}`, ... (paths in `refs`), so that the render hook
    can call them by the answers the user typed instead of by their config keys.
    """

    path: tuple[str, ...]
    value: Any
    message: str
    refs: tuple[tuple[str, ...], ...] = ()

    def explain(self, name: Callable[[tuple[str, ...]], str] = key_name) -> str:
        return self.message.format(*(name(ref) for ref in self.refs))

    def text(self) -> str:
        """`[hyperparameters] lr = "fast": must be a number greater than 0`."""
        found = "" if self.value is ABSENT else f" = {show(self.value)}"
        return f"{key_name(self.path)}{found}: {self.explain()}"


class SchemaError(ValueError):
    """The document does not fit the schema; `problems` lists every reason, in file order."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("; ".join(problem.text() for problem in problems))


# --- declaring keys ------------------------------------------------------------------------------------

_REQUIRED: Any = dataclasses.MISSING


@dataclass(frozen=True, kw_only=True)
class Spec:
    """What one key allows beyond its type. Built by `setting()`."""

    choices: tuple[Any, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    above: float | None = None  # strictly greater than
    pattern: re.Pattern[str] | None = None
    describe: str = ""  # what `pattern` (or `check`) allows, in words
    max_length: int | None = None
    empty_ok: bool = False  # "" passes `pattern` (e.g. "leave empty to resolve it when run")
    check: Callable[[Any], str | None] | None = None  # more rules: a message, or None when fine


def setting(default: Any = _REQUIRED, *, default_factory: Any = dataclasses.MISSING, **spec: Any) -> Any:
    """A dataclass field with its rules: `num_classes: int = setting(minimum=2, maximum=100_000)`."""
    metadata = {"spec": Spec(**spec)}
    if default_factory is not dataclasses.MISSING:
        return field(default_factory=default_factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def _single_line(value: str) -> str | None:
    if not value.strip():
        return "must not be empty"
    if any(ord(ch) < 32 or ord(ch) == 127 or 0xD800 <= ord(ch) <= 0xDFFF for ch in value):
        return "holds a control character (newline, tab, ...); use one plain line"
    return None


def _regex_with_one_group(value: str) -> str | None:
    try:
        groups = re.compile(value).groups
    except re.error as error:
        return f"is not a regular expression ({error})"
    if groups != 1:
        return "must have exactly one group (the number)"
    return None


def _range_of(spec: Spec, whole: bool) -> str:
    noun = "a whole number" if whole else "a number"
    if spec.minimum is not None and spec.maximum is not None:
        return f"{noun} from {spec.minimum:g} to {spec.maximum:g}"
    if spec.above is not None and spec.maximum is not None:
        return f"{noun} greater than {spec.above:g} and at most {spec.maximum:g}"
    if spec.above is not None:
        return f"{noun} greater than {spec.above:g}"
    if spec.minimum is not None:
        return f"{noun} of at least {spec.minimum:g}"
    return noun


def allowed(hint: Any, spec: Spec) -> str:
    """What a key allows, in words: 'a whole number from 2 to 100000', 'one of head, full', ..."""
    if spec.choices:
        return "one of " + ", ".join(show(c) if isinstance(c, bool) else str(c) for c in spec.choices)
    if dataclasses.is_dataclass(hint):
        return "a table"
    origin = typing.get_origin(hint)
    if origin is tuple:
        return "a list"
    if origin is dict:
        return "a table"
    if hint is bool:
        return "true or false"
    if hint is int:
        return _range_of(spec, whole=True)
    if hint is float:
        return _range_of(spec, whole=False)
    if spec.describe:
        return spec.describe
    return "text"


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
    name: str = setting(max_length=200, check=_single_line)
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
    description: str = setting(max_length=200, check=_single_line)
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
    objective_metric_regex: str = setting(max_length=500, check=_regex_with_one_group)
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
# page allows ("Valid values"; training/rules.py holds the defaults, and a test keeps the two in step).
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
                message = _problem(value, hint, spec)
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
    sagemaker_sdk: str = setting("v2", choices=SAGEMAKER_SDKS)

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
            hint = _without_none(hints[name])
            rules = hyperparameters[name].metadata["spec"]
            ends = (
                [("values", v) for v in spec.values]
                if spec.type == "categorical"
                else [(end, getattr(spec, end)) for end in ("min", "max") if getattr(spec, end) is not None]
            )
            for end, value in ends:
                message = _problem(value, hint, rules)
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


# --- reading a document against the schema -----------------------------------------------------------------


def _without_none(hint: Any) -> Any:
    if typing.get_origin(hint) in (Union, types.UnionType):
        arms = [arm for arm in typing.get_args(hint) if arm is not type(None)]
        return arms[0] if len(arms) == 1 else Union[tuple(arms)]  # noqa: UP007
    return hint


def _problem(value: Any, hint: Any, spec: Spec) -> str | None:
    """What is wrong with a scalar (or list of scalars) for this hint and spec; None when fine."""
    hint = _without_none(hint)
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        arms = typing.get_args(hint)
        if not isinstance(value, arms) or (isinstance(value, bool) and bool not in arms):
            return "must be text, a number or true/false" if str in arms else "must be a number"
        if isinstance(value, float) and not math.isfinite(value):
            return "must be a finite number (not inf or nan)"
    elif origin is tuple:
        if not isinstance(value, list):
            return f"must be {allowed(hint, spec)}"
        item = typing.get_args(hint)[0]
        for element in value:
            message = _problem(element, item, Spec())
            if message:
                return f"holds {show(element)}, which {message}"
        value = tuple(value)
    elif hint is bool:
        if not isinstance(value, bool):
            return "must be true or false"
    elif hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            return f"must be {allowed(hint, spec)}"
    elif hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return f"must be {allowed(hint, spec)}"
    elif hint is str and not isinstance(value, str):
        return f"must be {allowed(hint, spec)}" if spec.choices else "must be text (in quotes)"
    if spec.choices and value not in spec.choices:
        return f"must be {allowed(hint, spec)}"
    if hint in (int, float):
        low = spec.minimum if spec.minimum is not None else -math.inf
        high = spec.maximum if spec.maximum is not None else math.inf
        if not low <= value <= high or (spec.above is not None and value <= spec.above):
            return f"must be {allowed(hint, spec)}"
    if isinstance(value, str):
        if spec.max_length is not None and len(value) > spec.max_length:
            return f"is {len(value)} characters long; at most {spec.max_length} are allowed"
        if spec.pattern is not None and not (spec.empty_ok and value == "") and not spec.pattern.match(value):
            return f"must be {spec.describe}"
    if spec.check is not None:
        return spec.check(value)
    return None


def hyperparameter_problem(name: str, value: Any) -> str | None:
    """What is wrong with `value` for hyperparameter `name` (a [hyperparameters] or [model] key, as
    `train --hp name=value` overrides it); None when it fits, or when the schema has no such key."""
    for table in (Hyperparameters, Model):
        fields = {f.name: f for f in dataclasses.fields(table)}
        if name in fields:
            hint = typing.get_type_hints(table)[name]
            return _problem(value, hint, fields[name].metadata.get("spec", Spec()))
    return None


def _convert(value: Any, hint: Any, spec: Spec, path: tuple[str, ...], problems: list[Problem]) -> Any:
    """`value` as `hint` (a table becomes its dataclass); records problems and returns ABSENT on any."""
    hint = _without_none(hint)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, path, problems)
    if typing.get_origin(hint) is dict:
        if not isinstance(value, dict):
            problems.append(Problem(path, ABSENT, "must be a table"))
            return ABSENT
        item = typing.get_args(hint)[1]
        converted = {key: _convert(v, item, spec, path + (key,), problems) for key, v in value.items()}
        return ABSENT if ABSENT in converted.values() else converted
    message = _problem(value, hint, spec)
    if message:
        problems.append(Problem(path, value, message))
        return ABSENT
    if hint is float:
        return float(value)
    if typing.get_origin(hint) is tuple:
        return tuple(value)
    return value


def _build(cls: type, value: Any, path: tuple[str, ...], problems: list[Problem]) -> Any:
    if not isinstance(value, dict):
        problems.append(Problem(path, value, "must be a table"))
        return ABSENT
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls)]
    for key in value:
        if key not in known:
            problems.append(Problem(path + (key,), ABSENT, "is not a known key; known: " + ", ".join(known)))
    complete = not any(key not in known for key in value)
    arguments = {}
    for f in dataclasses.fields(cls):
        spec = f.metadata.get("spec", Spec())
        if f.name in value:
            arguments[f.name] = _convert(value[f.name], hints[f.name], spec, path + (f.name,), problems)
            complete = complete and arguments[f.name] is not ABSENT
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            expected = allowed(hints[f.name], spec)
            problems.append(Problem(path + (f.name,), ABSENT, f"is missing; expected {expected}"))
            complete = False
    # A table whose every key has a usable value is built, and its cross-key rules run, even
    # when a table inside it broke such a rule: one pass reports as much as it can.
    if not complete:
        return ABSENT
    instance = cls(**arguments)
    check = getattr(instance, "problems", None)
    if check is not None:
        problems.extend(check(path))
    return instance


def _check(document: dict[str, Any]) -> tuple[Any, list[Problem]]:
    problems: list[Problem] = []
    settings = _build(Settings, document, (), problems)
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
