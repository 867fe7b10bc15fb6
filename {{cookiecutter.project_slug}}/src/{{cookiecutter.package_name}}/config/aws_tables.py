"""What AWS and the SageMaker SDK accept: name patterns, regions, the PyTorch images of each SDK generation.

The schema (schema.py) checks config.toml against these tables; preflight, the SDK modules and the
render's default images read them too. Standard library only: the render hook loads it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

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
    `region`, when given), with its Python version. Newer images are patched longer (aws/image_support.py's
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
