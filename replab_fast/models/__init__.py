"""Reference PyTorch implementations, one file per paper (alexnet, autoencoder, lenet, llama, lstm).

Importing this package imports none of them: the registry (registry.py) reads each file's
presets the first time a model name is looked up, and a kernel that needs one paper's reference
imports that file alone.
"""

from .registry import Family, ModelSpec, count_parameters, create_model, get_spec, list_models, register_model

__all__ = ["Family", "ModelSpec", "count_parameters", "create_model", "get_spec", "list_models", "register_model"]
