"""What the rules need, recorded inside the training job without smdebug.

The loop tells its observers about every pass and step (`Observer`); `Recorder` keeps, at the save
intervals SageMaker's hook would use (`train.save_interval`, `eval.save_interval`; PREDICT, the final
test pass, uses the eval interval), per mode:

- the loss of each saved step;
- at saved training steps: per-tensor gradient statistics (mean |g|, variance, the 5th and 95th
  percentiles; after unscaling, before the optimiser step), weight statistics (and once at
  initialisation), ReLU input variance and per-unit activity where a rule needs them (with
  finetune=head, the frozen backbone's ReLUs);
- label counts and correct predictions of every step (an index_add on the device costs nothing, and
  two sampled batches per epoch could not judge 133 classes);
- per pass, the mean loss and accuracy over every step, not only the saved ones (the report's
  per-epoch curves), and for the test pass a num_classes x num_classes confusion matrix of
  (true, predicted) counts (the report's confusion matrix and per-class accuracy).

The recorder runs on the main process only: in a distributed job its means and counts are that
process's share of the data.

Statistics stay on the device until the step ends, then move in one transfer. `recording()` is plain
JSON (rules.py reads it, the job writes it to `recording.json`), and it travels in the checkpoint,
so a resumed spot job judges the whole run.
"""

from __future__ import annotations

import math

import torch
from torch import nn

MODES = ("TRAIN", "EVAL", "PREDICT")
# Elements of each gradient kept for the percentiles: enough for a 5th-95th spread, cheap on any net.
GRADIENT_SAMPLE = 20_000
# Above this many classes the test pass keeps no confusion matrix: n x n counts would make
# recording.json megabytes (1000 classes: a million numbers) for a picture nobody could read.
MAX_CONFUSION_CLASSES = 1000


class Observer:
    """What the training loop reports; every method does nothing unless overridden."""

    def begin_pass(self, mode: str, epoch: int, first_step: int) -> None:
        pass

    def end_pass(self, mode: str, epoch: int, end_step: int) -> None:
        pass

    def begin_step(self, mode: str, step: int) -> None:
        pass

    def after_backward(self, mode: str, step: int) -> None:
        pass

    def end_step(
        self,
        mode: str,
        step: int,
        loss: float,
        logits: torch.Tensor,
        labels: torch.Tensor,
        data_seconds: float,
        compute_seconds: float,
    ) -> None:
        pass

    def close(self) -> None:
        pass


class Observers(Observer):
    """Several observers as one, called in order."""

    def __init__(self, *observers: Observer | None) -> None:
        self.observers = [o for o in observers if o is not None]

    def begin_pass(self, mode: str, epoch: int, first_step: int) -> None:
        for o in self.observers:
            o.begin_pass(mode, epoch, first_step)

    def end_pass(self, mode: str, epoch: int, end_step: int) -> None:
        for o in self.observers:
            o.end_pass(mode, epoch, end_step)

    def begin_step(self, mode: str, step: int) -> None:
        for o in self.observers:
            o.begin_step(mode, step)

    def after_backward(self, mode: str, step: int) -> None:
        for o in self.observers:
            o.after_backward(mode, step)

    def end_step(self, *args, **kwargs) -> None:
        for o in self.observers:
            o.end_step(*args, **kwargs)

    def close(self) -> None:
        for o in self.observers:
            o.close()


def _layer_stats(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """mean |x|, variance and the count of non-finite / NaN values, per tensor, stacked on the device."""
    out = {}
    for name, tensor in tensors.items():
        flat = tensor.detach().flatten().float()
        out[name] = torch.stack(
            [
                flat.abs().mean(),
                flat.var() if flat.numel() > 1 else flat.new_zeros(()),
                (~torch.isfinite(flat)).sum().float(),
                torch.isnan(flat).sum().float(),
            ]
        )
    return out


def _as_dicts(stats: dict[str, torch.Tensor]) -> dict[str, dict[str, float]]:
    if not stats:
        return {}
    rows = torch.stack(list(stats.values())).cpu().tolist()
    keys = ("mean_abs", "variance", "nonfinite", "nan")
    return {name: dict(zip(keys, row, strict=True)) for name, row in zip(stats, rows, strict=True)}


def _percentiles(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per tensor, the 5th and 95th percentiles of its finite values (of up to GRADIENT_SAMPLE of them)."""
    out = {}
    for name, tensor in tensors.items():
        sample = tensor.detach().flatten()[:: max(1, tensor.numel() // GRADIENT_SAMPLE)].float()
        finite = sample[torch.isfinite(sample)]
        levels = torch.tensor([0.05, 0.95], device=finite.device)
        out[name] = torch.quantile(finite, levels) if finite.numel() else torch.full_like(levels, math.nan)
    return out


def zero_gradient_parameters(module: nn.Module) -> list[str]:
    """Biases whose next layer is a BatchNorm: it subtracts each channel's batch mean, the bias with it,
    so in training their gradient is zero up to rounding whatever the run does (vanishing_gradient and
    poor_weight_initialization would judge the network, not the run). Layers in registration order,
    which is the order they run in the torchvision networks and in Sequential."""
    leaves = [
        (name, layer)
        for name, layer in module.named_modules()
        if not list(layer.children()) and not isinstance(layer, nn.Identity)
    ]
    found = []
    for (name, layer), (_, following) in zip(leaves, leaves[1:], strict=False):
        bias = getattr(layer, "bias", None)
        trained_bias = isinstance(bias, nn.Parameter) and bias.requires_grad
        if trained_bias and isinstance(following, nn.modules.batchnorm._BatchNorm):
            found.append(f"{name}.bias" if name else "bias")
    return found


class Recorder(Observer):
    """Records what `rules.py` judges; see the module docstring."""

    def __init__(
        self,
        module: nn.Module,
        *,
        intervals: dict[str, int],
        num_classes: int,
        class_names: list[str],
        activations: bool,
        activations_note: str | None = None,
        activations_caveat: str | None = None,
        amp: bool = False,
    ) -> None:
        self.module = module
        self.intervals = {mode: max(1, int(intervals.get(mode, 1))) for mode in MODES}
        self.class_names = class_names
        self.amp = amp
        self.saving = False
        self.mode = "TRAIN"
        self.steps_seen = dict.fromkeys(MODES, 0)
        self.losses: dict[str, list[list[float]]] = {mode: [] for mode in MODES}
        self.gradients: list[dict] = []
        self.weights: list[dict] = []
        self.activations: list[dict] = []
        self.activations_note = activations_note
        self.activations_caveat = activations_caveat
        self.zero_gradient_parameters = zero_gradient_parameters(module)
        self.epochs: list[dict] = []
        self.amp_skipped: list[int] = []
        self.pass_start: dict[str, int] = {}
        self.train_end = 0
        device = next(module.parameters()).device
        self.counts = {mode: torch.zeros(num_classes, device=device) for mode in MODES}
        self.correct = {mode: torch.zeros(num_classes, device=device) for mode in MODES}
        self.eval_labels: dict[str, list[float]] | None = None
        # (true, predicted) counts of the test pass, on the device until recording() reads them.
        self.num_classes = num_classes
        self.confusion = (
            torch.zeros(num_classes * num_classes, dtype=torch.long, device=device)
            if num_classes <= MAX_CONFUSION_CLASSES
            else None
        )
        # Per pass: summed loss (host floats, `loss` already is one) and images; correct from `correct`.
        self._pass: dict[str, dict[str, float]] = {}
        self.train_pass: dict[str, float] | None = None
        self.test: dict[str, float] | None = None
        self._pending: dict[str, dict[str, torch.Tensor]] = {"inputs": {}, "activity": {}}
        self._calls: dict[str, int] = {}
        self.handles = self._hook_relus() if activations else []
        self.weights.append({"step": 0, "when": "initialisation", "layers": _as_dicts(self._weight_stats())})

    # ---- hooks on the ReLUs (active only at saved training steps)

    def _hook_relus(self) -> list:
        handles = []
        for name, layer in self.module.named_modules():
            if isinstance(layer, (nn.ReLU, nn.ReLU6)):
                handles.append(layer.register_forward_pre_hook(self._relu_input(name)))
                handles.append(layer.register_forward_hook(self._relu_output(name)))
        if not handles and self.activations_note is None:
            self.activations_note = f"{type(self.module).__name__} has no nn.ReLU layer"
        return handles

    def _call_name(self, name: str, counting: bool) -> str:
        # A module called twice per forward (ResNet blocks reuse `relu`) gets one entry per call.
        calls = self._calls.get(name, 0)
        if counting:
            self._calls[name] = calls + 1
            return name if calls == 0 else f"{name}#{calls}"
        calls -= 1
        return name if calls <= 0 else f"{name}#{calls}"

    def _relu_input(self, name: str):
        def hook(_module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            if self.saving and self.mode == "TRAIN":
                # Before an in-place ReLU overwrites its input.
                self._pending["inputs"][self._call_name(name, True)] = inputs[0].detach().float().var()

        return hook

    def _relu_output(self, name: str):
        def hook(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
            if self.saving and self.mode == "TRAIN":
                dims = [d for d in range(output.dim()) if d != 1] if output.dim() > 1 else [0]
                active = (output.detach() > 0).float().mean(dim=dims) * 100
                self._pending["activity"][self._call_name(name, False)] = active

        return hook

    # ---- the loop's reports

    def begin_pass(self, mode: str, epoch: int, first_step: int) -> None:
        self.pass_start[mode] = first_step
        if mode == "EVAL":
            self.counts["EVAL"].zero_()
            self.correct["EVAL"].zero_()
        if mode == "PREDICT" and self.confusion is not None:
            self.confusion.zero_()
        # One transfer per pass: the correct predictions so far, to subtract at the end.
        self._pass[mode] = {"loss_sum": 0.0, "images": 0, "correct_before": self.correct[mode].sum().item()}

    def _pass_means(self, mode: str) -> dict[str, float] | None:
        totals = self._pass.get(mode)
        if not totals or not totals["images"]:
            return None
        correct = self.correct[mode].sum().item() - totals["correct_before"]
        images = int(totals["images"])
        return {"loss": totals["loss_sum"] / images, "accuracy": correct / images, "images": images}

    def end_pass(self, mode: str, epoch: int, end_step: int) -> None:
        if mode == "EVAL" and "TRAIN" in self.pass_start:
            means = {"train": self.train_pass, "eval": self._pass_means("EVAL")}
            self.epochs.append(
                {
                    "epoch": epoch,
                    "train_steps": [self.pass_start["TRAIN"], self.train_end],
                    "eval_steps": [self.pass_start["EVAL"], end_step],
                    **{
                        f"{part}_{key}": value
                        for part, values in means.items()
                        if values
                        for key, value in values.items()
                        if key != "images"
                    },
                }
            )
            self.eval_labels = {
                "counts": self.counts["EVAL"].cpu().tolist(),
                "correct": self.correct["EVAL"].cpu().tolist(),
            }
        if mode == "TRAIN":
            self.train_end = end_step
            self.train_pass = self._pass_means("TRAIN")
        if mode == "PREDICT":
            self.test = self._pass_means("PREDICT")

    def begin_step(self, mode: str, step: int) -> None:
        self.mode = mode
        self.saving = step % self.intervals[mode] == 0
        self._calls.clear()

    def _weight_stats(self) -> dict[str, torch.Tensor]:
        return _layer_stats({n: p for n, p in self.module.named_parameters() if p.requires_grad})

    def after_backward(self, mode: str, step: int) -> None:
        if not self.saving:
            return
        grads = {n: p.grad for n, p in self.module.named_parameters() if p.grad is not None}
        if not grads:
            return
        stats = _layer_stats(grads)
        percentiles = _percentiles(grads)
        pooled = torch.cat(
            [g.detach().flatten()[:: max(1, g.numel() // GRADIENT_SAMPLE)].float() for g in grads.values()]
        )
        finite = pooled[torch.isfinite(pooled)]
        spread = (
            torch.quantile(finite, torch.tensor([0.05, 0.95], device=finite.device)).tolist()
            if finite.numel()
            else [float("nan")] * 2
        )
        layers = _as_dicts(stats)
        for name, (p5, p95) in zip(
            percentiles, torch.stack(list(percentiles.values())).cpu().tolist(), strict=True
        ):
            layers[name].update(p5=p5, p95=p95)
        if self.amp and any(s["nonfinite"] for s in layers.values()):
            self.amp_skipped.append(step)  # GradScaler skips a step whose gradients overflowed
        self.gradients.append({"step": step, "layers": layers, "all": {"p5": spread[0], "p95": spread[1]}})

    # Observer.end_step holds the parameters' types; its overrides (here, profiler.py) only name them.
    def end_step(self, mode, step, loss, logits, labels, data_seconds, compute_seconds) -> None:
        self.steps_seen[mode] = max(self.steps_seen[mode], step + 1)
        ones = torch.ones_like(labels, dtype=self.counts[mode].dtype)
        predicted = logits.detach().argmax(1)
        self.counts[mode].index_add_(0, labels, ones)
        self.correct[mode].index_add_(0, labels, (predicted == labels).to(ones.dtype))
        if mode in self._pass:
            self._pass[mode]["loss_sum"] += loss * len(labels)
            self._pass[mode]["images"] += len(labels)
        if mode == "PREDICT" and self.confusion is not None:
            # Row = true class, column = predicted class, as sklearn's confusion_matrix lays it out.
            cells = labels.to(torch.long) * self.num_classes + predicted
            self.confusion.index_add_(0, cells, torch.ones_like(cells))
        if not self.saving:
            return
        self.losses[mode].append([step, loss])
        if mode == "TRAIN":
            self.weights.append({"step": step, "layers": _as_dicts(self._weight_stats())})
            self._flush_activations(step)
        self.saving = False

    def _flush_activations(self, step: int) -> None:
        inputs, activity = self._pending["inputs"], self._pending["activity"]
        if inputs or activity:
            values = torch.stack(list(inputs.values())).cpu().tolist() if inputs else []
            variances = dict(zip(inputs, values, strict=True))
            layers = {
                name: {
                    "input_variance": variances.get(name, float("nan")),
                    "activity": [round(a, 2) for a in active.cpu().tolist()],
                    "nonfinite": int(not math.isfinite(variances.get(name, 0.0))),
                }
                for name, active in activity.items()
            }
            self.activations.append({"step": step, "mode": "TRAIN", "layers": layers})
        self._pending = {"inputs": {}, "activity": {}}

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []

    # ---- what the rules read, and what a checkpoint carries

    def recording(self) -> dict:
        labels = {
            mode: {"counts": self.counts[mode].cpu().tolist(), "correct": self.correct[mode].cpu().tolist()}
            for mode in ("TRAIN", "PREDICT")
        }
        if self.eval_labels is not None:
            labels["EVAL"] = self.eval_labels
        if self.confusion is not None and self.test is not None:
            n = self.num_classes
            flat = self.confusion.cpu().tolist()
            labels["PREDICT"]["confusion"] = [flat[row * n : (row + 1) * n] for row in range(n)]
        return {
            "version": 1,
            "save_intervals": self.intervals,
            "steps_seen": self.steps_seen,
            "class_names": self.class_names,
            "losses": self.losses,
            "epochs": self.epochs,
            "gradients": self.gradients,
            "weights": self.weights,
            "activations": self.activations,
            "activations_note": self.activations_note,
            # Why the ReLUs judged may say nothing of what a rule asks (finetune=head: a frozen backbone).
            "activations_caveat": self.activations_caveat,
            # Parameters whose gradient is zero by construction (rules.py names them in its caveats).
            "zero_gradient_parameters": self.zero_gradient_parameters,
            "labels": labels,
            # The test pass's mean loss, accuracy and image count (None: no test pass).
            "test": self.test,
            "amp_skipped_steps": self.amp_skipped,
        }

    def state_dict(self) -> dict:
        return self.recording()

    def load_state_dict(self, state: dict) -> None:
        """Continue a recording after a restart (the save intervals of this run stay)."""
        self.steps_seen.update(state["steps_seen"])
        self.losses = {mode: list(state["losses"].get(mode, [])) for mode in MODES}
        self.epochs = list(state["epochs"])
        self.gradients, self.weights = list(state["gradients"]), list(state["weights"])
        self.activations = list(state["activations"])
        self.amp_skipped = list(state["amp_skipped_steps"])
        for mode in ("TRAIN", "PREDICT"):
            self.counts[mode].copy_(torch.tensor(state["labels"][mode]["counts"]))
            self.correct[mode].copy_(torch.tensor(state["labels"][mode]["correct"]))
        self.eval_labels = state["labels"].get("EVAL")
        # A restart resumes training; the test pass (and its confusion matrix) runs after it anew.
        self.test = None
