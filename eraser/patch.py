"""Erasure patches: the low-rank record of an edit, to apply, undo, save and ship.

A patch holds, per layer, the subspace (basis U, optional oblique dual V, strengths eta) and the
undo factor A = W V diag(eta) of the model it was applied to: W* = W - A U^T, W = W* + A U^T.
Patches applied to one model form a stack (kept on the model object), so reverting one that lies
under others re-applies those above it: erase A, erase B, revert A leaves B erased.

Trained methods that change whole parameters store them as dense ``deltas`` (new - old) in the
same container. A patch applies to an ``nn.Module`` or to a pipeline-like object (diffusers): its
``nn.Module`` components are addressed as ``"unet.…"``, ``"text_encoder.…"``.

Patch files are shared, so every file is treated as coming from a stranger: its header and tensors
are checked for type, shape, dtype and finiteness when read, and against its SHA-256 content
checksum; before anything is written, every edit is checked against the layer it edits (sizes, and
a size bound, :data:`MAX_EDIT_RATIO`); the edited weights are checked finite after writing, and any
failure puts every layer back as it was. Reverting a patch that was not applied in this process
first checks that the model really holds its result.
"""

from __future__ import annotations

import hashlib
import json
import math
import uuid
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .layers import LayerKind, kind_by_name, layer_kind
from .projection import apply_factor, edit_factor

__all__ = [
    "LayerEdit",
    "ErasurePatch",
    "PatchError",
    "fingerprint",
    "as_module",
    "register_components",
    "PIPELINE_COMPONENTS",
]

FORMAT = "eraser.patch/1"
FILENAME = "erasure_patch.safetensors"
_STACK_ATTR = "_eraser_patch_stack"
_VIEW_ATTR = "_eraser_module_view"
# exact_revert="auto" keeps the edited weights' originals only when they are at most this share of
# the model's parameter memory (SD 1.x K/V: 2%; SDXL's: 10.5%, which would break a 10% budget).
EXACT_REVERT_BUDGET = 0.05
CHECKSUM_KEY = "eraser_sha256"  # header key of the content checksum (files before it have none)

MAX_EDIT_RATIO = 10.0
"""Sanity bound on the size of one edit: ``||update||_F <= MAX_EDIT_RATIO * ||W||_F`` for every
weight ``W`` a patch edits (and for a file-read undo, relative to the weight it is added back to).

A low-rank update ``A U^T`` (``A = W V diag(eta)``) is measured by its exact Frobenius norm
(``trace(A (U^T U) A^T)``, from the k x k Gram of the basis); whether writing it can overflow is
judged separately with ``||A||_F ||U||_2``, a looser bound that also bounds every entry and partial
sum of the product. Legitimate edits are far below the limit: Unlink's largest, strength 2 (a
reflection), changes a weight by at most 2x its norm (oblique duals, by the oblique projection's
norm, a few units; the pipelines' least-squares regression fit, whose ridge ladder stops at 0.9
times this limit, see ``eraser.methods.unlink``), and trained methods' dense deltas are a fraction
of the weights. A weight is measured as at least
``_RMS_FLOOR`` per entry, so that a zero-initialised bias or shift can still be edited. A patch
over the limit is refused; ``apply(force=True)`` is the only way past it (with a warning).
"""
_RMS_FLOOR = 1e-2


def edit_size_ratio(weight: Tensor, basis: Tensor, eta: Tensor, dual: Tensor | None) -> float:
    """``||update||_F / ||W||_F`` of a low-rank edit (basis, eta, dual: ``(G, D, k)``) of a weight
    (out, D), as :meth:`ErasurePatch.apply` measures it against :data:`MAX_EDIT_RATIO` (the weight
    counted as at least ``_RMS_FLOOR`` per entry): for callers that size an edit before making it."""
    w = weight.detach().to(torch.float64)
    groups = basis.shape[0]
    m = w.reshape(groups, -1, basis.shape[1])
    b = basis.to(torch.float64)
    a = edit_factor(m, b, eta.to(torch.float64), None if dual is None else dual.to(torch.float64))
    update = math.sqrt(max(float(((a @ (b.mT @ b)) * a).sum()), 0.0))
    return update / max(float(w.norm()), _RMS_FLOOR * math.sqrt(w.numel()))


_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


class PatchError(ValueError):
    """A patch cannot be applied, reverted or read."""


@dataclass
class LayerEdit:
    """One layer's edit: basis (G, D, k), eta (G, k), optional dual (G, D, k), undo factor (G, out/G, k)."""

    name: str
    kind: str
    shape: tuple[int, ...]
    basis: Tensor
    eta: Tensor
    dual: Tensor | None = None
    undo: Tensor | None = None

    @property
    def rank(self) -> int:
        return self.basis.shape[-1]

    def _kind(self) -> LayerKind:
        return kind_by_name(self.kind)


def _modules(model: nn.Module) -> dict[str, nn.Module]:
    return dict(model.named_modules())


# Attributes of a pipeline-like object that may hold its modules, in order (registered by the model
# families' adapters, ``eraser.families``); a pipeline with a diffusers ``components`` dict uses that.
PIPELINE_COMPONENTS: list[str] = []


def register_components(names: Sequence[str]) -> None:
    """Add pipeline component names that :func:`as_module` looks for (called by family adapters)."""
    for name in names:
        if name not in PIPELINE_COMPONENTS:
            PIPELINE_COMPONENTS.append(name)


def as_module(target: Any) -> nn.Module:
    """``target`` itself if it is an ``nn.Module``; for a pipeline (an object with ``components``,
    or with attributes named in :data:`PIPELINE_COMPONENTS`: ``unet``, ``text_encoder``, ...) a
    module whose children are its ``nn.Module`` components, so that layers are named ``"unet.…"``,
    ``"text_encoder_2.…"``. The view is cached on the pipeline (patch stacks live on it) and
    rebuilt if a component is replaced."""
    if isinstance(target, nn.Module):
        return target
    comps = getattr(target, "components", None)
    if not isinstance(comps, dict):
        comps = {n: getattr(target, n, None) for n in PIPELINE_COMPONENTS}
    comps = {n: m for n, m in comps.items() if isinstance(m, nn.Module)}
    if not comps:
        raise TypeError(
            f"expected an nn.Module or a pipeline with nn.Module components ({', '.join(PIPELINE_COMPONENTS)}, ...); "
            f"got {type(target).__name__}"
        )
    view = target.__dict__.get(_VIEW_ATTR)
    if view is None or dict(view.items()) != comps:
        view = nn.ModuleDict(comps)
        target.__dict__[_VIEW_ATTR] = view
    return view


FINGERPRINT_SCHEME = "ck1"
_BITS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _hash_tensor(h: Any, label: str, t: Tensor) -> None:
    """SHA-256 of a tensor's bytes (fingerprints written before the ``ck1`` scheme)."""
    t = t.detach()
    h.update(f"{label}:{tuple(t.shape)}:{t.dtype}".encode())
    h.update(memoryview(t.contiguous().cpu().reshape(-1).view(torch.uint8).numpy()))


def tensor_checksum(t: Tensor) -> str:
    """Exact integer checksums of a tensor's bits (read as 64-bit words where rows allow): their
    sum and row-weighted sum (modulo 2^64) and a hash of every 61st word. Integer sums do not
    depend on summation order, so the result is the same on every device and thread count, and
    the tensor is read once (SHA-256 of SDXL's K/V weights takes 0.9 s on a CPU core, this 0.08 s).
    It detects any single changed bit and any change of a row's sum: a checksum against mistakes,
    not a defence against forgery."""
    t = t.detach()
    if t.numel() == 0:
        return f"{tuple(t.shape)}:{t.dtype}:empty"
    bits = t.contiguous().view(_BITS[t.element_size()]).reshape(t.shape[0] if t.ndim else 1, -1)
    if bits.shape[1] * t.element_size() % 8 == 0:  # whole rows as 64-bit words: a native sum, 3x faster
        bits = bits.view(torch.int64)
    rows = bits.sum(dim=1, dtype=torch.int64)
    index = torch.arange(1, rows.numel() + 1, device=rows.device, dtype=torch.int64)
    total, weighted = torch.stack([rows.sum(), (rows * index).sum()]).tolist()
    sample = hashlib.sha256(bits.reshape(-1)[::61].cpu().numpy().tobytes()).hexdigest()[:16]
    return f"{tuple(t.shape)}:{t.dtype}:{total}:{weighted}:{sample}"


def _is_legacy(expected: str | None) -> bool:
    return bool(expected) and not expected.startswith(FINGERPRINT_SCHEME + ":")


def _layer_line(name: str, kind: str, weight: Tensor) -> str:
    return f"{name}:{kind}:{tensor_checksum(weight)}\n"


def _combine(lines: dict[str, str]) -> str:
    h = hashlib.sha256()
    for name in sorted(lines):
        h.update(lines[name].encode())
    return f"{FINGERPRINT_SCHEME}:{h.hexdigest()}"


def fingerprint(model: nn.Module, names: list[str], like: str | None = None) -> str:
    """Fingerprint of the named layers' edited weights (names, shapes, dtypes and values).

    ``like``: a fingerprint to compare with; one written before the ``ck1`` checksums (a plain
    SHA-256 of the bytes, in older patch files) is recomputed the old way."""
    mods = _modules(model)
    kinds = {name: (layer_kind(mods[name]) if name in mods else None) for name in names}
    if not _is_legacy(like):
        return _combine(
            {
                name: f"{name}:missing\n" if kind is None else _layer_line(name, kind.name, kind.weight(mods[name]))
                for name, kind in kinds.items()
            }
        )
    h = hashlib.sha256()
    for name in sorted(names):
        if kinds[name] is None:
            h.update(f"{name}:missing".encode())
        else:
            _hash_tensor(h, f"{name}:{kinds[name].name}", kinds[name].weight(mods[name]))
    return h.hexdigest()


def parameters_fingerprint(named: dict[str, Tensor], layers_fingerprint: str = "", like: str | None = None) -> str:
    """Fingerprint of whole parameters (dense edits), combined with that of the low-rank layers."""
    h = hashlib.sha256(layers_fingerprint.encode())
    legacy = _is_legacy(like)
    for name in sorted(named):
        if legacy:
            _hash_tensor(h, name, named[name])
        else:
            h.update(f"{name}:{tensor_checksum(named[name])}\n".encode())
    return h.hexdigest() if legacy else f"{FINGERPRINT_SCHEME}:{h.hexdigest()}"


@dataclass
class ErasurePatch:
    """A reversible, saveable low-rank edit of a model's layers, with its metadata."""

    edits: dict[str, LayerEdit]
    metadata: dict[str, Any] = field(default_factory=dict)
    deltas: dict[str, Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_metadata(self.metadata)
        self.metadata.setdefault("id", uuid.uuid4().hex)
        self.metadata.setdefault("format", FORMAT)
        # Exact pre-edit values of the edited weights, kept in memory (never saved) so that revert
        # is bit-exact; ``exact_revert = False`` saves that memory (revert is then exact up to
        # rounding), "auto" keeps them within EXACT_REVERT_BUDGET of the model's size.
        self._originals: dict[str, Tensor] = {}
        self.exact_revert: bool | str = "auto"
        self._source: Path | None = None  # the file it was read from: its provenance is unknown

    # -- inspection -------------------------------------------------------------------------
    @property
    def layers(self) -> list[str]:
        """Layers with a low-rank edit."""
        return list(self.edits)

    @property
    def parameters(self) -> list[str]:
        """Parameters with a dense edit (trained methods)."""
        return list(self.deltas)

    def __repr__(self) -> str:
        ranks = {n: e.rank for n, e in self.edits.items()}
        dense = f", dense={len(self.deltas)} parameters" if self.deltas else ""
        return f"ErasurePatch(method={self.metadata.get('method')!r}, names={self.metadata.get('names')}, ranks={ranks}{dense})"

    def num_parameters(self) -> int:
        """Numbers stored by the patch (basis, dual, eta, undo factors and dense deltas)."""
        low_rank = sum(
            t.numel() for e in self.edits.values() for t in (e.basis, e.eta, e.dual, e.undo) if t is not None
        )
        return low_rank + sum(t.numel() for t in self.deltas.values())

    def fingerprint_of(self, model: Any, like: str | None = None) -> str:
        """The fingerprint of the weights this patch edits, as they are in ``model`` now (in the
        scheme of the fingerprint ``like``, for comparing with one read from an older file)."""
        model = as_module(model)
        base = fingerprint(model, self.layers, like=like)
        if not self.deltas:
            return base
        params = dict(model.named_parameters())
        return parameters_fingerprint({n: params[n] for n in self.deltas if n in params}, base, like=like)

    def _holds(self, model: nn.Module, key: str) -> bool:
        """Whether ``model``'s edited weights match the fingerprint in ``metadata[key]``."""
        expected = self.metadata.get(key)
        return bool(expected) and self.fingerprint_of(model, like=expected) == expected

    @classmethod
    def from_changes(
        cls, model: Any, before: dict[str, Tensor], metadata: dict[str, Any], atol: float = 0.0
    ) -> ErasurePatch:
        """The dense patch that turns parameters ``before`` (name -> old value) into ``model``'s current
        ones, registered as applied to ``model``. Unchanged parameters are left out."""
        module = as_module(model)
        params = dict(module.named_parameters())
        unknown = sorted(set(before) - set(params))
        if unknown:
            raise PatchError(f"parameters {unknown[:5]} are not in the model")
        deltas, originals = {}, {}
        for name, old in before.items():
            new = params[name].detach()
            d = new.to("cpu", torch.float32) - old.to("cpu", torch.float32)
            if d.abs().max() > atol:
                deltas[name] = d
                originals[name] = old.detach().clone()
        patch = cls(edits={}, metadata=dict(metadata), deltas=deltas)
        patch.metadata["base_fingerprint"] = parameters_fingerprint(
            {n: originals[n] for n in deltas}, fingerprint(module, [])
        )
        patch.metadata["applied_fingerprint"] = patch.fingerprint_of(module)
        patch._originals = originals
        cls._stack(module).append(patch)
        return patch

    # -- model edits --------------------------------------------------------------------------
    def _check_architecture(self, model: nn.Module) -> dict[str, nn.Module]:
        mods = _modules(model)
        problems = []
        if self.deltas:
            params = dict(model.named_parameters())
            for name, d in self.deltas.items():
                if name not in params:
                    problems.append(f"parameter {name!r} does not exist")
                elif tuple(params[name].shape) != tuple(d.shape):
                    problems.append(
                        f"parameter {name!r} has shape {tuple(params[name].shape)}, the patch expects {tuple(d.shape)}"
                    )
        for name, e in self.edits.items():
            mod = mods.get(name)
            kind = layer_kind(mod) if mod is not None else None
            if mod is None:
                problems.append(f"{name!r} does not exist")
            elif kind is None or kind.name != e.kind:
                problems.append(f"{name!r} is {type(mod).__name__}, the patch edits a {e.kind} layer")
            elif tuple(kind.weight(mod).shape) != tuple(e.shape):
                problems.append(
                    f"{name!r} has weight shape {tuple(kind.weight(mod).shape)}, the patch expects {tuple(e.shape)}"
                )
        if problems:
            raise PatchError(
                "this patch was made for another architecture: "
                + "; ".join(problems)
                + ". Apply it to the model it was made for (see patch.metadata['base_model'])."
            )
        return {n: mods[n] for n in self.edits}

    @staticmethod
    def _stack(model: nn.Module) -> list[ErasurePatch]:
        stack = model.__dict__.get(_STACK_ATTR)
        if stack is None:
            stack = []
            model.__dict__[_STACK_ATTR] = stack
        return stack

    def _position(self, model: nn.Module) -> int | None:
        for i, p in enumerate(self._stack(model)):
            if p.metadata["id"] == self.metadata["id"]:
                return i
        return None

    def _keeps_originals(self, model: nn.Module, weights: list[Tensor]) -> bool:
        """Whether to keep the edited weights' pre-edit values in memory (see ``exact_revert``)."""
        if self.exact_revert != "auto":
            return bool(self.exact_revert)
        edited = sum(w.numel() * w.element_size() for w in weights)
        total = sum(p.numel() * p.element_size() for p in model.parameters())
        return edited <= EXACT_REVERT_BUDGET * total

    def _plan(
        self, model: nn.Module, undo: bool, verify: bool = False, lines: bool = False, mods: dict | None = None
    ) -> _Plan:
        """Check every edit against the weight it edits and compute its factor, writing nothing.

        Raises PatchError for a problem no option may skip (sizes that do not match the layer,
        NaN or Inf, an undo that does not reproduce the model); size-bound failures
        (:data:`MAX_EDIT_RATIO`) are returned in ``problems`` for the caller to refuse or force.
        ``verify``: the undo factors come from a file, so they are checked against the model.
        ``lines``: also take each layer's fingerprint line (while it is in cache: cheaper than a
        separate fingerprint pass over all the weights).
        """
        mods = self._check_architecture(model) if mods is None else mods  # the caller's check, when it made one
        exact = undo and bool(self._originals) and self._holds(model, "applied_fingerprint")
        params = dict(model.named_parameters()) if self.deltas else {}
        plan = _Plan(
            targets=[(name, e._kind().weight(mods[name]), e) for name, e in self.edits.items()]
            + [(name, params[name], None) for name in self.deltas],
            exact=exact,
        )
        basis_norms: dict[int, float] = {}  # layers fitted on the same features share one basis
        basis_grams: dict[int, Tensor] = {}
        checked: set[int] = set()
        for name, weight, e in plan.targets:
            if exact and name in self._originals:
                plan.factors[name] = e.undo if e is not None else None  # a rollback re-applies the edit
                continue
            w = weight.detach()
            if lines and e is not None:
                plan.lines[name] = _layer_line(name, e.kind, w)
            w_norm = _norm(w)
            if not math.isfinite(w_norm):
                raise PatchError(f"the weight of {name!r} contains NaN or Inf; refusing to edit it.")
            if e is None:
                update = _norm(_check_delta(name, self.deltas[name]))
            else:
                _validate_edit(e, checked)
                groups = e._kind().groups(mods[name])
                if e.basis.shape[0] != groups:
                    raise PatchError(
                        f"the patch's edit of {name!r} has {e.basis.shape[0]} groups but the layer has {groups}: "
                        "the patch was made for another architecture."
                    )
                if id(e.basis) not in basis_norms:
                    basis_norms[id(e.basis)] = _spectral_bound(e.basis)
                    basis_grams[id(e.basis)] = e.basis.detach().to(torch.float64).mT @ e.basis.detach().to(
                        torch.float64
                    )
                if undo:
                    if e.undo is None:
                        raise PatchError(
                            f"the patch holds no undo factor for {name!r}: it was never applied, or saved compact "
                            "(a compact file reverts only the edits it applied itself; use the full patch file to "
                            "revert a model saved with the edit)"
                        )
                    a = e.undo
                    if verify:
                        _check_undo(name, w, e)
                else:
                    m = w.reshape(e.basis.shape[0], -1, e.basis.shape[1])  # (groups, out/groups, D)
                    if m.shape[0] == 1:  # one group: plain matrix products are several times faster
                        a = edit_factor(m[0], e.basis[0], e.eta[0], None if e.dual is None else e.dual[0])
                        a = a.unsqueeze(0)
                    else:
                        a = edit_factor(m, e.basis, e.eta, e.dual)
                plan.factors[name] = a
                bound = _norm(a) * basis_norms[id(e.basis)]
                a64 = a.detach().to(torch.float64)
                update = (
                    math.sqrt(max(float(((a64 @ basis_grams[id(e.basis)]) * a64).sum()), 0.0))
                    if bound < math.inf
                    else bound
                )
            # An undo of our own apply restores what was there; everything else is bounded.
            if not undo or verify:
                reference = max(w_norm, _RMS_FLOOR * math.sqrt(w.numel()))
                if not update <= MAX_EDIT_RATIO * reference:  # `not <=`: a NaN size fails too
                    plan.problems.append(
                        f"the edit of {name!r} is {update / reference:.3g} times the size of its weight "
                        f"(limit {MAX_EDIT_RATIO:g})"
                    )
            plan.safe = plan.safe and _stays_finite(w, w_norm, update if e is None else bound)
        return plan

    def _edit_weights(self, model: nn.Module, plan: _Plan, undo: bool, lines: dict | None = None) -> None:
        """Edit (or restore) every weight in place as ``plan`` (:meth:`_plan`) says, one layer at a
        time so that peak memory is one layer's; the result of each is checked finite. If any layer
        fails, every layer already written is put back and the error propagates.
        ``lines``: receives each layer's fingerprint line after its edit (while it is in cache).

        Reverting restores the exact original weights kept in memory (``exact_revert``) when the
        model still holds exactly this patch's result (checked by fingerprint); otherwise it adds
        the undo factors back, which is exact up to rounding and keeps later changes to the weights.
        """
        exact, factors = plan.exact, plan.factors
        keep = self._keeps_originals(model, [w for _, w, _ in plan.targets]) and not exact
        # Each layer's value before its write is copied when kept for exact revert, or when the
        # plan cannot rule out a non-finite result (sizes forced past the bound, half overflow):
        # only then can a write fail, and its rollback must then restore the exact bits. Otherwise
        # a rollback (an interrupt) re-applies the factors, exact up to rounding.
        snapshot = keep or not plan.safe
        done: list[tuple[str, Tensor, LayerEdit | None, Tensor | None]] = []
        sign = 1.0 if undo else -1.0
        try:
            with torch.no_grad():
                for name, weight, e in plan.targets:
                    previous = weight.detach().clone() if snapshot else None
                    done.append((name, weight, e, previous))  # from here on, the layer may be half-written
                    if exact and name in self._originals:
                        weight.copy_(self._originals[name].to(weight.device))
                    else:
                        self._write(name, weight, e, sign, factors.get(name))
                    if lines is not None and e is not None:
                        lines[name] = _layer_line(name, e.kind, weight)
        except BaseException:
            with torch.no_grad():
                for name, weight, e, previous in reversed(done):
                    if previous is not None:
                        weight.copy_(previous)
                    elif e is None:
                        weight.copy_(
                            (weight.to(torch.float32) + sign * self.deltas[name].to(weight.device)).to(weight.dtype)
                        )
                    else:
                        _add_low_rank(weight, factors[name], e.basis, -sign)
            raise
        if undo:
            self._originals = {}
        else:
            for name, e in self.edits.items():
                e.undo = factors[name].detach().to("cpu")
            self._originals = {name: previous for name, _, _, previous in done} if keep else {}

    def _write(self, name: str, weight: Tensor, e: LayerEdit | None, sign: float, a: Tensor | None) -> None:
        """Edit (sign -1) or undo (sign +1) one layer's weight (factor ``a``), or one dense
        parameter, in place; then check that the result is finite."""
        if e is None:  # a dense delta
            w = weight.detach()
            weight.copy_((w.to(torch.float32) - sign * self.deltas[name].to(w.device)).to(w.dtype))
        else:
            _add_low_rank(weight, a, e.basis, sign)
        if not _all_finite(weight):
            raise PatchError(
                f"editing {name!r} produced NaN or Inf (weight dtype overflow?); every layer was put back as it was."
            )

    def apply(self, model: Any, force: bool = False, *, _fresh: bool = False) -> Any:
        """Edit ``model`` (an nn.Module or a pipeline) in place and return it.

        Refuses a model whose weights differ from the patch's base model, a patch read from a file
        that names no base model (no ``base_fingerprint``), and an edit larger than
        :data:`MAX_EDIT_RATIO` times its weight; ``force=True`` applies anyway (with a warning for
        what it skipped). Sizes that do not match the layers, NaN/Inf and a non-finite result are
        always refused, and leave the model untouched."""
        target, model = model, as_module(model)
        _check_metadata(self.metadata)
        mods = self._check_architecture(model)
        if self._position(model) is not None:
            raise PatchError("this patch is already applied to this model; revert it first.")
        # _fresh: the patch was just fitted on this model, which is its base by definition; its
        # fingerprints are taken during the edit.
        fresh = _fresh and not self.deltas
        expected = self.metadata.get("base_fingerprint")
        skipped = []
        if not expected and self._source is not None:
            if not force:
                raise PatchError(
                    f"{self._source} names no base model (its 'base_fingerprint' is missing), so nothing "
                    "shows it was made for this model; it was edited or made by another tool. Use the "
                    "original patch file, or pass force=True to apply it anyway."
                )
            skipped.append("the patch names no base model (no base fingerprint)")
        compare = bool(expected) and not force and not fresh
        # The plan reads every weight anyway: it takes the fingerprint lines in the same pass
        # (low-rank patches in the ck1 scheme; others take a fingerprint pass of their own).
        from_plan = not self.deltas and not _is_legacy(expected)
        plan = self._plan(model, undo=False, lines=fresh or (compare and from_plan), mods=mods)
        if compare:
            actual = _combine(plan.lines) if from_plan else self.fingerprint_of(model, like=expected)
            if actual != expected:
                base = self.metadata.get("base_model")
                raise PatchError(
                    "the model's weights differ from those the patch was made for (fingerprint mismatch): "
                    f"it may be another checkpoint{f' than {base!r}' if base else ''}, or other edits were "
                    "applied since. Pass force=True to apply the same edit anyway."
                )
        if plan.problems and not force:
            raise PatchError(
                "this patch would change the model far more than any edit this library makes: "
                + "; ".join(plan.problems)
                + ". The file is damaged or hostile; the model was not changed. Pass force=True to apply it anyway."
            )
        skipped += plan.problems
        if skipped:
            warnings.warn(
                "force=True skipped these checks: " + "; ".join(skipped) + " (the edited weights are still "
                "checked for NaN/Inf, and put back if any appears).",
                stacklevel=2,
            )
        after: dict | None = {} if fresh else None
        self._edit_weights(model, plan, undo=False, lines=after)
        if after is not None:
            self.metadata["base_fingerprint"], self.metadata["applied_fingerprint"] = (
                _combine(plan.lines),
                _combine(after),
            )
        else:
            self.metadata["applied_fingerprint"] = self.fingerprint_of(model)
        self._stack(model).append(self)
        return target

    def revert(self, model: Any) -> Any:
        """Undo this patch on ``model``; patches applied after it stay applied.

        A patch not applied in this process (a model loaded with the edit baked in) is reverted
        only if the model holds its result: its fingerprint is the patch's ``applied_fingerprint``
        and not its ``base_fingerprint``, and, for low-rank edits, re-applying the patch to the
        reverted weights gives back the current ones (checked on the weights, so a forged
        fingerprint cannot make revert change a model the patch was never applied to). The undo is
        also held to :data:`MAX_EDIT_RATIO`; there is no ``force``."""
        target, model = model, as_module(model)
        _check_metadata(self.metadata)
        mods = self._check_architecture(model)
        pos = self._position(model)
        stack = self._stack(model)
        if pos is None:
            applied, base = self.metadata.get("applied_fingerprint"), self.metadata.get("base_fingerprint")
            if not self._holds(model, "applied_fingerprint") or (
                base != applied and self._holds(model, "base_fingerprint")
            ):
                raise PatchError("this patch is not applied to this model, so there is nothing to revert.")
            plan = self._plan(model, undo=True, verify=True, mods=mods)
            if plan.problems:
                raise PatchError(
                    "refusing to revert: " + "; ".join(plan.problems) + ". The patch file is damaged or hostile; "
                    "the model was not changed."
                )
            self._edit_weights(model, plan, undo=True)
            return target
        if stack[pos] is not self:  # another copy (e.g. the same file read again): undo what was applied
            return stack[pos].revert(target)
        above = stack[pos + 1 :]
        for p in reversed(above):
            p._edit_weights(model, p._plan(model, undo=True), undo=True)
        self._edit_weights(model, self._plan(model, undo=True, mods=mods), undo=True)
        del stack[pos]
        for p in above:  # re-apply on the restored weights; their undo factors are recomputed
            # these were accepted when first applied: their size bound is not asked again
            p._edit_weights(model, p._plan(model, undo=False), undo=False)
            p.metadata["applied_fingerprint"] = p.fingerprint_of(model)
        return target

    # -- files --------------------------------------------------------------------------------
    def to_lora(self, path: str | Path, format: str = "peft", *, pipe: Any = None, rank: int = 32) -> dict[str, Any]:
        """Write this patch as a LoRA file (``format``: ``"peft"``, loadable with diffusers'
        ``pipe.load_lora_weights``, or ``"kohya"``, the layout Automatic1111 and ComfyUI read) and
        return what was written (``path``, ``layers``, ``bytes``, ``relative_error`` per dense layer).

        A low-rank edit of a Linear layer is exactly a LoRA of its rank. Its up factor comes from
        the base weights: the patch's own undo factors when it was applied (or saved after applying),
        else ``pipe`` (which must hold the patch's base weights). Dense updates (ESD, SalUn) are
        truncated to ``rank`` by SVD, with the relative error reported. The patch's metadata travels
        in the file's header (``ErasurePatch.from_lora`` reads it back).
        """
        from safetensors.torch import save_file

        from .lora import LORA_FORMATS, lora_state_dict, truncated_factors

        if format not in LORA_FORMATS:
            raise PatchError(f"format must be one of {LORA_FORMATS}; got {format!r}")
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
            raise PatchError(f"rank must be a positive integer; got {rank!r}")
        module = as_module(pipe) if pipe is not None else None
        if module is not None:
            self._check_architecture(module)
            if not (self._holds(module, "base_fingerprint") or self._holds(module, "applied_fingerprint")):
                raise PatchError(
                    "the pipeline given is not the patch's base model (its weights match neither the patch's base "
                    "nor its result); pass the pipeline the patch was made for."
                )
        layers: dict[str, tuple[Tensor, Tensor]] = {}
        errors: dict[str, float] = {}
        for name, e in self.edits.items():
            if e.kind != "linear" or e.basis.shape[0] != 1:
                raise PatchError(
                    f"the edit of {name!r} ({e.kind}, {e.basis.shape[0]} groups) has no LoRA form; only Linear layers do"
                )
            if e.undo is not None:
                a = e.undo[0]
            elif module is not None and self._holds(module, "base_fingerprint"):
                w = _modules(module)[name].weight.detach()
                a = edit_factor(w.to(torch.float64), e.basis[0], e.eta[0], None if e.dual is None else e.dual[0])
            else:
                raise PatchError(
                    f"the edit of {name!r} needs the base weights for its LoRA factor: pass pipe= (the model the "
                    "patch was made for, not edited)"
                )
            layers[name] = (-a.to(torch.float32), e.basis[0].T.to(torch.float32))
        for name, d in self.deltas.items():
            if not name.endswith(".weight") or d.ndim != 2:
                raise PatchError(
                    f"the patch changes {name!r} (shape {tuple(d.shape)}), which has no LoRA form: only 2-D Linear "
                    "weights do (keep the patch file for this one)"
                )
            up, down, err = truncated_factors(d, rank)
            layers[name[: -len(".weight")]] = (up, down)
            errors[name[: -len(".weight")]] = err
        two = any(n.startswith("text_encoder_2.") for n in layers) or (
            module is not None and any(n.startswith("text_encoder_2.") for n, _ in module.named_children())
        )
        tensors = lora_state_dict(layers, format, two_towers=two)
        header = {
            "eraser_lora": json.dumps(
                {"format": format, "metadata": self.metadata, "relative_error": errors, "rank": rank}
            )
        }
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        save_file(tensors, str(tmp), metadata=header)
        tmp.replace(path)
        return {"path": path, "layers": list(layers), "bytes": path.stat().st_size, "relative_error": errors}

    @classmethod
    def from_lora(cls, path: str | Path, pipe: Any, *, force: bool = False) -> ErasurePatch:
        """A dense patch of the LoRA file at ``path`` (either layout; any tool's) for ``pipe``, which is
        left unchanged. A file written by :meth:`to_lora` carries its base model's fingerprint: a
        pipeline with other weights is refused unless ``force=True``. Keys or shapes that do not fit
        the pipeline are refused, naming the first."""
        from safetensors import safe_open

        from .lora import parse_lora_state_dict

        path = Path(path)
        if not path.is_file():
            raise PatchError(f"no LoRA file at {path}")
        module = as_module(pipe)
        try:
            with safe_open(str(path), framework="pt") as f:
                header = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as err:  # not a safetensors file: say so, never unpickle
            raise PatchError(f"{path} is not a readable safetensors LoRA file ({str(err)[:200]})") from None
        info: dict[str, Any] = {}
        if "eraser_lora" in header:
            try:
                info = json.loads(header["eraser_lora"])
            except json.JSONDecodeError:
                raise PatchError(f"{path}: its eraser_lora header is not JSON; the file was edited") from None
            if not isinstance(info, dict) or not isinstance(info.get("metadata", {}), dict):
                raise PatchError(f"{path}: its eraser_lora header is not an object with a metadata object")
        mods = _modules(module)
        names = [n for n, m in mods.items() if isinstance(getattr(m, "weight", None), Tensor) and m.weight.ndim == 2]
        try:
            layers = parse_lora_state_dict(tensors, names)
        except ValueError as err:
            raise PatchError(f"{path}: {err}; the pipeline was not changed.") from None
        if not layers:
            raise PatchError(f"{path} holds no LoRA layers")
        source = info.get("metadata", {})
        expected = source.get("base_fingerprint")
        edited = source.get("layers") if isinstance(source.get("layers"), list) else None
        if isinstance(expected, str) and edited and not force:
            if any(n not in mods for n in edited) or fingerprint(module, edited, like=expected) != expected:
                raise PatchError(
                    f"{path} was exported from a patch for other weights (base fingerprint mismatch); pass the "
                    "pipeline it was made for, or force=True"
                )
        deltas: dict[str, Tensor] = {}
        for name, (up, down, scale) in layers.items():
            w = mods[name].weight
            if not torch.isfinite(up).all() or not torch.isfinite(down).all() or not math.isfinite(scale):
                raise PatchError(f"{path}: the LoRA factors of {name!r} hold NaN or Inf")
            if (up.shape[0], down.shape[1]) != tuple(w.shape):
                raise PatchError(
                    f"{path}: the LoRA of {name!r} is {up.shape[0]} x {down.shape[1]} but the layer's weight is "
                    f"{tuple(w.shape)}; the file was made for another model"
                )
            deltas[f"{name}.weight"] = (scale * up.to(torch.float64) @ down.to(torch.float64)).to(torch.float32)
        params = dict(module.named_parameters())
        meta = {k: v for k, v in source.items() if k not in ("id", "base_fingerprint", "applied_fingerprint")}
        meta.update({"method": source.get("method", "lora"), "from_lora": path.name})
        patch = cls(edits={}, metadata=meta, deltas=deltas)
        patch.metadata["base_fingerprint"] = parameters_fingerprint(
            {n: params[n].detach() for n in deltas}, fingerprint(module, [])
        )
        return patch

    def save(self, path: str | Path, compact: bool = False) -> Path:
        """Write one safetensors file (tensors + JSON metadata); a directory gets ``erasure_patch.safetensors``.

        ``compact=True`` leaves out the undo factors (each layer's output-side factor, most of the
        file): the edit is recomputed from the base weights on apply (the base fingerprint checks
        they are the same), and the file can revert the edits it applies, but not a model saved with
        the edit baked in. Dense patches have no compact form."""
        if compact and self.deltas:
            raise PatchError("a dense patch (trained methods) has no compact form; save it without compact=True")
        from safetensors.torch import save_file

        path = Path(path)
        if path.is_dir() or path.suffix == "":
            path.mkdir(parents=True, exist_ok=True)
            path = path / FILENAME
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors: dict[str, Tensor] = {}
        layers = {}
        shared: dict[int, str] = {}  # layers fitted on the same features share one basis: store it once
        for i, (name, e) in enumerate(self.edits.items()):
            spec: dict[str, Any] = {"name": name, "kind": e.kind, "shape": list(e.shape)}
            for part in ("basis", "eta", "dual", "undo"):
                t = getattr(e, part)
                if t is None or (compact and part == "undo"):
                    continue
                if part != "undo" and id(t) in shared:
                    spec[part] = shared[id(t)]
                    continue
                key = f"{i}.{part}"
                # The undo factor only serves to revert a model saved with the edit baked in;
                # float32 halves the file at a relative error of about 1e-7.
                tensors[key] = t.detach().to("cpu", torch.float32 if part == "undo" else t.dtype).contiguous()
                shared[id(t)] = key
            layers[str(i)] = spec
        for j, (name, d) in enumerate(self.deltas.items()):
            tensors[f"delta.{j}"] = d.detach().to("cpu").contiguous()
        text = json.dumps({"metadata": self.metadata, "layers": layers, "deltas": list(self.deltas)})
        header = {"eraser": text, CHECKSUM_KEY: content_checksum(text, tensors)}
        tmp = path.with_name(path.name + ".tmp")
        save_file(tensors, str(tmp), metadata=header)
        tmp.replace(path)  # never leave a half-written patch under the final name
        return path

    @classmethod
    def load(cls, path: str | Path) -> ErasurePatch:
        """Read a patch written by :meth:`save` (never unpickles anything). Every part of the file
        is checked (types, shapes, dtypes, finite values, and the content checksum when the file has
        one: files written before it have none); a bad file raises :class:`PatchError`."""
        from safetensors import safe_open

        path = Path(path)
        if path.is_dir():
            path = path / FILENAME
        if not path.is_file():
            raise PatchError(f"no patch file at {path}")
        try:
            with safe_open(str(path), framework="pt") as f:
                header = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
            text = header["eraser"]
            info = json.loads(text)
        except Exception as err:  # safetensors, JSON and key errors all mean the same thing here
            raise PatchError(f"{path} is not a readable erasure patch (corrupt or truncated?): {err}") from None
        checksum = header.get(CHECKSUM_KEY)
        if checksum is not None and checksum != content_checksum(text, tensors):
            raise PatchError(
                f"{path} was corrupted or edited after it was saved (its content checksum does not match); "
                "use an intact copy (download it again, or re-create the patch)."
            )
        try:
            patch = cls(**_parse(info, tensors))
        except PatchError as err:
            raise PatchError(f"{path}: {err}") from None
        patch._source = path
        return patch

    # diffusers-style names for the same two operations
    save_pretrained = save

    @classmethod
    def from_pretrained(cls, path: str | Path) -> ErasurePatch:
        """Same as :meth:`load` (a file, or a folder holding ``erasure_patch.safetensors``)."""
        return cls.load(path)


@dataclass
class _Plan:
    """What :meth:`ErasurePatch._plan` found: the weights to write, each layer's factor, the size
    bounds that failed, whether every write is sure to stay finite, and fingerprint lines."""

    targets: list[tuple[str, Tensor, LayerEdit | None]]
    exact: bool
    factors: dict[str, Tensor | None] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    safe: bool = True
    lines: dict[str, str] = field(default_factory=dict)  # base fingerprint lines, when asked


def _all_finite(w: Tensor) -> bool:
    """No NaN or Inf in ``w`` (one reduction: a NaN or Inf anywhere makes the sum non-finite)."""
    return bool(torch.isfinite(w.detach().sum(dtype=torch.promote_types(w.dtype, torch.float32))))


def _norm(t: Tensor) -> float:
    """Frobenius norm (in at least float32); inf or NaN if ``t`` holds Inf or NaN."""
    return float(torch.linalg.vector_norm(t.detach(), dtype=torch.promote_types(t.dtype, torch.float32)))


def _spectral_bound(u: Tensor) -> float:
    """An upper bound of the spectral norm of a (G, D, k) basis, the largest over its groups:
    ``||U||_2^2 <= max abs row sum of U^T U`` (exactly 1 for an orthonormal basis)."""
    if u.numel() == 0:
        return 0.0
    u = u.detach().to(torch.float64)
    return math.sqrt(float((u.mT @ u).abs().sum(dim=-1).max()))


def _stays_finite(w: Tensor, w_norm: float, update: float) -> bool:
    """Whether adding an update of size (bound) ``update`` to ``w`` cannot overflow, neither in
    ``w``'s dtype (every entry is below ``w_norm + update``) nor in the finiteness check's sum."""
    top = w_norm + update
    return (
        top < torch.finfo(w.dtype).max / 2 and top * math.sqrt(max(w.numel(), 1)) < torch.finfo(torch.float32).max / 2
    )


def _add_low_rank(weight: Tensor, a: Tensor, basis: Tensor, sign: float) -> None:
    """``weight += sign * A @ U.T`` per group, in place. float32 weights are updated directly,
    others through at least float32 (the caller checks the result)."""
    g = basis.shape[0]
    w = weight.detach()
    if w.dtype == torch.float32 and w.is_contiguous():
        m = w.view(g, -1, basis.shape[1])
        a32, u32 = a.to(w.device, torch.float32), basis.to(w.device, torch.float32)
        if g == 1:
            m[0].addmm_(a32[0], u32[0].T, alpha=sign)
        else:
            m.baddbmm_(a32, u32.transpose(-1, -2), alpha=sign)
        return
    m = w.reshape(g, -1, basis.shape[1])
    new = apply_factor(m[0], a[0], basis[0], sign=sign).unsqueeze(0) if g == 1 else apply_factor(m, a, basis, sign=sign)
    w.copy_(new.reshape(w.shape))


def _invalid(what: str, problem: str) -> PatchError:
    return PatchError(
        f"{what} is invalid: {problem}. The file is damaged or was not made by this library; "
        "re-create the patch, or use an intact copy."
    )


def _check_tensor(what: str, t: Any, checked: set[int] | None = None) -> Tensor:
    """``t`` if it is a floating-point tensor with finite values (``checked``: ids of tensors
    already checked, skipped)."""
    if checked is not None and id(t) in checked:
        return t
    if not isinstance(t, Tensor):
        raise _invalid(what, f"it is a {type(t).__name__}, not a tensor")
    if t.dtype not in _FLOAT_DTYPES:
        raise _invalid(what, f"its dtype is {t.dtype}, not a floating-point one")
    # one float64 sum: NaN or Inf anywhere makes it non-finite, and float32 values cannot overflow it
    if not math.isfinite(float(t.detach().sum(dtype=torch.float64))):
        raise _invalid(what, "it contains NaN or Inf (or values too large to use)")
    if checked is not None:
        checked.add(id(t))
    return t


def _check_delta(name: str, d: Any) -> Tensor:
    return _check_tensor(f"the dense delta of {name!r}", d)


def _validate_edit(e: LayerEdit, checked: set[int] | None = None) -> None:
    """Check one edit's tensors against each other and against the weight shape it records:
    basis and dual (G, D, k), eta (G, k), undo (G, out/G, k), with ``D`` the weight's input size
    (elements per output row) and ``G`` dividing its outputs; floating dtypes, finite values
    (``checked``: ids of tensors already checked, shared between layers)."""
    what = f"the patch's edit of {e.name!r}"
    for part in ("basis", "eta"):
        if getattr(e, part) is None:
            raise _invalid(what, f"it has no {part}")
    for part in ("basis", "eta", "dual", "undo"):
        if getattr(e, part) is not None:
            _check_tensor(f"{what} ({part})", getattr(e, part), checked)
    shape = tuple(e.shape)
    if len(shape) < 2 or min(shape) <= 0:
        raise _invalid(what, f"weight shape {shape} is not a layer's")
    if e.basis.ndim != 3 or e.basis.shape[0] == 0 or shape[0] % e.basis.shape[0]:
        raise _invalid(what, f"its basis has shape {tuple(e.basis.shape)}, not (groups, inputs, rank)")
    g, _, k = e.basis.shape
    out, inputs = shape[0], math.prod(shape) // shape[0]
    expected = {"basis": (g, inputs, k), "eta": (g, k), "dual": (g, inputs, k), "undo": (g, out // g, k)}
    for part, want in expected.items():
        t = getattr(e, part)
        if t is not None and tuple(t.shape) != want:
            raise _invalid(what, f"its {part} has shape {tuple(t.shape)}, but a weight of shape {shape} needs {want}")


def _check_undo(name: str, w: Tensor, e: LayerEdit) -> None:
    """Refuse an undo factor (read from a file) that does not explain the weight ``w``: reverting
    gives ``B = w + A U^T``, and applying the patch to ``B`` must give back ``w``, i.e. its
    factor ``B V diag(eta)`` must equal ``A`` (up to the rounding of ``w``'s dtype)."""
    g, d, _ = e.basis.shape
    m = w.reshape(g, -1, d)
    b = apply_factor(m, e.undo, e.basis, sign=1.0)
    if not _all_finite(b):
        raise PatchError(f"reverting {name!r} would give NaN or Inf; the patch file is damaged or hostile.")
    again = edit_factor(b, e.basis, e.eta, e.dual)
    eta = float(e.eta.detach().abs().max()) if e.eta.numel() else 0.0
    reach = _spectral_bound(e.basis if e.dual is None else e.dual) * eta  # bounds ||V diag(eta)||_2
    tolerance = math.sqrt(torch.finfo(w.dtype).eps) * (_norm(e.undo) + _norm(b) * reach)
    if not _norm(again - e.undo.to(again.dtype)) <= tolerance:
        raise PatchError(
            f"this patch is not applied to this model: re-applying it to the reverted {name!r} would not give "
            "back the current weights, so there is nothing to revert (or the file's undo factors were edited)."
        )


def _check_metadata(metadata: Any) -> None:
    """Refuse metadata of types this module cannot read (a hand-edited file): it must be a dict,
    and the values the patch itself reads must be strings."""
    if not isinstance(metadata, dict):
        raise _invalid("the patch's metadata", f"it is a {type(metadata).__name__}, not a JSON object")
    for key in ("id", "format", "base_fingerprint", "applied_fingerprint"):
        value = metadata.get(key)
        if value is not None and not isinstance(value, str):
            raise _invalid(f"the patch's metadata {key!r}", f"it is a {type(value).__name__}, not a string")


def _parse(info: Any, tensors: dict[str, Tensor]) -> dict[str, Any]:
    """The ``ErasurePatch`` fields described by a file's header ``info`` and its tensors, every
    header value checked for type before use."""
    if not isinstance(info, dict) or not isinstance(info.get("layers"), dict) or "metadata" not in info:
        raise _invalid("the patch's header", "it is not an object with 'metadata' and 'layers'")
    metadata, layers, names = info["metadata"], info["layers"], info.get("deltas", [])
    _check_metadata(metadata)
    if metadata.get("format") != FORMAT:
        raise PatchError(f"it has format {metadata.get('format')!r}; this version reads {FORMAT!r}")
    used: set[str] = set()

    def tensor(key: Any, what: str) -> Tensor:
        if not isinstance(key, str) or key not in tensors:
            raise _invalid(what, f"it refers to tensor {key!r}, which the file does not hold")
        used.add(key)
        return tensors[key]

    edits: dict[str, LayerEdit] = {}
    for i, spec in layers.items():
        what = f"the patch's layer entry {i!r}"
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str) or not isinstance(spec.get("kind"), str):
            raise _invalid(what, "it is not an object with a string 'name' and 'kind'")
        shape = spec.get("shape")
        if not isinstance(shape, list) or not all(isinstance(n, int) and not isinstance(n, bool) for n in shape):
            raise _invalid(what, f"its shape {shape!r} is not a list of integers")
        try:
            kind = kind_by_name(spec["kind"]).name
        except ValueError as err:
            raise _invalid(what, str(err)) from None
        parts = {}
        for part in ("basis", "eta", "dual", "undo"):
            key = spec.get(part, f"{i}.{part}")  # shared tensors are named in the entry
            parts[part] = tensor(key, what) if part in spec or key in tensors else None
        e = LayerEdit(name=spec["name"], kind=kind, shape=tuple(shape), **parts)
        if e.name in edits:
            raise _invalid(what, f"layer {e.name!r} is edited twice")
        _validate_edit(e)
        edits[e.name] = e
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names) or len(set(names)) < len(names):
        raise _invalid("the patch's dense parameter list", "it is not a list of distinct names")
    deltas = {
        name: _check_delta(name, tensor(f"delta.{j}", f"the dense delta of {name!r}")) for j, name in enumerate(names)
    }
    extra = sorted(set(tensors) - used)
    if extra:
        raise _invalid("the patch file", f"it holds tensors its header does not describe: {extra[:5]}")
    return {"edits": edits, "metadata": metadata, "deltas": deltas}


def content_checksum(header: str, tensors: dict[str, Tensor]) -> str:
    """SHA-256 of a patch file's content: its header text, then every tensor's name, shape,
    dtype and bytes in name order. It names a corrupted or edited file as such; anyone can
    recompute it, so it proves nothing about who made the file (the fingerprints tie a patch to
    its model, and every edit is checked on its own)."""
    h = hashlib.sha256(header.encode())
    for name in sorted(tensors):
        _hash_tensor(h, name, tensors[name])
    return h.hexdigest()
