"""How fast the training data pipeline is, against the reference project's loader.

On the same generated JPEGs (dogImages-like, 500x375 by default), in one run:
  1. images per second of a reference-style loader (ImageFolder, full PIL decode,
     RandomResizedCrop(224), ToTensor, Normalize) on the original JPEGs, and of ours (crop box
     drawn first, torchvision's decode_jpeg, crop and resize in uint8 in the workers, batches in
     shared memory each worker reuses, scaling on whole batches where the model runs) on the copy
     `data prepare` writes by default (shorter side = the eval preset's resize size, 256 for 224)
     and on the originals; then with the pixel cache training uses by default, the first epoch of
     a job (it decodes and keeps each image), a later one (crops from kept pixels), and a job of
     config.toml's epochs overall; the dataset's size before and after that one-time preparation;
     goal: 3x the reference, prepared;
  2. what each step costs per image, on one thread (what dominates);
  3. a few head-only epochs both ways on generated hues, prepared and not: validation accuracy
     of each (the preparation must not cost accuracy);
  4. a head-only epoch with and without the feature cache.
Both loaders get the same images, batch size and number of workers, so the ratio is per-image work.

    python benchmarks/bench_training_data.py                 # about two minutes on 2 cores
    python benchmarks/bench_training_data.py --images 2000 --workers 8 --backbone resnet50
"""

from __future__ import annotations

import argparse
import importlib
import io
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from PIL import Image, ImageFilter

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

PROJECT_ROOT = Path(__file__).resolve().parents[1]
# The training scripts' own modules, imported as SageMaker runs them: from the training folder.
sys.path[:0] = [str(PROJECT_ROOT / "training"), str(PROJECT_ROOT), str(PROJECT_ROOT / "src")]
# The package's name is data (config.toml), as in the tests; its `prepare` writes the pre-resized copy.
CONFIG = tomllib.loads((PROJECT_ROOT / "config.toml").read_text(encoding="utf-8"))
PACKAGE = CONFIG["project"]["package"]
EPOCHS = CONFIG["hyperparameters"]["epochs"]
prepare_dataset = importlib.import_module(f"{PACKAGE}.workflow.dataset").prepare
make_dataset = importlib.import_module(f"{PACKAGE}.workflow.synthetic").make_dataset

from data import ImageFiles, auto_num_workers, discover_splits, make_loader  # noqa: E402
from feature_cache import extract_features  # noqa: E402
from loaders import feature_preparer, image_preparer, pixel_cache  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402
from torchvision import datasets  # noqa: E402
from torchvision import transforms as v1  # noqa: E402
from torchvision.io import decode_jpeg  # noqa: E402

from classifier.backbones import build_model, head  # noqa: E402
from classifier.presets import IMAGENET_MEAN, IMAGENET_STD, EvalPreset, TrainPreset, resize_size_for  # noqa: E402


def photo_like(size: tuple[int, int], rng: random.Random) -> bytes:
    """A smooth, textured picture: compresses and decodes like a photo, unlike flat colour."""
    small = Image.frombytes(
        "RGB", (size[0] // 16, size[1] // 16), rng.randbytes(size[0] // 16 * (size[1] // 16) * 3)
    )
    image = small.resize(size, Image.BICUBIC).filter(ImageFilter.DETAIL)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def make_images(root: Path, images: int, classes: int, size: tuple[int, int]) -> Path:
    rng = random.Random(0)
    for split, count in (("train", images), ("valid", classes), ("test", classes)):
        for n in range(count):
            folder = root / split / f"{n % classes + 1:03d}.Class_{n % classes + 1:03d}"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{n:05d}.jpg").write_bytes(photo_like(size, rng))
    return root


def resized_copy(source: Path, destination: Path, shorter_side: int) -> tuple[Path, object]:
    """What `data prepare` writes by default (shorter side `shorter_side`), by the package's own `prepare`."""
    return destination, prepare_dataset(source, destination, resize_to=shorter_side)


def epoch_rate(loader: DataLoader, finish: Callable) -> float:
    """Images per second over one epoch, `finish` applied to each batch."""
    count, started = 0, time.perf_counter()
    for batch in loader:
        finish(batch)
        count += len(batch[1]) if isinstance(batch, list | tuple) else len(batch.labels)
    return count / (time.perf_counter() - started)


def round_rates(loaders: dict[str, tuple], rounds: int) -> dict[str, list[float]]:
    """Each loader's rate in each of `rounds` epochs, after a warm-up epoch that starts its workers.

    Each entry is (loader, finish) or (loader, finish, before), `before` run ahead of each of its
    timed epochs. The loaders take turns epoch by epoch, so a round's epochs ran under the same
    conditions: the ratio within a round is what is compared (its median over the rounds), as a
    shared machine slows everything by tens of percent from one minute to the next.
    """
    for loader, finish, *_ in loaders.values():
        epoch_rate(loader, finish)
    rates: dict[str, list[float]] = {name: [] for name in loaders}
    for _ in range(rounds):
        for name, (loader, finish, *before) in loaders.items():
            for step in before:
                step()
            rates[name].append(epoch_rate(loader, finish))
    return rates


def job_rates(first: list[float], later: list[float], epochs: int) -> list[float]:
    """Images/s over a job of `epochs` epochs, the first at `first` and the rest at `later`, per round."""
    return [epochs / (1 / a + (epochs - 1) / b) for a, b in zip(first, later, strict=True)]


def median_ratio(ours: list[float], reference: list[float]) -> float:
    return statistics.median(a / b for a, b in zip(ours, reference, strict=True))


def stage_times(folder: Path, train: TrainPreset, reference: v1.Compose) -> None:
    """Milliseconds per image of each step, in this process (on one thread, as a worker)."""
    bodies = [path.read_bytes() for path in sorted(folder.rglob("*.jpg"))[:40]]

    def opened(i: int) -> Image.Image:  # header read, pixels not decoded: what a worker starts from
        return Image.open(io.BytesIO(bodies[i]))

    def raw(i: int) -> torch.Tensor:
        return torch.frombuffer(bytearray(bodies[i]), dtype=torch.uint8)

    decoded = [opened(i).convert("RGB") for i in range(len(bodies))]
    crop, to_tensor, normalize = reference.transforms
    crops = [crop(image) for image in decoded]
    floats = [to_tensor(image) for image in crops]
    batch = torch.stack([train.uint8(opened(i)) for i in range(len(bodies))])
    kept = [train.to_keep(opened(i)) for i in range(len(bodies))]
    steps = {
        "reference: full PIL decode": lambda i: opened(i).convert("RGB"),
        "reference: RandomResizedCrop (PIL)": lambda i: crop(decoded[i]),
        "reference: ToTensor": lambda i: to_tensor(crops[i]),
        "reference: Normalize": lambda i: normalize(floats[i]),
        "ours: decode_jpeg (full scale)": lambda i: decode_jpeg(raw(i)),
        "ours: TrainPreset.uint8 (decode, crop, resize, flip)": lambda i: train.uint8(opened(i)),
        "ours: TrainPreset.from_kept (crop, resize, flip)": lambda i: train.from_kept(kept[i]),
        "ours: scaling, per image of a batch": lambda i: train.scaling(batch[i : i + 1]),
    }
    print("per image, one thread (best of 5):")
    for name, step in steps.items():
        best = min(_seconds(step, len(bodies)) for _ in range(5))
        print(f"  {name:<54} {best * 1000:6.3f} ms")


def _seconds(step: Callable[[int], object], count: int) -> float:
    started = time.perf_counter()
    for index in range(count):
        step(index)
    return (time.perf_counter() - started) / count


def reference_transform() -> v1.Compose:
    return v1.Compose(
        [v1.RandomResizedCrop(224), v1.ToTensor(), v1.Normalize(list(IMAGENET_MEAN), list(IMAGENET_STD))]
    )


def reference_loader(root: Path, batch_size: int, workers: int) -> DataLoader:
    return DataLoader(
        datasets.ImageFolder(root / "train", reference_transform()),
        batch_size=batch_size,
        shuffle=True,
        num_workers=workers,
        persistent_workers=workers > 0,
    )


def our_loader(
    root: Path, batch_size: int, workers: int, transform, split: str = "train", cache=None, preset=None
):
    _, splits = discover_splits(root)
    return make_loader(
        ImageFiles(splits[split], transform, cache, preset),
        batch_size,
        shuffle=split == "train",
        seed=0,
        num_workers=workers,
        distributed=False,
        pin_memory=False,
    )


def reference_eval_loader(root: Path, batch_size: int, workers: int) -> DataLoader:
    preset = v1.Compose(
        [
            v1.Resize(256),
            v1.CenterCrop(224),
            v1.ToTensor(),
            v1.Normalize(list(IMAGENET_MEAN), list(IMAGENET_STD)),
        ]
    )
    return DataLoader(
        datasets.ImageFolder(root / "valid", preset), batch_size=batch_size, num_workers=workers
    )


def validation_accuracy(train, valid, finish: Callable, backbone: str, classes: int, epochs: int) -> float:
    """Head-only epochs (frozen random backbone: the augmentation and the input differ, nothing else)."""
    torch.manual_seed(0)
    model = build_model(backbone, classes, pretrained=False, finetune="head").eval()
    optimizer = torch.optim.AdamW(head(model).parameters(), lr=0.02)
    criterion = torch.nn.CrossEntropyLoss()

    def pairs(loader):
        for batch in loader:
            yield finish(batch)

    for _ in range(epochs):
        for inputs, labels in pairs(train):
            optimizer.zero_grad()
            criterion(model(inputs), labels).backward()
            optimizer.step()
    correct = count = 0
    with torch.no_grad():
        for inputs, labels in pairs(valid):
            correct += (model(inputs).argmax(1) == labels).sum().item()
            count += len(labels)
    return correct / count


def head_epochs(
    root: Path, backbone: str, batch_size: int, workers: int, epochs: int
) -> tuple[float, float, float]:
    """Seconds per head-only epoch decoding every time, the one-off cache build, seconds per cached epoch."""
    model = build_model(backbone, 4, pretrained=False, finetune="head")
    preset = EvalPreset(224)
    device = torch.device("cpu")
    prepare_images = image_preparer(device, preset.scaling, channels_last=False)
    loader = our_loader(root, batch_size, workers, preset.uint8)
    classifier = head(model)
    optimizer = torch.optim.AdamW(classifier.parameters(), lr=1e-3)
    criterion = torch.nn.CrossEntropyLoss()

    def epoch(batches, prepare, module) -> float:
        started = time.perf_counter()
        for batch in batches:
            inputs, labels = prepare(batch)
            loss = criterion(module(inputs), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        return time.perf_counter() - started

    model.eval()
    uncached = epoch(loader, prepare_images, model)
    started = time.perf_counter()
    features = extract_features(model, classifier, loader, prepare_images, lambda _failed: None)
    build = time.perf_counter() - started
    cached_loader = make_loader(
        features, batch_size, shuffle=True, seed=0, num_workers=0, distributed=False, pin_memory=False
    )
    cached = min(epoch(cached_loader, feature_preparer(device), classifier) for _ in range(epochs))
    return uncached, build, cached


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # An epoch long enough that starting and draining the workers (tens of ms) does not favour either
    # loader; dogImages' is 6680.
    parser.add_argument("--images", type=int, default=960, help="training images to generate")
    parser.add_argument("--width", type=int, default=500)
    parser.add_argument("--height", type=int, default=375)
    parser.add_argument("--batch_size", type=int, default=40)
    parser.add_argument(
        "--workers", type=int, default=auto_num_workers(), help="loader workers, both loaders"
    )
    parser.add_argument("--rounds", type=int, default=5, help="timed epochs per loader, taking turns")
    parser.add_argument(
        "--epochs", type=int, default=EPOCHS, help="epochs of the job the pixel cache's overall rate is for"
    )
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--head_images", type=int, default=80, help="images for the head-only epochs")
    parser.add_argument("--cached_epochs", type=int, default=3)
    parser.add_argument("--classes", type=int, default=6, help="hues of the accuracy comparison")
    parser.add_argument("--train_per_class", type=int, default=16)
    parser.add_argument("--train_epochs", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)

    with tempfile.TemporaryDirectory() as tmp:
        originals = make_images(Path(tmp) / "dogImages", args.images, 4, (args.width, args.height))
        resized, manifest = resized_copy(originals, Path(tmp) / "resized", resize_size_for(224))
        train = TrainPreset(224)
        print(
            f"{args.images} JPEGs of {args.width}x{args.height}, batch {args.batch_size}, "
            f"{args.workers} workers per loader",
            flush=True,
        )
        print(
            f"data prepare, shorter side {manifest.resized_to}: {manifest.source_bytes / 1e6:.1f} MB before, "
            f"{manifest.written_bytes / 1e6:.1f} MB after "
            f"({manifest.written_bytes / manifest.source_bytes:.0%})",
            flush=True,
        )

        def scale_batch(batch):  # the batch the model gets; the worker's memory is then free again
            scaled = train.scaling(batch.inputs)
            batch.release()
            return scaled

        # One thread in this process, for both loaders: on a GPU the scaling runs there, and a second
        # OpenMP thread here would only spin on the cores the workers need.
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        _, resized_splits = discover_splits(resized)
        cache = pixel_cache(resized_splits["train"], train, 10**12, print)  # as train_model.py builds it
        kept = our_loader(resized, args.batch_size, args.workers, train.uint8, cache=cache, preset=train)
        rates = round_rates(
            {
                "reference": (reference_loader(originals, args.batch_size, args.workers), lambda b: b),
                "ours": (our_loader(originals, args.batch_size, args.workers, train.uint8), scale_batch),
                "resized": (our_loader(resized, args.batch_size, args.workers, train.uint8), scale_batch),
                # A job's first epoch (an empty cache: it decodes and keeps), then a later one.
                "first": (kept, scale_batch, cache.clear),
                "later": (kept, scale_batch),
                # As the reference project ran it: DataLoader's default, no worker processes.
                "shipped": (reference_loader(originals, args.batch_size, 0), lambda b: b),
            },
            args.rounds,
        )
        rates["job"] = job_rates(rates["first"], rates["later"], args.epochs)
        median = {name: statistics.median(values) for name, values in rates.items()}
        reference = rates["reference"]
        print(f"loader, median of {args.rounds} epochs each; x = median of the ratios within a round:")
        print(f"  reference as shipped (0 workers):    {median['shipped']:8.1f} images/s")
        print(f"  reference (ImageFolder + ToTensor):  {median['reference']:8.1f} images/s")
        print(
            f"  ours on the same JPEGs:              {median['ours']:8.1f} images/s  "
            f"({median_ratio(rates['ours'], reference):.2f}x)"
        )
        print(
            f"  ours after data prepare:             {median['resized']:8.1f} images/s  "
            f"({median_ratio(rates['resized'], reference):.2f}x the reference on the originals; goal: 3x)",
        )
        print("  ours after data prepare, with the pixel cache (the default; its ratios as above):")
        for name, label in (
            ("first", "first epoch (decodes, keeps)"),
            ("later", "later epochs (kept pixels)"),
            ("job", f"a {args.epochs}-epoch job, overall"),
        ):
            ratio = median_ratio(rates[name], reference)
            print(f"    {label + ':':<33} {median[name]:8.1f} images/s  ({ratio:.2f}x)", flush=True)
        stage_times(originals / "train", train, reference_transform())
        torch.set_num_threads(threads)

        hues = make_dataset(
            Path(tmp) / "hues",
            num_classes=args.classes,
            images_per_class={"train": args.train_per_class, "valid": 6, "test": 1},
            size=(args.width, args.height),
        )
        prepared_hues, _ = resized_copy(hues, Path(tmp) / "hues-prepared", resize_size_for(224))
        eval_preset = EvalPreset(224)
        ours_finish = lambda batch: (eval_preset.scaling(batch.inputs), batch.labels)  # noqa: E731
        runs = {
            "reference, originals": (
                reference_loader(hues, args.batch_size, args.workers),
                reference_eval_loader(hues, args.batch_size, args.workers),
                tuple,
            ),
            "ours, originals": (
                our_loader(hues, args.batch_size, args.workers, train.uint8),
                our_loader(hues, args.batch_size, args.workers, eval_preset.uint8, "valid"),
                ours_finish,
            ),
            "ours, after data prepare": (
                our_loader(prepared_hues, args.batch_size, args.workers, train.uint8),
                our_loader(prepared_hues, args.batch_size, args.workers, eval_preset.uint8, "valid"),
                ours_finish,
            ),
        }
        print(
            f"validation accuracy after {args.train_epochs} head-only epochs ({args.backbone}, "
            "random backbone, "
            f"{args.classes} hues, {args.train_per_class} training images each):"
        )
        for name, (train_loader, valid_loader, finish) in runs.items():
            accuracy = validation_accuracy(
                train_loader, valid_loader, finish, args.backbone, args.classes, args.train_epochs
            )
            print(f"  {name:<26} {accuracy:.4f}", flush=True)

        head_data = make_images(Path(tmp) / "head", args.head_images, 4, (args.width, args.height))
        uncached, build, cached = head_epochs(
            head_data, args.backbone, args.batch_size, args.workers, args.cached_epochs
        )
        print(f"head-only epoch ({args.backbone}, CPU), decoding every epoch: {uncached:7.2f} s")
        print(
            f"feature cache: built once in {build:.2f} s, then {cached:.4f} s per epoch "
            f"({uncached / cached:.0f}x faster epochs)"
        )


if __name__ == "__main__":
    main()
