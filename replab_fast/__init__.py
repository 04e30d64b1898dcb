"""replab_fast: reference implementations of foundational papers, with fast kernels.

    import replab_fast
    model = replab_fast.create_model("llama-tiny")
    replab_fast.accelerate(model)          # swap in the kernels that are fast on the model's device
    print(model.replab_report)             # what was swapped, what was not and why
    replab_fast.restore(model)             # back to the reference modules
"""

__version__ = "0.1.0"

from .models import count_parameters, create_model, get_spec, list_models  # noqa: E402
from .swap import accelerate, registered_kernels, restore  # noqa: E402

__all__ = ["accelerate", "count_parameters", "create_model", "get_spec", "list_models", "registered_kernels", "restore"]
