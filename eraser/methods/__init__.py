"""Registered methods. Importing this package registers them all."""

from . import (  # noqa: F401
    activation_pruning,
    ascent,
    boundary,
    finetune,
    forget_vector,
    grad_surgery,
    instance,
    iu,
    relabel,
    scrub,
    soft_relabel,
    ssd,
    unlink,
)
