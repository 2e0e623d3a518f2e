"""Erasure patches: the low-rank record of an edit, to apply, undo, save and ship.

A patch holds, per layer, the subspace (basis U, optional oblique dual V, strengths eta) and the
undo factor A = W V diag(eta) of the model it was applied to: W* = W - A U^T, W = W* + A U^T.
Patches applied to one model form a stack (kept on the model object), so reverting one that lies
under others re-applies those above it: erase A, erase B, revert A leaves B erased.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .layers import LayerKind, kind_by_name, layer_kind
from .projection import apply_factor, edit_factor

__all__ = ["LayerEdit", "ErasurePatch", "PatchError", "fingerprint"]

FORMAT = "eraser.patch/1"
FILENAME = "erasure_patch.safetensors"
_STACK_ATTR = "_eraser_patch_stack"


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


def fingerprint(model: nn.Module, names: list[str]) -> str:
    """SHA-256 over the names, shapes, dtypes and bytes of the named layers' edited weights."""
    h = hashlib.sha256()
    mods = _modules(model)
    for name in sorted(names):
        mod = mods.get(name)
        kind = layer_kind(mod) if mod is not None else None
        if kind is None:
            h.update(f"{name}:missing".encode())
            continue
        w = kind.weight(mod).detach()
        h.update(f"{name}:{kind.name}:{tuple(w.shape)}:{w.dtype}".encode())
        h.update(w.contiguous().cpu().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@dataclass
class ErasurePatch:
    """A reversible, saveable low-rank edit of a model's layers, with its metadata."""

    edits: dict[str, LayerEdit]
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.metadata.setdefault("id", uuid.uuid4().hex)
        self.metadata.setdefault("format", FORMAT)

    # -- inspection -------------------------------------------------------------------------
    @property
    def layers(self) -> list[str]:
        return list(self.edits)

    def __repr__(self) -> str:
        ranks = {n: e.rank for n, e in self.edits.items()}
        return f"ErasurePatch(method={self.metadata.get('method')!r}, names={self.metadata.get('names')}, ranks={ranks})"

    def num_parameters(self) -> int:
        """Numbers stored by the patch (basis, dual, eta and undo factors)."""
        return sum(t.numel() for e in self.edits.values() for t in (e.basis, e.eta, e.dual, e.undo) if t is not None)

    # -- model edits --------------------------------------------------------------------------
    def _check_architecture(self, model: nn.Module) -> dict[str, nn.Module]:
        mods = _modules(model)
        problems = []
        for name, e in self.edits.items():
            mod = mods.get(name)
            kind = layer_kind(mod) if mod is not None else None
            if mod is None:
                problems.append(f"{name!r} does not exist")
            elif kind is None or kind.name != e.kind:
                problems.append(f"{name!r} is {type(mod).__name__}, the patch edits a {e.kind} layer")
            elif tuple(kind.weight(mod).shape) != tuple(e.shape):
                problems.append(f"{name!r} has weight shape {tuple(kind.weight(mod).shape)}, the patch expects {tuple(e.shape)}")
        if problems:
            raise PatchError(
                "this patch was made for another architecture: " + "; ".join(problems)
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

    def _edit_weights(self, mods: dict[str, nn.Module], undo: bool) -> None:
        """Compute every new weight first, then assign them all (no partial edits on error)."""
        new: dict[str, Tensor] = {}
        factors: dict[str, Tensor] = {}
        for name, e in self.edits.items():
            mod, kind = mods[name], e._kind()
            w = kind.as_matrix(mod).detach()
            if not torch.isfinite(w).all():
                raise PatchError(f"the weight of layer {name!r} contains NaN or Inf; refusing to edit it.")
            if undo:
                if e.undo is None:
                    raise PatchError(f"patch has no undo factor for {name!r}; it was never applied.")
                a = e.undo
                new[name] = apply_factor(w, a, e.basis, sign=+1.0)
            else:
                a = edit_factor(w, e.basis, e.eta, e.dual)
                new[name] = apply_factor(w, a, e.basis, sign=-1.0)
            factors[name] = a
            if not torch.isfinite(new[name]).all():
                raise PatchError(f"editing layer {name!r} produced NaN or Inf (weight dtype overflow?).")
        with torch.no_grad():
            for name, e in self.edits.items():
                mod, kind = mods[name], e._kind()
                kind.weight(mod).copy_(kind.from_matrix(mod, new[name]))
                if not undo:
                    e.undo = factors[name].detach().to("cpu")

    def apply(self, model: nn.Module, force: bool = False) -> nn.Module:
        """Edit ``model`` in place. Refuses a model whose weights differ from the patch's base
        model (``force=True`` applies the same subspace removal to them anyway)."""
        mods = self._check_architecture(model)
        if self._position(model) is not None:
            raise PatchError("this patch is already applied to this model; revert it first.")
        expected = self.metadata.get("base_fingerprint")
        if expected and not force and fingerprint(model, self.layers) != expected:
            raise PatchError(
                "the model's weights differ from those the patch was made for (fingerprint mismatch): "
                "it may be another checkpoint, or other edits were applied since. Pass force=True "
                "to apply the same subspace removal anyway."
            )
        self._edit_weights(mods, undo=False)
        self.metadata["applied_fingerprint"] = fingerprint(model, self.layers)
        self._stack(model).append(self)
        return model

    def revert(self, model: nn.Module) -> nn.Module:
        """Undo this patch on ``model``; patches applied after it stay applied."""
        mods = self._check_architecture(model)
        pos = self._position(model)
        stack = self._stack(model)
        if pos is None:
            # A model loaded afresh with this patch's edit baked in: revert only if it is exactly
            # the edited model.
            if fingerprint(model, self.layers) != self.metadata.get("applied_fingerprint"):
                raise PatchError("this patch is not applied to this model, so there is nothing to revert.")
            self._edit_weights(mods, undo=True)
            return model
        above = stack[pos + 1 :]
        for p in reversed(above):
            p._edit_weights(p._check_architecture(model), undo=True)
        self._edit_weights(mods, undo=True)
        del stack[pos]
        for p in above:  # re-apply on the restored weights; their undo factors are recomputed
            p._edit_weights(p._check_architecture(model), undo=False)
            p.metadata["applied_fingerprint"] = fingerprint(model, p.layers)
        return model

    # -- files --------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write one safetensors file (tensors + JSON metadata); a directory gets ``erasure_patch.safetensors``."""
        from safetensors.torch import save_file

        path = Path(path)
        if path.is_dir() or path.suffix == "":
            path.mkdir(parents=True, exist_ok=True)
            path = path / FILENAME
        tensors: dict[str, Tensor] = {}
        layers = {}
        for i, (name, e) in enumerate(self.edits.items()):
            for part in ("basis", "eta", "dual", "undo"):
                t = getattr(e, part)
                if t is not None:
                    tensors[f"{i}.{part}"] = t.detach().to("cpu").contiguous()
            layers[str(i)] = {"name": name, "kind": e.kind, "shape": list(e.shape)}
        header = {"eraser": json.dumps({"metadata": self.metadata, "layers": layers})}
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
                e = LayerEdit(
                    name=spec["name"],
                    kind=kind_by_name(spec["kind"]).name,
                    shape=tuple(int(s) for s in spec["shape"]),
                    basis=tensors[f"{i}.basis"],
                    eta=tensors[f"{i}.eta"],
                    dual=tensors.get(f"{i}.dual"),
                    undo=tensors.get(f"{i}.undo"),
                )
                _validate_edit(e)
                edits[e.name] = e
        except PatchError:
            raise
        except Exception as err:  # safetensors, JSON and key errors all mean the same thing here
            raise PatchError(f"{path} is not a readable erasure patch (corrupt or truncated?): {err}") from None
        if metadata.get("format") != FORMAT:
            raise PatchError(f"{path} has format {metadata.get('format')!r}; this version reads {FORMAT!r}")
        return cls(edits=edits, metadata=metadata)


def _validate_edit(e: LayerEdit) -> None:
    g, d, k = e.basis.shape
    ok = e.eta.shape == (g, k) and (e.dual is None or e.dual.shape == (g, d, k))
    ok = ok and (e.undo is None or (e.undo.shape[0] == g and e.undo.shape[2] == k))
    tensors = [t for t in (e.basis, e.eta, e.dual, e.undo) if t is not None]
    if not ok or not all(torch.isfinite(t).all() for t in tensors):
        raise PatchError(f"patch entry for layer {e.name!r} is inconsistent (shapes or non-finite values)")
