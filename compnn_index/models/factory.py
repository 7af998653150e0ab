"""Any ``nn.Module`` built by the user's own function: ``--model-factory package.module:function``.

:func:`factory_model` calls the function with the given JSON-able keyword arguments, loads the
weights, and returns a :class:`FactoryModel` whose ``arch`` is ``"factory"`` and whose
``config`` records the factory and its arguments — so a checkpoint written with
:func:`~compnn_index.models.save_checkpoint` rebuilds the network by itself
(:func:`~compnn_index.models.load_checkpoint`), and later commands need not repeat them.

The wrapper *shares* the user's module's children, parameters and buffers (it copies nothing),
so module paths (``decoder.blocks.0``) and state-dict keys are exactly the user's own.
"""
from __future__ import annotations

import json
import os
from typing import Any, Callable, Mapping

import torch
from torch import nn

from compnn_index.checks import check_choice, check_int, resolve_callable
from compnn_index.errors import ModelError
from compnn_index.models.base import TASKS
from compnn_index.models.checkpoint import load_weights, read_state_dict


class FactoryModel(nn.Module):
    """The user's network with the identity compnn records (``arch``, ``config``).

    Parameters
    ----------
    net : nn.Module
        What the factory returned.
    config : dict
        ``{"arch": "factory", "factory", "factory_args", "task", "in_channels"}``.

    Attributes
    ----------
    net : nn.Module
        The user's module (not a child: its children are this module's children).
    """

    arch = "factory"

    def __init__(self, net: nn.Module, config: dict) -> None:
        super().__init__()
        # Share, not copy: paths and keys stay the user's (get_submodule("decoder.blocks.0")).
        self._modules = net._modules
        self._parameters = net._parameters
        self._buffers = net._buffers
        self._non_persistent_buffers_set = net._non_persistent_buffers_set
        object.__setattr__(self, "net", net)
        self.config = dict(config)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.net(*args, **kwargs)

    def train(self, mode: bool = True) -> "FactoryModel":
        super().train(mode)
        self.net.train(mode)
        return self

    def extra_repr(self) -> str:
        return f"factory={self.config.get('factory')!r}"


def _json_args(args: Any) -> dict:
    if args is None:
        return {}
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except json.JSONDecodeError as exc:
            raise ModelError(f"--factory-args: not valid JSON ({exc}): {args!r}") from None
    if not isinstance(args, Mapping):
        raise ModelError(f"Expected factory arguments as a JSON object, got {type(args).__name__}")
    try:
        return json.loads(json.dumps(dict(args)))  # recorded in the checkpoint and manifest
    except (TypeError, ValueError) as exc:
        raise ModelError(f"factory arguments must be JSON values: {exc}") from None


def factory_model(
    factory: str | Callable[..., nn.Module] | None,
    factory_args: Mapping[str, Any] | str | None = None,
    *,
    weights: str | os.PathLike | Mapping[str, torch.Tensor] | None = None,
    task: str = "translate",
    in_channels: int = 3,
) -> FactoryModel:
    """Build the user's network by its factory and load its weights.

    Parameters
    ----------
    factory : str or callable
        ``"package.module:function"`` (recorded, so a checkpoint can rebuild it), or the
        function itself when it can be named that way (its ``__module__:__qualname__``).
    factory_args : dict or JSON text, optional
        Keyword arguments of the factory (JSON values).
    weights : path or state dict, optional
        The trained weights (``torch.load(weights_only=True)``); every key and shape must fit.
        Without it the factory's own weights are kept.
    task : {"translate", "segment"}
        What the output is: an image, or class scores (argmax = labels).
    in_channels : int, default 3
        Input channels (the probe's dummy input).

    Returns
    -------
    FactoryModel
        In eval mode.

    Raises
    ------
    ModelError
        When the factory cannot be imported or called, does not return an ``nn.Module``, or
        the weights do not fit it (the first bad key, both shapes).
    """
    if callable(factory) and not isinstance(factory, str):
        fn = factory
        spec = f"{getattr(fn, '__module__', '?')}:{getattr(fn, '__qualname__', '?')}"
        if "<" in spec:
            raise ModelError(
                f"factory {spec} cannot be imported by name later; define it at module level "
                "or pass 'package.module:function'"
            )
    else:
        spec = factory
        fn = resolve_callable(factory, "--model-factory", error=ModelError)
    args = _json_args(factory_args)
    check_choice(task, "task", TASKS, error=ModelError)
    in_channels = check_int(in_channels, "in_channels", low=1, error=ModelError)
    try:
        net = fn(**args)
    except TypeError as exc:
        raise ModelError(f"--model-factory {spec}: calling it with {args} failed: {exc}") from None
    if not isinstance(net, nn.Module):
        raise ModelError(f"--model-factory {spec} returned a {type(net).__name__}, expected an nn.Module")
    model = FactoryModel(net, {"arch": "factory", "factory": spec, "factory_args": args,
                               "task": task, "in_channels": in_channels})
    if weights is not None:
        if isinstance(weights, (str, os.PathLike)):
            state, source = read_state_dict(weights), os.fspath(weights)
        else:
            state, source = dict(weights), "weights"
        load_weights(net, state, source=source)
    return model.eval()
