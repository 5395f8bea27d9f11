"""The registered methods: one line each, the method's class and its config section.

Torch-free, so that model.config can validate `method` and the sections without importing
the networks; the class is imported only when a method is built (`method_class`).

To add a method: write `model/methods/NAME.py` with a `Method` subclass (model/methods/base.py),
add its section to model/methods/options.py, and one line to METHODS below.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from model.methods.options import DDCMHConfig, DJSRHConfig, DSMHNConfig, DVSHConfig


@dataclass(frozen=True)
class Registered:
    """A method: where its class is ("module:Class") and the dataclass of its section."""

    target: str
    options: type


#: Method name (the config's `method`, and its section's name) -> where it is.
METHODS: dict[str, Registered] = {
    "dsmhn": Registered("model.methods.dsmhn:DSMHN", DSMHNConfig),
    "djsrh": Registered("model.methods.djsrh:DJSRH", DJSRHConfig),
    "ddcmh": Registered("model.methods.ddcmh:DDCMH", DDCMHConfig),
    "dvsh": Registered("model.methods.dvsh:DVSH", DVSHConfig),
}


def method_class(name: str) -> type:
    """The class of the method registered as `name` (a model.methods.base.Method: not imported
    here, which would make model.config import torch and the contract import itself)."""
    module, cls = METHODS[name].target.split(":")
    return getattr(importlib.import_module(module), cls)  # type: ignore[no-any-return]
