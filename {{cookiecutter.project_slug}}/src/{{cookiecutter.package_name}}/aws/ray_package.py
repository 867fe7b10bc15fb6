"""The endpoint on AWS's Ray Serve container for SageMaker: its model package and its image.

`[endpoint] server = "ray_serve"` serves inference.py on the Ray Serve container instead of the PyTorch
(TorchServe) inference image. That container (github.com/aws/deep-learning-containers,
docker/ray/Dockerfile.cpu and scripts/docker/ray/sagemaker_entrypoint.sh) extracts model.tar.gz to
/opt/ml/model, puts /opt/ml/model and /opt/ml/model/code on PYTHONPATH, pip-installs
code/requirements.txt when there is one, and runs `serve run /opt/ml/model/config.yaml`. The package
built here is the TorchServe one (the trained model at the root, inference/ in code/, classifier/ in
code/lib/, made by the SDK's own repack) plus:

- config.yaml and deployment.py (the project's ray_serve/) at the root;
- the sagemaker-inference toolkit's package in code/lib/: inference.py takes its error classes and
  content types from it, and the Ray image has no such package. It is pure Python, imported without
  its dependencies for those two modules, so the endpoint installs nothing at start-up (one in a VPC
  without internet access could not).

The SDK modules call `build_package`, `image_uri` and `inference_ami_version`; nothing here imports
the SDK at import time.
"""

from __future__ import annotations

import importlib.util
import shutil
import tarfile
import tempfile
from pathlib import Path

from .. import extras
from ..config import ProjectConfig, aws_tables
from .context import AwsContext

RAY_SERVE_DIR = "ray_serve"
# What the container reads at the model's root, from the project's ray_serve/ folder.
PACKAGE_FILES = ("config.yaml", "deployment.py")
# The toolkit package copied into code/lib/ (see the module's docstring).
TOOLKIT_PACKAGE = "sagemaker_inference"
# The image version: SDK v3's image_uri_config/ray-serve.json names version "1.4" (Ray 2.57, Python
# 3.13, torch 2.10) with a tag per processor; "1" follows the newest 1.x.
IMAGE_VERSION = "1.4"
IMAGE_REPOSITORY = "ray"
IMAGE_TAGS = {"cpu": "serve-ml-sagemaker-cpu-v{version}", "gpu": "serve-ml-sagemaker-cuda-v{version}"}
# The host image a GPU endpoint needs: the default one's NVIDIA driver is too old for the CUDA 12.9
# image (AWS's Ray Serve SageMaker deployment guide, "Notes").
GPU_INFERENCE_AMI = "al2-ami-sagemaker-inference-gpu-3-1"
# The ECR account of the image in each region (SDK v3's image_uri_config/ray-serve.json, "registries").
DEFAULT_REGISTRY = "763104351884"
REGISTRIES = {
    "af-south-1": "626614931356",
    "ap-east-1": "871362719292",
    "ap-east-2": "975050140332",
    "ap-northeast-3": "364406365360",
    "ap-south-2": "772153158452",
    "ap-southeast-3": "907027046896",
    "ap-southeast-4": "457447274322",
    "ap-southeast-5": "550225433462",
    "ap-southeast-6": "633930458069",
    "ap-southeast-7": "590183813437",
    "ca-west-1": "204538143572",
    "cn-north-1": "727897471807",
    "cn-northwest-1": "727897471807",
    "eu-central-2": "380420809688",
    "eu-south-1": "692866216735",
    "eu-south-2": "503227376785",
    "il-central-1": "780543022126",
    "me-central-1": "914824155844",
    "me-south-1": "217643126080",
    "mx-central-1": "637423239942",
    "us-gov-east-1": "446045086412",
    "us-gov-west-1": "442386744353",
}
# The regions where the account is DEFAULT_REGISTRY; any other region has no Ray Serve image.
DEFAULT_REGISTRY_REGIONS = (
    "ap-northeast-1",
    "ap-northeast-2",
    "ap-south-1",
    "ap-southeast-1",
    "ap-southeast-2",
    "ca-central-1",
    "eu-central-1",
    "eu-north-1",
    "eu-west-1",
    "eu-west-2",
    "eu-west-3",
    "sa-east-1",
    "us-east-1",
    "us-east-2",
    "us-west-1",
    "us-west-2",
)


def is_gpu_instance(instance_type: str | None) -> bool:
    """ml.g* and ml.p* carry NVIDIA GPUs; None (serverless) and the rest are CPUs."""
    return bool(instance_type) and instance_type.split(".")[1][:1] in ("g", "p")


def image_uri(config: ProjectConfig, region: str, instance_type: str | None) -> str:
    """The Ray Serve image for `instance_type` in `region`; [images.inference] image_uri, when set, as it is.
    ValueError naming the region when AWS publishes none there."""
    custom = config.section("images")["inference"].get("image_uri")
    if custom:
        return custom
    if region in REGISTRIES:
        account = REGISTRIES[region]
    elif region in DEFAULT_REGISTRY_REGIONS:
        account = DEFAULT_REGISTRY
    else:
        raise ValueError(f"AWS publishes no Ray Serve image in {region}")
    domain = "amazonaws.com.cn" if aws_tables.partition(region) == "aws-cn" else "amazonaws.com"
    tag = IMAGE_TAGS["gpu" if is_gpu_instance(instance_type) else "cpu"].format(version=IMAGE_VERSION)
    return f"{account}.dkr.ecr.{region}.{domain}/{IMAGE_REPOSITORY}:{tag}"


def inference_ami_version(instance_type: str | None) -> str | None:
    """The host image `deploy` must ask for: GPU instances only."""
    return GPU_INFERENCE_AMI if is_gpu_instance(instance_type) else None


def toolkit_source() -> Path:
    """The installed sagemaker-inference package's folder (the `local` extra brings it); MissingExtraError,
    in one line, where it is not installed (a core install, as in SageMaker Studio)."""
    spec = importlib.util.find_spec(TOOLKIT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise extras.MissingExtraError(
            f"a Ray Serve package carries the sagemaker-inference toolkit, not installed here: "
            f"{extras.install_command('local')} (or pip install 'sagemaker-inference>=1.10')"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _without_caches(folder: str, names: list[str]) -> list[str]:
    return [name for name in names if name == "__pycache__" or name.endswith(".pyc")]


def lay_out(config: ProjectConfig, trained_model: Path, folder: Path) -> Path:
    """Write the package's files into the empty `folder` (as /opt/ml/model holds them); returns it.

    `trained_model` is the training job's model.tar.gz (model.pth + metadata.json at its root)."""
    from . import sdk  # the SDK of the project's generation: imported by the one function that repacks

    with tempfile.TemporaryDirectory(prefix="ray-package-") as scratch:
        repacked = sdk.sagemaker_api(config).repack_model_locally(
            config, trained_model, Path(scratch) / "model.tar.gz"
        )
        with tarfile.open(repacked) as tar:
            tar.extractall(folder, filter="data")
    for name in PACKAGE_FILES:
        shutil.copy2(config.root / RAY_SERVE_DIR / name, folder / name)
    shutil.copytree(toolkit_source(), folder / "code" / "lib" / TOOLKIT_PACKAGE, ignore=_without_caches)
    return folder


def build_package(config: ProjectConfig, trained_model: Path, destination: Path) -> Path:
    """model.tar.gz for the Ray Serve container, written to `destination` whole or not at all."""
    destination = Path(destination)
    with tempfile.TemporaryDirectory(prefix="ray-package-") as scratch:
        folder = lay_out(config, trained_model, Path(scratch) / "model")
        partial = destination.with_name(destination.name + ".partial")
        with tarfile.open(partial, "w:gz") as tar:
            for path in sorted(folder.iterdir()):
                tar.add(path, arcname=path.name, filter=_no_caches_in_archive)
        partial.replace(destination)
    return destination


def _no_caches_in_archive(member: tarfile.TarInfo) -> tarfile.TarInfo | None:
    return None if "__pycache__" in Path(member.name).parts else member


def upload_package(config: ProjectConfig, aws: AwsContext, model_data: str, *, model_name: str) -> str:
    """`model_data` (an S3 URI) packaged for AWS's Ray Serve container (config.yaml, deployment.py and
    the same code/ as TorchServe's) and uploaded beside the project's models; its S3 URI."""
    bucket, _, key = model_data.removeprefix("s3://").partition("/")
    package_key = aws.s3_key("models", model_name, "ray-serve", "model.tar.gz")
    with tempfile.TemporaryDirectory(prefix="ray-serve-") as scratch:
        trained = Path(scratch) / "trained.tar.gz"
        aws.client("s3").download_file(bucket, key, str(trained))
        package = build_package(config, trained, Path(scratch) / "model.tar.gz")
        aws.client("s3").upload_file(str(package), aws.bucket, package_key)
    return aws.s3_uri("models", model_name, "ray-serve", "model.tar.gz")
