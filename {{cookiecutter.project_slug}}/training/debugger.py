"""SageMaker Debugger (smdebug) hook, created from the configuration SageMaker writes.

SageMaker writes the DebuggerHookConfig of the estimator to
/opt/ml/input/config/debughookconfig.json (smdebug reads $SMDEBUG_CONFIG_FILE_PATH
first). Without smdebug or without that file the script runs the same and says so;
the rules judged in the job (rules.py) do not need smdebug. Modes: TRAIN for
training, EVAL for validation, PREDICT for the final test pass.

A rule can only judge what was saved: the built-in rules compare saved loss
values over several steps, so too few saved steps means "no issues found" for
the wrong reason. The hook counts the steps it will save and warns.
"""

from __future__ import annotations

import os
from pathlib import Path

from rules import wants_profiler
from torch import nn

CONFIG_PATH_ENV = "SMDEBUG_CONFIG_FILE_PATH"
DEFAULT_CONFIG_PATH = "/opt/ml/input/config/debughookconfig.json"
# Saved loss steps the default rules need to reach a verdict. Overtraining waits
# patience_train=5 and patience_validation=10 saved steps after a first one; the
# others (LossNotDecreasing, Overfit) need fewer.
MIN_SAVED_STEPS = {"TRAIN": 6, "EVAL": 11}
# Judged in the job whenever its profiler runs (rules.evaluate_profiler_rules).
IN_JOB_PROFILER_RULE = "DataLoadingBottleneck"


def import_failure(error: BaseException) -> str:
    """What went wrong importing smdebug, in words that do not hide the real exception."""
    if isinstance(error, ModuleNotFoundError) and (error.name or "").split(".")[0] == "smdebug":
        return "smdebug is not installed (training/requirements.txt leaves it out; see there)"
    return f"smdebug is installed but cannot be imported: {type(error).__name__}: {error}"


def hook_config_path() -> Path:
    return Path(os.environ.get(CONFIG_PATH_ENV, DEFAULT_CONFIG_PATH))


# The config.toml key that sets each mode's save interval (the test pass saves at the evaluation's).
INTERVAL_KEYS = {
    "TRAIN": "train_save_interval",
    "EVAL": "eval_save_interval",
    "PREDICT": "eval_save_interval",
}


def saving_advice(mode: str, saved: int, needed: int, steps: int) -> str:
    """Why a rule cannot judge this mode, and a change that would let it (naming the real setting)."""
    key = INTERVAL_KEYS.get(mode, "train_save_interval")
    problem = f"only {saved} {mode} loss steps saved; the rules need at least {needed} to judge"
    if steps >= needed:
        interval = max(steps // needed, 1)
        return (
            f"{problem}. Set [debugger] {key} to {interval} or less in config.toml "
            f"(train --local: --hp {key}={interval}), or train longer."
        )
    return f"{problem}, and this run has only {steps} {mode} steps: train longer (more epochs or images)."


def rules_in_this_job() -> str:
    """The rules train_model.py judges itself: its `rules` hyperparameter, which the training toolkit
    exports as $SM_HP_RULES (empty for [debugger] evaluation = "sagemaker"), and the one its profiler adds."""
    names = [name.strip() for name in os.environ.get("SM_HP_RULES", "").strip('"').split(",") if name.strip()]
    if not names:
        return 'none ([debugger] evaluation = "sagemaker")'
    if wants_profiler(names) and IN_JOB_PROFILER_RULE not in names:
        names.append(IN_JOB_PROFILER_RULE)
    return ", ".join(names)


class DebuggerHook:
    """The smdebug hook, or a stand-in that does nothing when there is none."""

    def __init__(self, hook: object | None = None) -> None:
        self.hook = hook
        self._modules: list[nn.Module] = []

    @classmethod
    def from_sagemaker_config(cls, enabled: bool = True) -> DebuggerHook:
        """The hook SageMaker configured, or none; either way one line says where the rules are judged."""
        if not enabled:
            return cls()
        path = hook_config_path()
        in_job = f"rules judged in this job by rules.py: {rules_in_this_job()}"
        try:
            import smdebug.pytorch as smd
        except Exception as error:  # not only ImportError: smdebug breaks on numpy >= 2.3, protobuf >= 4
            print(
                f"debugger: no smdebug hook ({import_failure(error)}), so SageMaker's debugger rule "
                f"containers get no tensors from this job; {in_job}",
                flush=True,
            )
            return cls()
        if not path.is_file():
            print(
                f"debugger: no smdebug hook (no hook configuration at {path}: SageMaker judges no debugger "
                f"rule for this job); {in_job}",
                flush=True,
            )
            return cls()
        hook = smd.Hook.create_from_json_file(str(path))
        print(
            f"debugger: hook created from {path}, saving tensors to {hook.out_dir} (what SageMaker's "
            f"debugger rules read); {in_job}",
            flush=True,
        )
        return cls(hook)

    @property
    def active(self) -> bool:
        return self.hook is not None

    def register_module(self, module: nn.Module) -> None:
        """smdebug's `register_module`: every forward of `module` is one step; its tensors are saved."""
        if self.hook is not None:
            self.hook.register_module(module)
            self._modules.append(module)

    def register_loss(self, loss: nn.Module) -> None:
        """smdebug's `register_loss`: the loss module's output is the `losses` collection the rules read."""
        if self.hook is not None:
            self.hook.register_loss(loss)
            self._modules.append(loss)

    def set_mode(self, mode: str) -> None:
        """`mode` is "TRAIN", "EVAL" or "PREDICT"."""
        if self.hook is not None:
            import smdebug.pytorch as smd

            self.hook.set_mode(smd.modes[mode])

    def saved_loss_steps(self, planned_steps: dict[str, int]) -> dict[str, int]:
        """How many of `planned_steps` (per mode) the losses collection saves under this config."""
        if self.hook is None:
            return {}
        import smdebug.pytorch as smd

        save_config = self.hook.collection_manager.get("losses").save_config
        return {
            mode: sum(save_config.should_save_step(smd.modes[mode], step) for step in range(count))
            for mode, count in planned_steps.items()
        }

    def check_saved_steps(self, planned_steps: dict[str, int], when: str) -> None:
        """Print the saved loss steps per mode; warn where a rule would have too few to judge."""
        if self.hook is None:
            return
        saved = self.saved_loss_steps(planned_steps)
        print(
            f"debugger ({when}): "
            + ", ".join(
                f"{mode} {count} steps, {saved[mode]} saved" for mode, count in planned_steps.items()
            ),
            flush=True,
        )
        for mode, count in saved.items():
            needed = MIN_SAVED_STEPS.get(mode, 0)
            if count < needed:
                advice = saving_advice(mode, count, needed, planned_steps[mode])
                print(f"WARNING debugger: {advice}", flush=True)

    def actual_steps(self) -> dict[str, int]:
        """Steps the hook has seen per mode so far."""
        if self.hook is None:
            return {}
        import smdebug.pytorch as smd

        # mode_steps holds the number of the last step, counted from 0 (-1 before the first).
        return {
            mode: self.hook.mode_steps.get(smd.modes[mode], -1) + 1 for mode in ("TRAIN", "EVAL", "PREDICT")
        }

    def close(self) -> None:
        """Flush the hook and take it off the modules it watched."""
        if self.hook is not None:
            self.hook.close()
            self._detach()

    def _detach(self) -> None:
        """Remove the module hooks smdebug registered (it keeps no handles to them).

        Left on, they ride along when the model is deep-copied (the int8 export copies it): the copy's
        hooks are bound to a copy of smdebug's Hook, which its `__getstate__` leaves empty, so the copy's
        first forward prints `AttributeError: 'Hook' object has no attribute 'parent_forward_event'`."""
        for module in self._modules:
            for submodule in module.modules():
                for hooks in (
                    submodule._forward_pre_hooks,
                    submodule._forward_hooks,
                    submodule._backward_hooks,
                ):
                    for key in [
                        key for key, hook in hooks.items() if getattr(hook, "__self__", None) is self.hook
                    ]:
                        del hooks[key]
        self._modules = []
