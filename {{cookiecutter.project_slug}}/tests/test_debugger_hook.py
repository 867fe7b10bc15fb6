"""training/debugger.py: smdebug's hook leaves the model it watched when it closes."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn


def test_a_closed_hook_leaves_no_module_hooks_behind(training, tmp_path, capsys):
    """The int8 export deep-copies the trained model after the hook closed: with smdebug's module hooks
    still on it, the copy's forward printed `AttributeError: 'Hook' object has no attribute
    'parent_forward_event'` (the copy's hooks are bound to an emptied copy of smdebug's Hook)."""
    smd = pytest.importorskip("smdebug.pytorch")
    debugger = training("debugger")
    model, loss = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)), nn.CrossEntropyLoss()
    hook = debugger.DebuggerHook(smd.Hook(out_dir=str(tmp_path / "tensors")))
    hook.register_module(model)
    hook.register_loss(loss)
    hook.set_mode("TRAIN")
    loss(model(torch.randn(2, 4)), torch.tensor([0, 1])).backward()
    hook.close()

    registered = [
        callback
        for module in (*model.modules(), loss)
        for hooks in (module._forward_pre_hooks, module._forward_hooks, module._backward_hooks)
        for callback in hooks.values()
    ]
    assert registered == []
    copy.deepcopy(model)(torch.randn(2, 4))
    captured = capsys.readouterr()
    assert "parent_forward_event" not in captured.out + captured.err
