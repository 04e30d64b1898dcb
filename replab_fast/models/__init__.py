"""Reference PyTorch implementations, one file per paper.

Importing this package registers every model preset (see registry.py).
"""

from . import alexnet, autoencoder, lenet, llama, lstm  # noqa: F401  (registers the presets)
from .registry import ModelSpec, count_parameters, create_model, get_spec, list_models, register_model

__all__ = ["ModelSpec", "count_parameters", "create_model", "get_spec", "list_models", "register_model"]
