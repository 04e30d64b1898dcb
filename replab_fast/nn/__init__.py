"""Drop-in fast modules: same parameters and state_dict keys as the reference modules.

Each kernel's drop-in lives in its own file here and registers itself with
``replab_fast.swap.register_drop_in`` when this package is imported; ``accelerate`` imports it.
"""
