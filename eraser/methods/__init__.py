"""Registered methods. Importing this package registers them all."""

from . import (  # noqa: F401
    activation_pruning,
    advunlearn,
    ascent,
    boundary,
    esd,
    finetune,
    forget_vector,
    grad_surgery,
    instance,
    iu,
    rece,
    relabel,
    salun_sd,
    scrub,
    soft_relabel,
    ssd,
    uce,
    unlink,
    unlink_diffusion,
    unlink_robust,
)
