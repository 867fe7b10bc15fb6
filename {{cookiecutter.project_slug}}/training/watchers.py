"""The rules and profiling train_model.py judges inside the job (`--rules`), where smdebug cannot run.

Rank 0 only. The recorder (recorder.py) keeps what the debugger rules need (losses, gradients, weights,
activations at the save intervals); the profiler (profiler.py) samples the system and times each step;
a torch.profiler trace is optional. At the end `judge` evaluates the rules (rules.py) and writes
recording.json, profiler.json, profiler-report.html and rule_verdicts.json to the output folder.
SageMaker's own hook (debugger.py) is separate: train_model.py creates and registers it.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from loaders import Data
from optimisation import Training
from profiler import Profiler, TorchTrace, write_report
from recorder import Observers, Recorder
from rule_verdict import Verdict
from rules import (
    ACTIVATION_RULES,
    DEBUGGER_RULES,
    evaluate_debugger_rules,
    evaluate_profiler_rules,
    parse_rule_parameters,
    parse_rules,
    wants_profiler,
)


@dataclass
class Watchers:
    """The rules judged in the job and what records for them (None: not needed by these rules)."""

    rules: list[str] = field(default_factory=list)
    recorder: Recorder | None = None
    profiler: Profiler | None = None
    trace: TorchTrace | None = None


def start_watchers(args: argparse.Namespace, training: Training, data: Data, enabled: bool) -> Watchers:
    """The recorder and profiler `--rules` needs, observing every step of `training` (when `enabled`)."""
    watchers = Watchers()
    if not enabled:
        return watchers
    watchers.rules = parse_rules(args.rules)
    if any(name in DEBUGGER_RULES for name in watchers.rules):
        # Head-only training still runs the frozen backbone's ReLUs at every step: they are recorded. A
        # feature cache runs the backbone once, before training, so no ReLU runs at a training step.
        activations = bool(ACTIVATION_RULES & set(watchers.rules)) and not args.feature_cache
        note = (
            "feature_cache=true runs the backbone once before training, so no ReLU runs at a training "
            "step: set feature_cache = false under [hyperparameters] to record and judge its ReLUs"
            if args.feature_cache
            else None
        )
        caveat = (
            'finetune="head": the ReLUs judged are the frozen pretrained backbone\'s, so their input '
            "variances say nothing of how the trained layers were initialised"
            if args.finetune == "head"
            else None
        )
        watchers.recorder = Recorder(
            training.trained,
            intervals={
                "TRAIN": args.train_save_interval,
                "EVAL": args.eval_save_interval,
                "PREDICT": args.eval_save_interval,
            },
            num_classes=len(data.class_names),
            class_names=data.class_names,
            activations=activations,
            activations_note=note,
            activations_caveat=caveat,
            amp=training.stage.amp,
        )
    if wants_profiler(watchers.rules):
        watchers.profiler = Profiler(args.profiler_interval_millis)
    if args.torch_profiler_steps > 0:
        watchers.trace = TorchTrace(args.torch_profiler_steps, Path(args.output_data_dir) / "torch_profiler")
    training.stage.observer = Observers(watchers.recorder, watchers.profiler, watchers.trace)
    return watchers


def judge(args: argparse.Namespace, watchers: Watchers, log: Callable[..., None]) -> list[Verdict]:
    """Evaluate the rules on what was recorded; write the verdicts, the recording and the profile."""
    output = Path(args.output_data_dir)
    output.mkdir(parents=True, exist_ok=True)
    verdicts: list[Verdict] = []
    if watchers.recorder is not None:
        recording = watchers.recorder.recording()
        (output / "recording.json").write_text(json.dumps(recording))
        verdicts += evaluate_debugger_rules(
            watchers.rules, recording, parse_rule_parameters(args.rule_parameters)
        )
    if watchers.profiler is not None:
        profile = watchers.profiler.data()
        (output / "profiler.json").write_text(json.dumps(profile))
        profiler_verdicts = evaluate_profiler_rules(watchers.rules, profile)
        write_report(output / "profiler-report.html", profile, profiler_verdicts)
        verdicts += profiler_verdicts
    if not watchers.rules:
        return verdicts
    for verdict in verdicts:
        log(verdict.log_line(), flush=True)
    (output / "rule_verdicts.json").write_text(
        json.dumps({"version": 1, "rules": [v.to_json() for v in verdicts]}, indent=2)
    )
    return verdicts
