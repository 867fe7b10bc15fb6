"""The rules of SageMaker Debugger and Profiler judged inside the training job: which, with what, and how.

This module is the registry (the names, their settable parameters, parsing `--rules` and
`--rule_parameters`, judging a recording); the rules themselves are tensor_rules.py, loss_rules.py and
profiler_rules.py, and their `Verdict` rule_verdict.py. Each rule takes the recording
(`recorder.Recorder.recording()`, or `profiler.Profiler.data()`) and returns one `Verdict`.

Names and default parameters are those AWS documents for the built-in rule of the same name
(SageMaker developer guide, "List of Debugger built-in rules"); AWS never published the built-in
rules' code, so each docstring quotes the sentences it follows and, where they leave a choice open,
says which reading is taken (and which other one was plausible). The same reading travels with
every verdict (`Verdict.reading`), so the report shows what was judged.

A verdict is `NoIssuesFound`, `IssuesFound` (at which step, in which mode, why) or `NotEnoughData` (the
saved steps it had, the ones it needs, or the setting that records what it reads). `NotEnoughData` is
this project's own verdict: SageMaker's rules end with NoIssuesFound when they cannot judge, which reads
as a pass. Where the documented test cannot tell a healthy run from a sick one on this network (a bias
whose gradient is zero by construction), `Verdict.caveat` says so.

Steps are numbered per mode, as smdebug numbers them and as the report's plots draw them: a verdict
names the first saved step at which its condition held, with that step's mode. Where a rule compares
modes (GLOBAL), saved steps are put in the order the job ran them (`global_step`).

Pure Python on purpose: the rules are unit-tested on synthetic series without torch.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable

from loss_rules import LOSS_MODES, class_imbalance, loss_not_decreasing, overfit, overtraining
from profiler_rules import cpu_bottleneck, data_loading_bottleneck, low_gpu_utilization
from rule_verdict import (
    ISSUES,
    NO_ISSUES,
    NOT_ENOUGH,
    Verdict,
)
from tensor_rules import dead_relu, exploding_tensor, poor_weight_initialization, vanishing_gradient

DEBUGGER_RULES: dict[str, Callable[..., Verdict]] = {
    "vanishing_gradient": vanishing_gradient,
    "overfit": overfit,
    "overtraining": overtraining,
    "poor_weight_initialization": poor_weight_initialization,
    "loss_not_decreasing": loss_not_decreasing,
    "exploding_tensor": exploding_tensor,
    "dead_relu": dead_relu,
    "class_imbalance": class_imbalance,
}


# Rules that need activation statistics (forward hooks on the ReLUs).
ACTIVATION_RULES = frozenset({"poor_weight_initialization", "dead_relu"})


# Parameters AWS documents that the recording cannot honour: it names its tensors by module, not by
# smdebug's collections, so these stay at what the rule judges (every saved tensor of its kind).
FIXED_PARAMETERS = frozenset(
    {
        "activation_inputs_regex",
        "tensor_regex",
        "collection_names",
        "use_losses_collection",
        "labels_regex",
        "predictions_regex",
        "argmax",
    }
)


def settable_parameters(rule: str) -> dict[str, object]:
    """The parameters of an in-job debugger rule that `rule_parameters` may set, with their defaults."""
    signature = inspect.signature(DEBUGGER_RULES[rule])
    return {name: p.default for name, p in list(signature.parameters.items())[1:]}


def parse_rule_parameters(text: str) -> dict[str, dict]:
    """`--rule_parameters` (JSON, `{"overfit": {"patience": 3}}`) -> checked per-rule keyword arguments.

    config/schema.py checks config.toml's [debugger.rule_parameters] fully (ranges, choices); this
    refuses what would make a rule fail in the job: unknown rules or names, values of the wrong type."""
    try:
        document = json.loads(text or "{}")
    except json.JSONDecodeError as error:
        raise ValueError(f"rule_parameters is not JSON ({error.msg})") from None
    if not isinstance(document, dict) or not all(isinstance(v, dict) for v in document.values()):
        raise ValueError(
            'rule_parameters must be a JSON object of objects, e.g. {"overfit": {"patience": 3}}'
        )
    for rule, values in document.items():
        if rule not in DEBUGGER_RULES:
            raise ValueError(
                f"rule_parameters names {rule!r}; parameters can be set for {', '.join(DEBUGGER_RULES)}"
            )
        allowed = settable_parameters(rule)
        for name, value in values.items():
            if name not in allowed:
                raise ValueError(
                    f"rule_parameters: {rule} has no parameter {name!r}; it takes {', '.join(allowed)}"
                )
            default = allowed[name]
            fits = (
                isinstance(value, bool)
                if isinstance(default, bool)
                else isinstance(value, int) and not isinstance(value, bool)
                if isinstance(default, int)
                else isinstance(value, (int, float)) and not isinstance(value, bool)
                if isinstance(default, float)
                else value is None or value in LOSS_MODES
            )
            if not fits:
                raise ValueError(
                    f"rule_parameters: {rule} {name} = {value!r} is not of the kind of {default!r}"
                )
    return document


PROFILER_RULES: dict[str, Callable[[dict], Verdict]] = {
    "LowGPUUtilization": low_gpu_utilization,
    "CPUBottleneck": cpu_bottleneck,
    "DataLoadingBottleneck": data_loading_bottleneck,
}


# ProfilerReport is the report itself: its verdict sums up the profiler rules it ran.
REPORT_RULE = "ProfilerReport"


KNOWN_RULES = (*DEBUGGER_RULES, *PROFILER_RULES, REPORT_RULE)


def parse_rules(text: str) -> list[str]:
    """`"overfit, LowGPUUtilization"` -> the names, in order; unknown names are refused."""
    names = [name.strip() for name in (text or "").split(",") if name.strip()]
    unknown = [name for name in names if name not in KNOWN_RULES]
    if unknown:
        raise ValueError(
            f"unknown rule {', '.join(repr(n) for n in unknown)}; choose from {', '.join(KNOWN_RULES)}"
        )
    return list(dict.fromkeys(names))


def wants_profiler(names: list[str]) -> bool:
    return any(name in PROFILER_RULES or name == REPORT_RULE for name in names)


def evaluate_debugger_rules(
    names: list[str], recording: dict, parameters: dict[str, dict] | None = None
) -> list[Verdict]:
    """The debugger rules of `names`, each with its `parameters` (`parse_rule_parameters`)."""
    parameters = parameters or {}
    return [
        DEBUGGER_RULES[name](recording, **parameters.get(name, {}))
        for name in names
        if name in DEBUGGER_RULES
    ]


def evaluate_profiler_rules(names: list[str], profile: dict) -> list[Verdict]:
    """The profiler rules asked for, plus DataLoadingBottleneck whenever the profiler ran."""
    chosen = [name for name in PROFILER_RULES if name in names or name == "DataLoadingBottleneck"]
    verdicts = [PROFILER_RULES[name](profile) for name in chosen]
    if REPORT_RULE in names:
        verdicts.append(report_verdict(verdicts))
    return verdicts


def report_verdict(verdicts: list[Verdict], report_file: str = "profiler-report.html") -> Verdict:
    issues = [v.rule for v in verdicts if v.verdict == ISSUES]
    judged = [v.rule for v in verdicts if v.verdict != NOT_ENOUGH]
    if issues:
        verdict, reason = ISSUES, f"issues from {', '.join(issues)}"
    elif judged:
        verdict, reason = NO_ISSUES, f"no issues from {', '.join(judged)}"
    else:
        verdict, reason = NOT_ENOUGH, "no profiler rule had enough data"
    return Verdict(REPORT_RULE, verdict, f"{reason}; report: {report_file}", "profiler")
