"""MLflow models-from-code entry point of the registered models (`coordtok-tokenizer`, `coordtok-sit`).

`tracking.register_model` logs this file as the pyfunc's `python_model` (by path, not a pickled
object) with the project checkpoint as an artifact and the builder's dotted path in `model_config`.
Loading a registered model therefore runs this project source and `torch.load(weights_only=True)`;
no code is ever unpickled.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

import mlflow.models
import mlflow.pyfunc


def import_dotted(path: str) -> Callable[..., Any]:
    """"pkg.module:attr.sub" (or "pkg.module.attr") -> the object."""
    module_name, _, attr = path.partition(":")
    if not attr:
        module_name, _, attr = path.rpartition(".")
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


class CheckpointModel(mlflow.pyfunc.PythonModel):
    """A project checkpoint ({"config", "model", ...}) served as an MLflow pyfunc.

    The torch module is rebuilt with `model_config["builder"](config)` (e.g.
    "components.tokenizer.model:CoordTok.from_config") and available as `.module` after loading.
    `predict` takes a dict of arrays (the forward's keyword arguments) and returns a numpy array.
    """

    def __init__(self) -> None:
        self.module: Any = None

    def load_context(self, context: Any) -> None:
        import torch

        builder = (context.model_config or {}).get("builder")
        if not builder:
            raise ValueError("this registered model has no 'builder' in its model_config; re-register it")
        ckpt = torch.load(context.artifacts["checkpoint"], map_location="cpu", weights_only=True)
        module = import_dotted(builder)(ckpt["config"])
        module.load_state_dict(ckpt["model"])
        self.module = module.eval()

    def predict(self, context, model_input, params=None):  # untyped: MLflow would read hints as a schema
        import numpy as np
        import torch

        if not isinstance(model_input, dict):
            raise TypeError("predict takes a dict of arrays: the keyword arguments of the model's forward")
        with torch.no_grad():
            # torch.tensor copies: input arrays may be read-only (torch.as_tensor would warn).
            out = self.module(**{k: torch.tensor(np.asarray(v)) for k, v in model_input.items()})
        return out.float().numpy()


mlflow.models.set_model(CheckpointModel())
