"""The demo's logic without the UI: server-side models, per-user stacks of erasures, bounded input.

Every user shares one copy of each model. A user's erasures are a stack of patches that is applied
only while that user's request runs, under the model's lock, and removed afterwards (the edited
weights are then restored bit-exactly from a copy of the base weights), so one user's erasure never
shows in another user's images ("patch on demand"). Unlink patches are low-rank, so applying a
stack costs milliseconds.
"""

from __future__ import annotations

import contextlib
import functools
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from eraser.loading import BUNDLED_DIGITS as BUNDLED
from eraser.registry import get_method

# The library's default Unlink strength for pipelines; the demo's field starts there.
UNLINK_STRENGTH: float = get_method("unlink", family="diffusion").config_cls().strength

__all__ = [
    "DemoError",
    "Limits",
    "DemoConfig",
    "ModelSlot",
    "Erasure",
    "Session",
    "METHODS",
    "load_model",
    "close_session",
]

# Methods offered in the demo: label -> (registry name, uses the "keep" concepts, expected time note).
METHODS: dict[str, tuple[str, bool, str]] = {
    "Unlink": ("unlink", False, "about a second"),
    "Unlink + keep": ("unlink", True, "about a second; protects the concepts to keep"),
    "UCE": ("uce", True, "about a second (closed form)"),
    "ESD-x (trained)": ("esd_x_strict", False, "minutes on CPU (trains the UNet)"),
}


class DemoError(ValueError):
    """A message for the user; the models are unchanged."""


@dataclass(frozen=True)
class Limits:
    """Bounds on what one request may ask for."""

    max_prompt_chars: int = 200
    max_concepts: int = 4
    max_concept_chars: int = 60
    max_k: int = 64
    max_images: int = 8
    max_stack: int = 8
    max_patch_bytes: int = 20_000_000
    trained_steps: int = 100  # steps of trained methods in the demo (their papers use 1000)


@dataclass
class DemoConfig:
    """What the server offers: display name -> model spec (``bundled:digits``, a hub id or a local
    pipeline folder, chosen by whoever starts the server; users only pick from this list)."""

    models: dict[str, str] = field(default_factory=lambda: {"digits (bundled, CPU)": BUNDLED})
    device: str = "cpu"
    dtype: str = "float32"
    steps: int | None = None  # denoising steps (None: each pipeline's default)
    limits: Limits = field(default_factory=Limits)


def load_model(spec: str, device: str = "cpu", dtype: str = "float32") -> Any:
    """A pipeline for a server-side model spec."""
    from apps.common import load_pipeline_by_name

    return load_pipeline_by_name(spec, dtype=dtype, device=device)


class ModelSlot:
    """One shared pipeline, its lock and a copy of the base weights that patches touch."""

    def __init__(self, name: str, spec: str, pipe: Any) -> None:
        from eraser.patch import as_module

        self.name, self.spec, self.pipe = name, spec, pipe
        self.lock = threading.RLock()
        self.module = as_module(pipe)
        self._params = dict(self.module.named_parameters())
        # Every demo method edits only cross-attention K/V: keep their base values from the start
        # (uploaded patches that touch more are added before they are first applied).
        self._base: dict[str, Tensor] = {
            n: p.detach().clone() for n, p in self._params.items() if re.search(r"attn2\.to_[kv]\.weight$", n)
        }
        if hasattr(pipe, "set_progress_bar_config"):
            pipe.set_progress_bar_config(disable=True)

    @property
    def bundled(self) -> bool:
        return self.spec == BUNDLED

    def _touched(self, patch: Any) -> list[str]:
        names = [f"{layer}.{p}" for layer in patch.layers for p in ("weight", "bias")] + list(patch.parameters)
        return [n for n in names if n in self._params]

    @contextlib.contextmanager
    def applied(self, stack: list[Erasure]) -> Iterator[Any]:
        """Inside: the pipeline with ``stack`` applied (holding the lock). After: the base weights, exactly."""
        with self.lock:
            for e in stack:
                for n in self._touched(e.patch):
                    self._base.setdefault(n, self._params[n].detach().clone())
            done: list[Any] = []
            try:
                for e in stack:
                    e.patch.apply(self.pipe)
                    done.append(e.patch)
                yield self.pipe
            finally:
                for p in reversed(done):
                    p.revert(self.pipe)
                self.restore()

    def restore(self) -> None:
        """Copy the saved base values back into every parameter a patch ever touched."""
        with self.lock, torch.no_grad():
            for n, v in self._base.items():
                self._params[n].copy_(v)


@dataclass
class Erasure:
    """One entry of a user's stack."""

    label: str
    patch: Any
    seconds: float
    file: Path

    @property
    def size_bytes(self) -> int:
        return self.file.stat().st_size


class Session:
    """One user's state: the chosen model and the stack of erasures applied to it."""

    def __init__(self, slots: dict[str, ModelSlot], config: DemoConfig) -> None:
        self.slots, self.config = slots, config
        self.model = next(iter(slots))
        self.stack: list[Erasure] = []
        self.runs = 0  # generations so far (numbered in the UI)
        self._dir: Path | None = None  # made on the first patch file: most sessions never write one

    def folder(self) -> Path:
        """This session's temporary folder of patch files (made on first use)."""
        if self._dir is None or not self._dir.is_dir():
            self._dir = Path(tempfile.mkdtemp(prefix="eraser-demo-"))
        return self._dir

    def close(self) -> None:
        """End the session: drop its stack and remove its temporary folder with every patch file in it."""
        self.stack = []
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    # -- input checks ---------------------------------------------------------------------------
    @property
    def slot(self) -> ModelSlot:
        return self.slots[self.model]

    def select_model(self, name: str) -> None:
        """Switch model (the stack belongs to a model, so it is cleared)."""
        if name not in self.slots:
            raise DemoError(f"unknown model {name!r}; choose one of {list(self.slots)}")
        if name != self.model:
            self.model, self.stack = name, []

    def _concepts(self, text: str, what: str, required: bool) -> list[str]:
        lim = self.config.limits
        items = [c.strip() for c in re.split(r"[,\n]", text or "") if c.strip()]
        if required and not items:
            raise DemoError(f"type at least one concept to {what} (for example: seven)")
        if len(items) > lim.max_concepts:
            raise DemoError(f"at most {lim.max_concepts} concepts to {what} at once; got {len(items)}")
        for c in items:
            if len(c) > lim.max_concept_chars:
                raise DemoError(f"concepts are at most {lim.max_concept_chars} characters; {c[:20]!r}... is {len(c)}")
        return items

    def _prompt(self, prompt: str) -> str:
        lim = self.config.limits
        if prompt is None or not str(prompt).strip():
            raise DemoError("type a prompt (for example: a photo of the digit seven)")
        if len(prompt) > lim.max_prompt_chars:
            raise DemoError(f"prompts are at most {lim.max_prompt_chars} characters; this one has {len(prompt)}")
        return str(prompt).strip()

    # -- actions ----------------------------------------------------------------------------------
    def erase(
        self, concepts: str, keep: str = "", method: str = "Unlink", k: int | None = None, strength: float | None = None
    ) -> Erasure:
        """Erase ``concepts`` (comma-separated) on top of this user's stack; returns the new entry.
        ``strength`` (Unlink only; None: the library's default, ``UNLINK_STRENGTH``): 1 removes the
        concepts' directions, up to 2 reverses them, which steers generations away from the concepts
        (docs/defaults.md)."""
        lim = self.config.limits
        if method not in METHODS:
            raise DemoError(f"unknown method {method!r}; choose one of {list(METHODS)}")
        name, uses_keep, _ = METHODS[method]
        forget = self._concepts(concepts, "erase", required=True)
        retain = self._concepts(keep, "keep", required=False) if uses_keep else []
        if uses_keep and method.startswith("Unlink") and not retain:
            raise DemoError("'Unlink + keep' needs concepts to keep; type some, or choose 'Unlink'")
        if k is not None and not (isinstance(k, (int, float)) and 1 <= int(k) <= lim.max_k and int(k) == k):
            raise DemoError(f"rank k must be a whole number from 1 to {lim.max_k} (or empty for automatic); got {k!r}")
        if strength is not None and not (isinstance(strength, (int, float)) and 1.0 <= strength <= 2.0):
            raise DemoError(f"strength must be a number from 1 (remove) to 2 (reflect); got {strength!r}")
        if strength is not None and strength != UNLINK_STRENGTH and name != "unlink":
            raise DemoError(f"strength applies to Unlink only; set it back to {UNLINK_STRENGTH:g} for {method}")
        if len(self.stack) >= lim.max_stack:
            raise DemoError(f"at most {lim.max_stack} erasures at once; revert one first")
        done = {str(c).lower() for e in self.stack for c in _concepts_of(e.patch)}
        if all(c.lower() in done for c in forget):
            raise DemoError(f"{', '.join(forget)} {'is' if len(forget) == 1 else 'are'} already erased")
        options: dict[str, Any] = {}
        if name != "unlink" and name != "uce":
            options["steps"] = lim.trained_steps
        if name == "unlink" and strength is not None:
            options["strength"] = float(strength)
        import eraser

        with self.slot.applied(self.stack) as pipe:
            t0 = time.perf_counter()
            try:
                patch = eraser.erase_concepts(
                    pipe, forget, retain=retain or None, k=None if k is None else int(k), method=name, **options
                )
            except (ValueError, TypeError, RuntimeError) as err:
                raise DemoError(f"could not erase {', '.join(forget)}: {err}") from None
            seconds = time.perf_counter() - t0
            outside = [n for n in self.slot._touched(patch) if n not in self.slot._base]
            patch.revert(pipe)  # off the model's stack; the context restores the exact base weights
            if outside:  # not a cross-attention edit: its base values are the reverted ones
                raise DemoError(
                    f"{method} edited layers outside cross-attention ({outside[0]}, ...); "
                    "the demo only offers cross-attention erasures"
                )
        file = patch.save(self.folder() / f"erasure_{len(self.stack) + 1}_{_slug(forget)}.safetensors")
        entry = Erasure(
            label=f"{method}: {', '.join(forget)}"
            + (f" (keep {', '.join(retain)})" if retain else "")
            + (f" strength {strength:g}" if strength not in (None, UNLINK_STRENGTH) else ""),
            patch=patch,
            seconds=seconds,
            file=file,
        )
        self.stack.append(entry)
        return entry

    def revert_last(self) -> Erasure:
        """Remove the most recent erasure."""
        if not self.stack:
            raise DemoError("nothing to revert")
        return self.stack.pop()

    def upload(self, path: str | Path) -> Erasure:
        """Push a patch file made elsewhere onto the stack, after checking it fits this model."""
        from eraser.patch import ErasurePatch

        lim = self.config.limits
        path = Path(path)
        if path.suffix != ".safetensors":
            raise DemoError(f"upload a .safetensors patch file; got {path.name!r}")
        size = path.stat().st_size
        if size > lim.max_patch_bytes:
            raise DemoError(
                f"patch files are at most {lim.max_patch_bytes / 1e6:.0f} MB; this one is {size / 1e6:.1f} MB"
            )
        if len(self.stack) >= lim.max_stack:
            raise DemoError(f"at most {lim.max_stack} erasures at once; revert one first")
        try:
            patch = ErasurePatch.load(path)
        except Exception as err:  # a damaged or foreign file: say so, change nothing
            raise DemoError(f"{path.name} is not an eraser patch ({str(err)[:200]})") from None
        with self.slot.applied(self.stack) as pipe:
            try:
                patch.apply(pipe)
            except Exception as err:
                raise DemoError(
                    f"{path.name} does not fit the model {self.model!r} with the current erasures: {str(err)[:300]}"
                ) from None
            patch.revert(pipe)
        copy = self.folder() / f"erasure_{len(self.stack) + 1}_uploaded.safetensors"
        copy.write_bytes(path.read_bytes())
        entry = Erasure(
            label=f"uploaded: {', '.join(map(str, _concepts_of(patch))) or path.name}",
            patch=patch,
            seconds=0.0,
            file=copy,
        )
        self.stack.append(entry)
        return entry

    def generate(self, prompt: str, seeds: list[int]) -> tuple[list[Any], list[Any]]:
        """(original images, erased images) for ``prompt``, one per seed, same seeds on both sides."""
        prompt = self._prompt(prompt)
        lim = self.config.limits
        seeds = [int(s) for s in seeds][: lim.max_images]
        if not seeds:
            raise DemoError("give at least one seed")
        with self.slot.applied([]) as pipe:
            before = self._run(pipe, prompt, seeds)
        with self.slot.applied(self.stack) as pipe:
            after = self._run(pipe, prompt, seeds)
        self.runs += 1
        return before, after

    def _run(self, pipe: Any, prompt: str, seeds: list[int]) -> list[Any]:
        gens = [torch.Generator().manual_seed(s) for s in seeds]
        steps = {} if self.config.steps is None else {"num_inference_steps": self.config.steps}
        return pipe([prompt] * len(seeds), generator=gens, **steps).images

    def check(self, per_digit: int = 8, seed: int = 0) -> list[dict[str, Any]]:
        """Bundled model only: the judge's accuracy per digit on generations of each digit's
        canonical prompt, before and after this user's erasures."""
        if not self.slot.bundled:
            raise DemoError("the check runs the digit judge, so it needs the bundled digits model")
        from eraser.bundled.evaluate import judge_digits

        rows = []
        for side, stack in (("original", []), ("erased", self.stack)):
            with self.slot.applied(stack) as pipe:
                ev = judge_digits(pipe, per_digit, steps=self.config.steps, seed=seed, judge=_judge())
            rows += [{"digit": str(d), "model": side, "judge accuracy": a} for d, a in ev["accuracy"].items()]
        return rows


def close_session(session: Session | None) -> None:
    """Clean up after a browser session ends (the demo's ``gr.State`` delete callback)."""
    if session is not None:
        session.close()


@functools.lru_cache(maxsize=1)
def _judge() -> Any:
    from eraser.bundled import digits_judge

    return digits_judge()


def _concepts_of(patch: Any) -> list[str]:
    meta = patch.metadata
    return list(meta.get("concepts") or meta.get("names") or [])


def _slug(items: list[str]) -> str:
    return re.sub(r"[^\w]+", "-", "_".join(items))[:40].strip("-") or "concept"
