"""Train the classifier with SageMaker Debugger's hook, test the best epoch, save it for the endpoint.

What runs where. On SageMaker the PyTorch training image runs `python train_model.py --epochs 5
--batch_size 40 --lr 0.005 ...` (every hyperparameter as `--name value`) from training/ (the estimator's
source_dir, classifier/ shipped beside it); with torch_distributed, torchrun starts one process per GPU.
Images come from SM_CHANNEL_TRAINING (train/, valid/, test/), the model goes to SM_MODEL_DIR, checkpoints
to /opt/ml/checkpoints. `train --local` runs this same file on this machine, with every path a flag.

Top to bottom: `net()` builds the network; `train()` and `test()` each run one pass, the hook's
`set_mode(TRAIN / EVAL / PREDICT)` first; `create_hook()` makes the hook from the JSON SageMaker writes
and `main()` registers it on the model and the loss (`register_module`, `register_loss`); `main()` and
`get_args_parser()` end the file.
hpo.py runs this same `main()` with the hook off and no test pass.

Without smdebug (the training image cannot install it: requirements.txt says why) or without SageMaker's
hook configuration, the hook is a stand-in whose calls do nothing, and one log line says so; the rules
named in `--rules` are still judged inside the job (watchers.py, rules.py), which needs no smdebug.

Where MLFLOW_TRACKING_URI is set (`train --local`: the project's mlflow.db; a job: config.toml [tracking]
server_arn), tracking.py records the run in MLflow: parameters, a point per epoch, and at the end the
verdicts and files. It never stops the job.

Prints `validation:loss=<value> validation:accuracy=<value>` per epoch and for the best epoch, then
`test:loss=<value> test:accuracy=<value>` for the saved (best) epoch.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from checkpoints import (
    CHECKPOINT_FILENAME,
    Progress,
    restore_best,
    resume,
    save_checkpoint,
    saving,
    usable_checkpoint_dir,
)
from cluster import Cluster, init_cluster, seed_everything
from data import Batch, set_loader_epoch
from debugger import DebuggerHook
from epoch import Stage, objective_line, progress_line, set_train_mode, timed
from export import quantize_for_cpu, save
from loaders import Data, discover, load_data
from optimisation import Training, build_training
from rules import parse_rule_parameters, parse_rules
from torch import nn
from tracking import Tracker, start_tracking
from watchers import Watchers, judge, start_watchers

from classifier.backbones import WeightsUnavailable, build_model, has_batch_norm
from classifier.choices import FINETUNE_MODES, OPTIMIZERS, QUANTIZE_SETTINGS, SCHEDULERS

# The hook's modes (smdebug.pytorch.modes, by name): training steps, validation steps, the test pass.
TRAIN, EVAL, PREDICT = "TRAIN", "EVAL", "PREDICT"


def net(args: argparse.Namespace, cluster: Cluster, num_classes: int) -> nn.Module:
    """The torchvision backbone with a new `num_classes` head; finetune=head freezes all but the head."""
    if args.finetune == "head" and not args.pretrained:
        print(
            "WARNING model: finetune=head without pretrained weights trains only the last layer over a "
            "random network; expect accuracy near chance. Use pretrained=true, or finetune=full.",
            flush=True,
        )
    try:
        model = build_model(args.backbone, num_classes, pretrained=args.pretrained, finetune=args.finetune)
    except WeightsUnavailable as error:
        raise SystemExit(str(error)) from None  # one line in the job's log, not a torch.hub traceback
    # Moved once. On a GPU channels-last, the layout `image_preparer` (loaders.py) gives the batches there.
    on_gpu = cluster.device.type == "cuda"
    return model.to(cluster.device, memory_format=torch.channels_last if on_gpu else torch.preserve_format)


def create_hook(enabled: bool) -> DebuggerHook:
    """SageMaker Debugger's hook, from the JSON SageMaker writes for the estimator's DebuggerHookConfig:

        import smdebug.pytorch as smd
        hook = smd.Hook.create_from_json_file(json_path)  # /opt/ml/input/config/debughookconfig.json

    (debugger.py does exactly this), wrapped so that `set_mode(TRAIN)` and the rest are calls on it.
    Without smdebug or without the file (or `enabled` false) it is a stand-in whose calls do nothing.
    """
    return DebuggerHook.from_sagemaker_config(enabled)


def train(
    stage: Stage,
    loader: Iterable[Batch],
    finetune: str,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    on_failed: Callable[[list[int]], None],
    hook: DebuggerHook,
    first_step: int = 0,
) -> tuple[float, float]:
    """One epoch, one optimiser step per batch; returns the epoch's mean training loss and accuracy."""
    hook.set_mode(TRAIN)
    set_train_mode(stage.module, finetune)

    def step(loss: torch.Tensor, after_backward: Callable[[], None]) -> None:
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)  # the recorder reads true gradients (a no-op without AMP)
        after_backward()
        scaler.step(optimizer)
        scaler.update()

    return run_pass(stage, loader, on_failed, TRAIN, first_step, step)


@torch.no_grad()
def test(
    stage: Stage,
    loader: Iterable[Batch],
    on_failed: Callable[[list[int]], None],
    hook: DebuggerHook,
    mode: str = EVAL,
    first_step: int = 0,
) -> tuple[float, float]:
    """Mean loss and accuracy over every process's share of `loader`.

    `mode` is EVAL for validation, PREDICT for the final test pass: a test loss recorded as EVAL
    would be the last point of the validation curve, and rules comparing training with validation
    would judge test data.
    """
    hook.set_mode(mode)
    stage.module.eval()
    return run_pass(stage, loader, on_failed, mode, first_step)


def run_pass(
    stage: Stage,
    loader: Iterable[Batch],
    on_failed: Callable[[list[int]], None],
    mode: str,
    first_step: int = 0,
    step: Callable[[torch.Tensor, Callable[[], None]], None] | None = None,
) -> tuple[float, float]:
    """The forward pass (and, from train(), `step`: the backward) over every batch of `loader`.

    Steps are numbered from `first_step` per mode, as smdebug counts them; the observers (the in-job
    recorder and profiler) hear of each. Returns the mean loss and accuracy over every process.
    """
    observer = stage.observer
    loss_sum, correct, count = 0.0, 0, 0
    index = first_step
    progress = progress_line(stage, loader, mode)
    observer.begin_pass(mode, stage.epoch, first_step)
    for index, (batch, waited) in enumerate(timed(loader), start=first_step):
        on_failed(batch.failed)
        if not len(batch.labels):
            continue
        started = time.perf_counter()
        observer.begin_step(mode, index)
        inputs, labels = stage.prepare(batch)
        with torch.autocast(stage.cluster.device.type, dtype=torch.float16, enabled=stage.amp):
            logits = stage.module(inputs)
            loss = stage.criterion(logits, labels)
        if step is not None:
            step(loss, lambda index=index: observer.after_backward(mode, index))
        value = loss.item()  # also the point where the host waits for the device
        observer.end_step(mode, index, value, logits, labels, waited, time.perf_counter() - started)
        loss_sum += value * len(labels)
        correct += (logits.argmax(1) == labels).sum().item()
        count += len(labels)
        progress.step(index - first_step + 1, len(labels), value)
    observer.end_pass(mode, stage.epoch, index + 1)
    loss_sum, correct, count = stage.cluster.all_sum([loss_sum, correct, count])
    return loss_sum / max(count, 1), correct / max(count, 1)


def fit_epoch(
    args: argparse.Namespace,
    training: Training,
    data: Data,
    hook: DebuggerHook,
    progress: Progress,
    epoch: int,
    log: Callable[..., None],
    tracker: Tracker,
) -> bool:
    """train() and validate one epoch; keep it if it is the best so far. True: this epoch was the best."""
    started = time.perf_counter()
    torch.manual_seed(args.seed * 1_000_003 + epoch)  # dropout etc.: same after a restart
    set_loader_epoch(data.train, epoch)
    stage = training.stage
    stage.epoch = epoch
    train_loss, train_accuracy = train(
        stage,
        data.train,
        args.finetune,
        training.optimizer,
        training.scaler,
        data.on_failed("train"),
        hook,
        first_step=epoch * len(data.train),
    )
    valid_loss, valid_accuracy = test(
        stage, data.valid, data.on_failed("valid"), hook, EVAL, epoch * len(data.valid)
    )
    learning_rate = training.optimizer.param_groups[0]["lr"]  # the rate this epoch trained at
    training.scheduler.step()
    progress.history.append({"loss": valid_loss, "accuracy": valid_accuracy})
    took = time.perf_counter() - started
    log(
        f"epoch {epoch + 1}/{args.epochs}: train loss {train_loss:.4f} accuracy {train_accuracy:.4f}, "
        f"{took:.1f}s",
        flush=True,
    )
    tracker.log_epoch(
        epoch + 1,
        {
            "train_loss": train_loss,
            "train_accuracy": train_accuracy,
            "validation_loss": valid_loss,
            "validation_accuracy": valid_accuracy,
            "learning_rate": learning_rate,
            "epoch_seconds": took,
        },
    )
    log(objective_line(valid_loss, valid_accuracy), flush=True)
    if valid_loss < progress.best["loss"] - args.min_delta:
        progress.best = {"loss": valid_loss, "accuracy": valid_accuracy, "epoch": epoch}
        progress.stale_epochs = 0
        progress.best_state = {k: v.detach().cpu().clone() for k, v in training.trained.state_dict().items()}
        return True
    progress.stale_epochs += 1
    return False


def fit(
    args: argparse.Namespace,
    training: Training,
    data: Data,
    hook: DebuggerHook,
    watchers: Watchers,
    progress: Progress,
    checkpoint_dir: Path | None,
    log: Callable[..., None],
    tracker: Tracker,
) -> Progress:
    """Epochs from `progress.start_epoch` until the last one or early stopping; checkpoint each."""
    cluster = training.stage.cluster
    for epoch in range(progress.start_epoch, args.epochs):
        improved = fit_epoch(args, training, data, hook, progress, epoch, log, tracker)
        progress.stopped_early = args.patience > 0 and progress.stale_epochs >= args.patience
        if cluster.is_main and checkpoint_dir:
            save_checkpoint(args, training, watchers.recorder, progress, epoch, checkpoint_dir, improved)
            log(f"checkpoints: epoch {epoch + 1} saved", flush=True)
        cluster.barrier()
        if progress.stopped_early:
            log(f"early stopping: no better validation loss for {progress.stale_epochs} epochs", flush=True)
            break
    return progress


def main(
    args: argparse.Namespace, *, use_debugger: bool = False, evaluate_test: bool = False, tuning: bool = False
) -> dict:
    """Train, keep the best epoch by validation loss, save it; optionally evaluate it on test/.

    `use_debugger` (train_model.py): SageMaker's debugger hook, and the rules and profiler of
    `--rules` judged in the job. `evaluate_test` (train_model.py): the test pass and the int8 copy.
    `tuning` (hpo.py): the MLflow run goes under its tuning job's parent run (tracking.py).
    """
    check_args(args)
    cluster = init_cluster()
    seed_everything(args.seed)
    log = print if cluster.is_main else (lambda *a, **k: None)
    started = time.perf_counter()
    # Rank 0 only, and only where the launcher set MLFLOW_TRACKING_URI; never stops the job.
    tracker = start_tracking(args, tuning=tuning, enabled=cluster.is_main, log=log)

    splits = discover(args, log)
    model = net(args, cluster, len(splits[0]))
    data = load_data(args, cluster, model, splits, evaluate_test, log)
    training = build_training(args, cluster, model, data)

    # Rank 0 only: one hook and one recording per job. Every forward of the model is one hook step.
    hook = create_hook(use_debugger and cluster.is_main)
    hook.register_module(training.trained)
    hook.register_loss(training.stage.criterion)
    planned = {
        TRAIN: len(data.train) * args.epochs,
        EVAL: len(data.valid) * args.epochs,
        **({PREDICT: len(data.test)} if data.test is not None else {}),
    }
    hook.check_saved_steps(planned, "planned")
    watchers = start_watchers(args, training, data, enabled=use_debugger and cluster.is_main)

    checkpoint_dir = usable_checkpoint_dir(args.checkpoint_dir)
    checkpoint = checkpoint_dir / CHECKPOINT_FILENAME if checkpoint_dir else None
    progress = resume(args, training, watchers.recorder, checkpoint, log)
    progress = fit(args, training, data, hook, watchers, progress, checkpoint_dir, log, tracker)
    result = restore_best(training, progress, checkpoint_dir, log)
    if data.test is not None:
        test_loss, test_accuracy = test(training.stage, data.test, data.on_failed("test"), hook, PREDICT)
        log(objective_line(test_loss, test_accuracy, split="test"), flush=True)
        result.update(test_loss=test_loss, test_accuracy=test_accuracy)
    training.stage.observer.close()
    if hook.active:
        hook.check_saved_steps(hook.actual_steps(), "saved")
    hook.close()
    if cluster.is_main:
        judge(args, watchers, log)

    skipped = int(cluster.all_sum([float(data.failed.count)])[0])
    if data.failed.count:
        print(data.failed.report(), flush=True)
    log(f"skipped images in total: {skipped}", flush=True)
    result["skipped_images"] = skipped
    if cluster.is_main:
        # The deployed model (train_model.py's) gets an int8 copy; a tuning job's is ranked, not served.
        quantized = quantize_for_cpu(args, cluster, training, data, log) if evaluate_test else None
        with saving(Path(args.model_dir)):
            save(args, training, data, result, progress.history, quantized)
        took = time.perf_counter() - started
        log(f"model saved to {args.model_dir}; the whole run took {took:.1f}s", flush=True)
    tracker.finish(args, result)
    cluster.close()
    return result


def check_args(args: argparse.Namespace) -> None:
    """Refuse bad combinations before any data is read."""
    if args.optimizer not in OPTIMIZERS:
        raise SystemExit(f"unknown optimizer {args.optimizer!r}; choose {', '.join(OPTIMIZERS)}")
    if args.scheduler not in SCHEDULERS:
        raise SystemExit(f"unknown scheduler {args.scheduler!r}; choose {', '.join(SCHEDULERS)}")
    if args.feature_cache and args.finetune != "head":
        raise SystemExit(
            "feature_cache=true needs finetune=head: in full mode the backbone changes every step"
        )
    if not args.data_dir:
        raise SystemExit("no data: pass --data_dir or set SM_CHANNEL_TRAINING")
    for name in ("epochs", "batch_size", "test_batch_size", "train_save_interval", "eval_save_interval"):
        if getattr(args, name) < 1:
            raise SystemExit(f"{name} must be at least 1, got {getattr(args, name)}")
    if args.finetune == "full" and args.batch_size < 2 and has_batch_norm(args.backbone):
        raise SystemExit(
            f"batch_size {args.batch_size} cannot train {args.backbone} with finetune=full: BatchNorm cannot "
            "train on a batch of one image; use batch_size 2 or more, or finetune=head"
        )
    if args.profiler_interval_millis < 10:
        raise SystemExit(f"profiler_interval_millis must be at least 10, got {args.profiler_interval_millis}")
    try:
        parse_rules(args.rules)
        parse_rule_parameters(args.rule_parameters)
    except ValueError as error:
        raise SystemExit(str(error)) from None


def str2bool(value: str | bool) -> bool:
    """SageMaker passes booleans as "True"/"False"; accept true/false/True/False/1/0."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1"):
        return True
    if text in ("false", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected true, false, 1 or 0, got {value!r}")


def _sagemaker_base_dir() -> Path:
    # The training toolkit honours $SAGEMAKER_BASE_DIR as the /opt/ml root; so do local runs.
    return Path(os.environ.get("SAGEMAKER_BASE_DIR", "/opt/ml"))


def get_args_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    env = os.environ.get
    hp = parser.add_argument_group("hyperparameters (SageMaker passes each as --name value)")
    # Required, no defaults: config.toml ([hyperparameters], [model]) holds these values once, and the
    # launcher passes every one of them; a default here would be a second copy that drifts.
    hp.add_argument("--epochs", type=int, required=True, help="passes over the training images")
    hp.add_argument("--batch_size", type=int, required=True, help="training batch size (per process)")
    hp.add_argument("--test_batch_size", type=int, required=True, help="validation and test batch size")
    hp.add_argument("--lr", type=float, required=True, help="peak learning rate")
    hp.add_argument("--backbone", required=True, help="torchvision model name, e.g. resnet18")
    hp.add_argument(
        "--num_classes", type=int, default=None, help="classes expected in the data (default: as found)"
    )
    hp.add_argument("--image_size", type=int, required=True, help="side of the square the network sees")
    hp.add_argument(
        "--finetune", choices=FINETUNE_MODES, required=True, help="head: new layer only; full: all"
    )
    hp.add_argument("--pretrained", type=str2bool, required=True, help="start from ImageNet weights")
    hp.add_argument("--optimizer", default="adamw", help=f"one of {', '.join(OPTIMIZERS)}")
    hp.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    hp.add_argument("--weight_decay", type=float, default=1e-4, help="decoupled (AdamW) or L2 (SGD) decay")
    hp.add_argument("--scheduler", default="cosine", help=f"per-epoch LR schedule: {', '.join(SCHEDULERS)}")
    hp.add_argument(
        "--patience",
        type=int,
        default=3,
        help="stop after N epochs without a better validation loss; 0: never",
    )
    hp.add_argument(
        "--min_delta", type=float, default=0.0, help="smallest validation loss decrease that counts"
    )
    hp.add_argument("--seed", type=int, default=0, help="seed of weights init, shuffling and augmentation")
    hp.add_argument(
        "--num_workers", type=int, default=-1, help="loader processes per GPU/process; -1: one per CPU"
    )
    hp.add_argument(
        "--log_every", type=int, default=20, help="a progress line every N steps of each pass; 0: none"
    )
    hp.add_argument("--augment", type=str2bool, default=True, help="random crop and flip of training images")
    hp.add_argument(
        "--feature_cache",
        type=str2bool,
        default=False,
        help="head mode: compute backbone features once and train the head on them (implies augment=false)",
    )
    hp.add_argument(
        "--pixel_cache_gb",
        type=float,
        default=8.0,
        help="memory (GB, per process) to keep decoded training and validation images in from the "
        "first epoch on, so later epochs skip decoding; 0: decode every epoch",
    )
    hp.add_argument(
        "--class_weights", type=str2bool, default=False, help="weight the loss by inverse class frequency"
    )
    hp.add_argument("--amp", type=str2bool, default=True, help="mixed precision on GPU")
    hp.add_argument(
        "--quantize",
        choices=QUANTIZE_SETTINGS,
        default="auto",
        help="train_model.py: also save an int8 copy for CPU endpoints, measured on validation; float: not",
    )
    watch = parser.add_argument_group("rules and profiling judged in the job (train_model.py)")
    watch.add_argument(
        "--rules",
        default="",
        help="comma-separated rule names, e.g. overfit,LowGPUUtilization; empty: none",
    )
    watch.add_argument(
        "--rule_parameters",
        default="{}",
        help='JSON of per-rule parameters, e.g. {"overfit": {"patience": 3}}; config.toml\'s '
        "[debugger.rule_parameters]",
    )
    watch.add_argument("--train_save_interval", type=int, default=100, help="record every N training steps")
    watch.add_argument(
        "--eval_save_interval", type=int, default=10, help="record every N validation/test steps"
    )
    watch.add_argument(
        "--profiler_interval_millis", type=int, default=500, help="system sample every N milliseconds"
    )
    watch.add_argument(
        "--torch_profiler_steps",
        type=int,
        default=0,
        help="trace N training steps with torch.profiler for TensorBoard; 0: off",
    )
    paths = parser.add_argument_group("paths and cluster (default: the SageMaker environment)")
    paths.add_argument("--data_dir", default=env("SM_CHANNEL_TRAINING"), help="the training channel")
    paths.add_argument("--model_dir", default=env("SM_MODEL_DIR", "model"), help="where the artifact goes")
    paths.add_argument("--output_data_dir", default=env("SM_OUTPUT_DATA_DIR", "output"), help="other outputs")
    paths.add_argument(
        "--checkpoint_dir", default=str(_sagemaker_base_dir() / "checkpoints"), help="per-epoch checkpoints"
    )
    paths.add_argument("--num_gpus", type=int, default=int(env("SM_NUM_GPUS", torch.cuda.device_count())))
    paths.add_argument("--hosts", type=json.loads, default=env("SM_HOSTS", '["localhost"]'))
    paths.add_argument("--current_host", default=env("SM_CURRENT_HOST", "localhost"))
    return parser


if __name__ == "__main__":
    main(get_args_parser(__doc__.splitlines()[0]).parse_args(), use_debugger=True, evaluate_test=True)
