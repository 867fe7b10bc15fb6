"""The int8 artifact across PyTorch and Python versions: written by the training image's torch, served by
each serving image's.

The int8 model is ONNX (training/quantize.py): the training image's torch exports it and ONNX
Runtime quantizes it; serving reads it with ONNX Runtime alone, so what could differ between
images is ONNX Runtime's version and the Python around it, not torch's. This checks it end to end.

Builds one virtual environment per role (once; several GB each, CPU is enough):
  training    the training image's torch, with training/requirements.txt (onnx, onnxscript,
              onnxruntime) and numpy 2
  torchserve  the PyTorch 2.6 inference image's torch and Python 3.12, with inference/requirements.txt
  rayserve    a Python 3.13 environment as in the Ray Serve container, with inference/requirements.txt
(`--env role=python:torch:torchvision` changes one), then, for every backbone the template offers:
  1. in the training environment: train_model.py's main() trains one epoch on a generated dataset and
     writes the artifact (model.pth, model_int8.onnx, metadata.json); inference.py's model_fn /
     predict_fn there give the int8 and float logits of a few generated images;
  2. in each serving environment: the same model_fn (from a code/ folder laid out as the SDK repacks it)
     loads that artifact and answers the same images;
and prints, per backbone and serving environment, whether int8 was served, the top-1 agreement and
the largest logit difference with what the training environment answered, and the job's figures
(accuracy cost, size, latency against float).

    python benchmarks/int8_across_versions.py --envs /tmp/int8-envs              # builds, then runs
    python benchmarks/int8_across_versions.py --envs /tmp/int8-envs --backbones resnet18
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
# role: (Python, torch, torchvision). training: config.toml's default training image; torchserve: the
# PyTorch 2.6 inference image; rayserve: the Ray Serve container's Python 3.13.
VERSIONS = {
    "training": ("3.12", "2.8.0", "0.23.0"),
    "torchserve": ("3.12", "2.6.0", "0.21.0"),
    "rayserve": ("3.13", "2.8.0", "0.23.0"),
}
# What the images bring besides torch (psutil: training's profiler; sagemaker-inference: inference.py's
# error class), and what our requirements files add.
EXTRA_PACKAGES = ["pillow", "numpy>=2", "psutil", "sagemaker-inference"]
REQUIREMENTS = {
    "training": PROJECT_ROOT / "training" / "requirements.txt",
    "torchserve": PROJECT_ROOT / "inference" / "requirements.txt",
    "rayserve": PROJECT_ROOT / "inference" / "requirements.txt",
}
BACKBONES = ("resnet18", "resnet34", "resnet50", "efficientnet_b0", "mobilenet_v3_large", "convnext_tiny")
IMAGE_SIZE = 64  # small, so that six backbones train in minutes on a CPU; the kernels are the same


def python(version: str) -> str:
    """A Python `version` interpreter: pyenv's if there is one."""
    try:
        prefix = subprocess.run(
            ["pyenv", "prefix", version], capture_output=True, text=True, check=True
        ).stdout.strip()
        return str(Path(prefix) / "bin" / f"python{version}")
    except (OSError, subprocess.CalledProcessError):
        found = shutil.which(f"python{version}")
        if not found:
            raise SystemExit(f"no Python {version}: install it (pyenv install {version})") from None
        return found


def build_env(folder: Path, role: str) -> Path:
    """folder/<role>: a venv with that image's torch and torchvision from PyPI; reused when it has them."""
    python_version, torch_version, vision_version = VERSIONS[role]
    env = folder / role
    interpreter = env / "bin" / "python"
    imports = "import torch, torchvision, PIL, numpy, psutil, sagemaker_inference, onnxruntime"
    check = [str(interpreter), "-c", f"{imports}; assert torch.__version__.startswith({torch_version!r})"]
    if interpreter.exists() and subprocess.run(check, capture_output=True).returncode == 0:
        return interpreter
    if not interpreter.exists():
        subprocess.run([python(python_version), "-m", "venv", str(env)], check=True)
    packages = [f"torch=={torch_version}", f"torchvision=={vision_version}", *EXTRA_PACKAGES]
    print(f"installing {' '.join(packages)} into {env} (several GB) ...", flush=True)
    subprocess.run(
        [str(interpreter), "-m", "pip", "install", "-q", *packages, "-r", str(REQUIREMENTS[role])], check=True
    )
    return interpreter


def code_dir(workdir: Path) -> Path:
    """code/ as PyTorchModel(dependencies=["classifier"]) repacks it: inference.py, lib/classifier/."""
    code = workdir / "code"
    if not code.exists():
        shutil.copytree(PROJECT_ROOT / "inference", code, ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copytree(
            PROJECT_ROOT / "classifier",
            code / "lib" / "classifier",
            ignore=shutil.ignore_patterns("__pycache__"),
        )
    return code


# --- run inside an environment (this file calls itself with --step) ---------------------------------


def _serve(code: Path, model_dir: Path, images: Path, precision: str) -> dict:
    """model_fn + predict_fn of inference.py on the saved images, with $CLASSIFIER_QUANTIZE=precision."""
    import torch

    os.environ["CLASSIFIER_QUANTIZE"] = precision
    sys.path.insert(0, str(code))
    import inference

    model = inference.model_fn(str(model_dir))
    bodies = [path.read_bytes() for path in sorted(images.glob("*.jpg"))]
    logits = torch.cat(
        [inference.predict_fn(inference.input_fn(body, "image/jpeg"), model).logits for body in bodies]
    )
    return {"onnx": type(model.network).__name__ == "OnnxNetwork", "logits": logits.tolist()}


def step_write(work: Path, backbone: str) -> None:
    import random

    import torch

    sys.path[:0] = [str(PROJECT_ROOT / "training"), str(PROJECT_ROOT), str(PROJECT_ROOT / "src")]
    import train_model
    from PIL import Image

    from classifier.backbones import build_model

    data = work / "data"
    if not data.exists():  # three hues with noise: learnable in an epoch, so the figures mean something
        rng = random.Random(0)
        for split, count in (("train", 16), ("valid", 6), ("test", 2)):
            for index in range(3):
                folder = data / split / f"{index + 1:03d}.Class_{index + 1}"
                folder.mkdir(parents=True)
                for n in range(count):
                    colour = [
                        int(255 * c) for c in ((index == 0) * 0.8, (index == 1) * 0.8, (index == 2) * 0.8)
                    ]
                    image = Image.new("RGB", (80, 60), tuple(colour))
                    noise = Image.effect_noise((80, 60), 40).convert("RGB")
                    Image.blend(image, noise, 0.3 + rng.random() * 0.1).save(folder / f"{n}.jpg", quality=90)
        (work / "images").mkdir()
        for n, path in enumerate(sorted((data / "test").rglob("*.jpg"))):
            shutil.copy(path, work / "images" / f"{n}.jpg")
    build_model(backbone, 3)  # fails early for a name torchvision lacks
    out = work / backbone
    args = train_model.get_args_parser("write").parse_args(
        [
            *("--epochs", "1", "--batch_size", "8", "--test_batch_size", "8", "--lr", "0.001"),
            *("--backbone", backbone, "--image_size", str(IMAGE_SIZE), "--finetune", "full"),
            *("--pretrained", "false", "--num_workers", "0", "--quantize", "int8"),
            *("--data_dir", str(data), "--model_dir", str(out / "model")),
            *("--output_data_dir", str(out / "output"), "--checkpoint_dir", str(out / "checkpoints")),
        ]
    )
    train_model.main(args, evaluate_test=True)
    served = {p: _serve(code_dir(work), out / "model", work / "images", p) for p in ("int8", "float")}
    (out / "written.json").write_text(json.dumps({"torch": torch.__version__, **served}))


def step_read(work: Path, backbone: str, role: str) -> None:
    import torch

    served = {
        p: _serve(code_dir(work), work / backbone / "model", work / "images", p) for p in ("int8", "float")
    }
    (work / backbone / f"read-{role}.json").write_text(json.dumps({"torch": torch.__version__, **served}))


# --- the driver ------------------------------------------------------------------------------------------


def compare(work: Path, backbone: str, role: str) -> str:
    import torch

    written = json.loads((work / backbone / "written.json").read_text())
    read = json.loads((work / backbone / f"read-{role}.json").read_text())
    parts = []
    for precision in ("int8", "float"):
        before, after = torch.tensor(written[precision]["logits"]), torch.tensor(read[precision]["logits"])
        agree = (before.argmax(1) == after.argmax(1)).float().mean().item()
        parts.append(
            f"{precision}: top-1 {agree:.0%} same, max |logit diff| {(before - after).abs().max().item():.2g}"
        )
    served = written["int8"]["onnx"] and read["int8"]["onnx"]
    return f"  read by {role:<10} (torch {read['torch']}): int8 served in both: {served}; " + "; ".join(parts)


def job_figures(work: Path, backbone: str) -> str:
    metadata = json.loads((work / backbone / "model" / "metadata.json").read_text())["quantization"]
    if not metadata.get("available"):
        return f"{backbone:<20} float only: {metadata.get('reason')}"
    return (
        f"{backbone:<20} in the job: accuracy cost {metadata['accuracy_drop_points']:+.2f} points, top-1 "
        f"agreement {metadata['agreement']:.0%}; {metadata['int8_bytes'] / 1e6:.1f} MB "
        f"(float {metadata['float_bytes'] / 1e6:.1f} MB); one image {metadata['int8_cpu_ms']:.1f} ms "
        f"(float {metadata['float_cpu_ms']:.1f} ms)"
    )


def parse_env(text: str) -> tuple[str, tuple[str, str, str]]:
    role, _, versions = text.partition("=")
    parts = tuple(versions.split(":"))
    if role not in VERSIONS or len(parts) != 3:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected ROLE=PYTHON:TORCH:TORCHVISION, ROLE one of {list(VERSIONS)}"
        )
    return role, parts


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--envs", type=Path, required=True, help="where the environments live (built once)")
    parser.add_argument(
        "--env",
        type=parse_env,
        action="append",
        default=[],
        help="ROLE=PYTHON:TORCH:TORCHVISION, e.g. training=3.13:2.10.0:0.25.0",
    )
    parser.add_argument("--backbones", nargs="+", default=list(BACKBONES))
    parser.add_argument(
        "--work", type=Path, default=None, help="keep the artifacts here (default: a temp dir)"
    )
    parser.add_argument("--step", choices=("write", "read"), help=argparse.SUPPRESS)
    parser.add_argument("--backbone", help=argparse.SUPPRESS)
    parser.add_argument("--role", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.step:
        if args.step == "write":
            step_write(args.work, args.backbone)
        else:
            step_read(args.work, args.backbone, args.role)
        return
    VERSIONS.update(dict(args.env))
    envs = {role: build_env(args.envs, role) for role in VERSIONS}
    work = args.work or Path(tempfile.mkdtemp(prefix="int8-versions-"))
    lines = []
    for backbone in args.backbones:
        for role in VERSIONS:
            step = "write" if role == "training" else "read"
            command = [str(envs[role]), __file__, "--envs", str(args.envs), "--work", str(work)]
            result = subprocess.run(
                [*command, "--step", step, "--backbone", backbone, "--role", role],
                capture_output=True,
                text=True,
            )
            if result.returncode:
                lines.append(f"{backbone:<20} {step} in {role} failed: {result.stderr[-600:]}")
                if step == "write":
                    break
                continue
            int8_lines = [line for line in result.stdout.splitlines() if line.startswith("int8:")]
            if int8_lines:  # the training job's own account
                print(f"[{backbone} / {role}] " + " | ".join(int8_lines), flush=True)
            if step == "write":
                lines.append(job_figures(work, backbone))
            else:
                lines.append(compare(work, backbone, role))
    print(f"\nwritten by the training environment, {VERSIONS['training']} (artifacts in {work}):")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
