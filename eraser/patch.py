"""Erasure patches: the low-rank record of an edit, to apply, undo, save and ship.

A patch holds, per layer, the subspace (basis U, optional oblique dual V, strengths eta) and the
undo factor A = W V diag(eta) of the model it was applied to: W* = W - A U^T, W = W* + A U^T.
Patches applied to one model form a stack (kept on the model object), so reverting one that lies
under others re-applies those above it: erase A, erase B, revert A leaves B erased.

Trained methods that change whole parameters store them as dense ``deltas`` (new - old) in the
same container. A patch applies to an ``nn.Module`` or to a pipeline-like object (diffusers): its
``nn.Module`` components are addressed as ``"unet.…"``, ``"text_encoder.…"``.
"""

from __future__ import annotations

import hashlib
import json
import uuid
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
        self.metadata.setdefault("id", uuid.uuid4().hex)
        self.metadata.setdefault("format", FORMAT)
        # Exact pre-edit values of the edited weights, kept in memory (never saved) so that revert
        # is bit-exact; ``exact_revert = False`` saves that memory (revert is then exact up to
        # rounding), "auto" keeps them within EXACT_REVERT_BUDGET of the model's size.
        self._originals: dict[str, Tensor] = {}
        self.exact_revert: bool | str = "auto"

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

    def _edit_weights(self, model: nn.Module, undo: bool, lines: tuple[dict, dict] | None = None) -> None:
        """Edit (or restore) every weight in place, one layer at a time so that peak memory is one
        layer's; if any layer fails, the layers already done are put back and the error propagates.
        ``lines``: two dicts that receive each layer's fingerprint line before and after its edit
        (computed while the layer is in cache: cheaper than two fingerprint passes).

        Reverting restores the exact original weights kept in memory (``exact_revert``) when the
        model still holds exactly this patch's result (checked by fingerprint); otherwise it adds
        the undo factors back, which is exact up to rounding and keeps later changes to the weights.
        """
        mods = self._check_architecture(model)
        exact = undo and bool(self._originals) and self._holds(model, "applied_fingerprint")
        params = dict(model.named_parameters()) if self.deltas else {}
        targets: list[tuple[str, Tensor, LayerEdit | None]] = [
            (name, e._kind().weight(mods[name]), e) for name, e in self.edits.items()
        ] + [(name, params[name], None) for name in self.deltas]
        # Without kept values a rollback re-applies the factors (exact up to rounding).
        keep = self._keeps_originals(model, [w for _, w, _ in targets]) and not exact
        done: list[tuple[str, Tensor, LayerEdit | None, Tensor | None]] = []
        factors: dict[str, Tensor] = {}
        sign = 1.0 if undo else -1.0
        try:
            with torch.no_grad():
                for name, weight, e in targets:
                    previous = weight.detach().clone() if keep else None
                    if lines is not None and e is not None:
                        lines[0][name] = _layer_line(name, e.kind, weight)
                    if exact and name in self._originals:
                        weight.copy_(self._originals[name].to(weight.device))
                        if e is not None:
                            factors[name] = e.undo  # a rollback re-applies the edit
                    else:
                        self._write(name, weight, e, sign, factors)
                    done.append((name, weight, e, previous))
                    if lines is not None and e is not None:
                        lines[1][name] = _layer_line(name, e.kind, weight)
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
            self._originals = {name: previous for name, _, _, previous in done if previous is not None}

    def _write(self, name: str, weight: Tensor, e: LayerEdit | None, sign: float, factors: dict) -> None:
        """Edit (sign -1) or undo (sign +1) one layer's weight, or one dense parameter, in place."""
        nonfinite = PatchError(f"the weight of {name!r} contains NaN or Inf; refusing to edit it.")
        if e is None:  # a dense delta
            if not _all_finite(weight):
                raise nonfinite
            w = weight.detach()
            new = (w.to(torch.float32) - sign * self.deltas[name].to(w.device)).to(w.dtype)
            _check_new(name, new)
            weight.copy_(new)
            return
        if sign > 0:
            if e.undo is None:
                raise PatchError(f"patch has no undo factor for {name!r}; it was never applied.")
            if not _all_finite(weight):
                raise nonfinite
            a = e.undo
        else:
            m = weight.detach().reshape(
                e.basis.shape[0], -1, e.basis.shape[1]
            )  # (groups, out/groups, D), as LayerKind.as_matrix
            if m.shape[0] == 1:  # one group: plain matrix products are several times faster than batched ones
                a = edit_factor(m[0], e.basis[0], e.eta[0], None if e.dual is None else e.dual[0]).unsqueeze(0)
            else:
                a = edit_factor(m, e.basis, e.eta, e.dual)
            if not torch.isfinite(a).all():  # NaN/Inf anywhere in W reaches W V: a cheap check
                raise nonfinite
        factors[name] = a
        _add_low_rank(weight, a, e.basis, sign, check=name)

    def apply(self, model: Any, force: bool = False, *, _fresh: bool = False) -> Any:
        """Edit ``model`` (an nn.Module or a pipeline) in place and return it. Refuses a model whose
        weights differ from the patch's base model (``force=True`` applies the same edit anyway)."""
        target, model = model, as_module(model)
        self._check_architecture(model)
        if self._position(model) is not None:
            raise PatchError("this patch is already applied to this model; revert it first.")
        # _fresh: the patch was just fitted on this model, which is its base by definition; its
        # fingerprints are taken during the edit.
        fresh = _fresh and not self.deltas
        expected = self.metadata.get("base_fingerprint")
        if expected and not force and not fresh and self.fingerprint_of(model, like=expected) != expected:
            base = self.metadata.get("base_model")
            raise PatchError(
                "the model's weights differ from those the patch was made for (fingerprint mismatch): "
                f"it may be another checkpoint{f' than {base!r}' if base else ''}, or other edits were "
                "applied since. Pass force=True to apply the same edit anyway."
            )
        lines: tuple[dict, dict] | None = ({}, {}) if fresh else None
        self._edit_weights(model, undo=False, lines=lines)
        if lines is not None:
            self.metadata["base_fingerprint"], self.metadata["applied_fingerprint"] = (
                _combine(lines[0]),
                _combine(lines[1]),
            )
        else:
            self.metadata["applied_fingerprint"] = self.fingerprint_of(model)
        self._stack(model).append(self)
        return target

    def revert(self, model: Any) -> Any:
        """Undo this patch on ``model``; patches applied after it stay applied."""
        target, model = model, as_module(model)
        self._check_architecture(model)
        pos = self._position(model)
        stack = self._stack(model)
        if pos is None:
            # A model loaded afresh with this patch's edit baked in: revert only if it is exactly
            # the edited model.
            if not self._holds(model, "applied_fingerprint"):
                raise PatchError("this patch is not applied to this model, so there is nothing to revert.")
            self._edit_weights(model, undo=True)
            return target
        above = stack[pos + 1 :]
        for p in reversed(above):
            p._edit_weights(model, undo=True)
        self._edit_weights(model, undo=True)
        del stack[pos]
        for p in above:  # re-apply on the restored weights; their undo factors are recomputed
            p._edit_weights(model, undo=False)
            p.metadata["applied_fingerprint"] = p.fingerprint_of(model)
        return target

    # -- files --------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write one safetensors file (tensors + JSON metadata); a directory gets ``erasure_patch.safetensors``."""
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
                if t is None:
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
        header = {"eraser": json.dumps({"metadata": self.metadata, "layers": layers, "deltas": list(self.deltas)})}
        tmp = path.with_name(path.name + ".tmp")
        save_file(tensors, str(tmp), metadata=header)
        tmp.replace(path)  # never leave a half-written patch under the final name
        return path

    @classmethod
    def load(cls, path: str | Path) -> ErasurePatch:
        """Read a patch written by :meth:`save` (never unpickles anything)."""
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
            info = json.loads(header["eraser"])
            metadata, layers = info["metadata"], info["layers"]
            edits = {}
            for i, spec in sorted(layers.items(), key=lambda kv: int(kv[0])):

                def part(name: str, i: str = i, spec: dict = spec) -> Tensor | None:
                    return tensors[spec[name]] if name in spec else tensors.get(f"{i}.{name}")

                e = LayerEdit(
                    name=spec["name"],
                    kind=kind_by_name(spec["kind"]).name,
                    shape=tuple(int(s) for s in spec["shape"]),
                    basis=part("basis"),
                    eta=part("eta"),
                    dual=part("dual"),
                    undo=part("undo"),
                )
                _validate_edit(e)
                edits[e.name] = e
            deltas = {name: tensors[f"delta.{j}"] for j, name in enumerate(info.get("deltas", []))}
            if not all(torch.isfinite(d).all() for d in deltas.values()):
                raise PatchError("dense deltas contain NaN or Inf")
        except PatchError:
            raise
        except Exception as err:  # safetensors, JSON and key errors all mean the same thing here
            raise PatchError(f"{path} is not a readable erasure patch (corrupt or truncated?): {err}") from None
        if metadata.get("format") != FORMAT:
            raise PatchError(f"{path} has format {metadata.get('format')!r}; this version reads {FORMAT!r}")
        return cls(edits=edits, metadata=metadata, deltas=deltas)

    # diffusers-style names for the same two operations
    save_pretrained = save

    @classmethod
    def from_pretrained(cls, path: str | Path) -> ErasurePatch:
        """Same as :meth:`load` (a file, or a folder holding ``erasure_patch.safetensors``)."""
        return cls.load(path)


def _all_finite(w: Tensor) -> bool:
    """No NaN or Inf in ``w`` (one reduction: a NaN or Inf anywhere makes the sum non-finite)."""
    return bool(torch.isfinite(w.detach().sum(dtype=torch.promote_types(w.dtype, torch.float32))))


def _check_new(name: str, new: Tensor) -> None:
    if new.dtype in (torch.float16, torch.bfloat16) and not _all_finite(new):
        raise PatchError(f"editing {name!r} produced NaN or Inf (weight dtype overflow?).")


def _add_low_rank(weight: Tensor, a: Tensor, basis: Tensor, sign: float, check: str | None = None) -> None:
    """``weight += sign * A @ U.T`` per group, in place. float32 weights are updated directly; half
    weights go through float32 and are checked for overflow (``check``: the layer's name) first."""
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
    new = new.reshape(w.shape)
    if check is not None:
        _check_new(check, new)
    w.copy_(new)


def _validate_edit(e: LayerEdit) -> None:
    g, d, k = e.basis.shape
    ok = e.eta.shape == (g, k) and (e.dual is None or e.dual.shape == (g, d, k))
    ok = ok and (e.undo is None or (e.undo.shape[0] == g and e.undo.shape[2] == k))
    tensors = [t for t in (e.basis, e.eta, e.dual, e.undo) if t is not None]
    if not ok or not all(torch.isfinite(t).all() for t in tensors):
        raise PatchError(f"patch entry for layer {e.name!r} is inconsistent (shapes or non-finite values)")
