"""The generation runner: images for every row of a prompt CSV, deterministic, resumable, sharded.

    from evaluation.generate import GenerationConfig, generate_images
    rows = prompts.load_prompts("i2p_4703.csv")
    result = generate_images(pipe, rows, "runs/i2p/base", GenerationConfig(num_inference_steps=50))

Each image has its own CPU generator seeded from its row (image ``j`` of a row with seed ``s`` uses
``s + j * 2**32``, so image 0 uses the row's own seed and rows with consecutive seeds never share
noise; rows without a seed use ``s = config.seed + case_number``), so the noise of an image does not depend on the
device, the batch it is in or the process that makes it. Batches are fixed by the row order and
``batch_size`` before anything is skipped or sharded, and processes take whole batches in turn, so
a run on several processes, or a resumed run, computes every image in exactly the batch a single
uninterrupted run would: the files are byte-identical. (Across different ``batch_size`` values the
images agree only up to floating-point batching effects; the settings file records it.)

Images are ``<case_number>_<j>.png``; each is written to a hidden temporary file and renamed, so a
crash leaves no half-written image. A rerun skips finished images; ``generation.json`` holds the
settings and refuses a resume with different ones. ``index.jsonl`` maps every file to its prompt,
seed and guidance (CLIP score and judges read it). Under ``accelerate launch`` every process takes
its share and the main process writes the index once all are done.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from eraser.hashing import file_sha256
from eraser.training.processes import process_state
from prompts.csv import PromptRow

from .report import package_versions

__all__ = [
    "GenerationConfig",
    "Job",
    "GenerationResult",
    "plan_jobs",
    "plan_batches",
    "generate_images",
    "read_index",
    "process_state",
    "SETTINGS_FILE",
    "INDEX_FILE",
]

SETTINGS_FILE = "generation.json"
INDEX_FILE = "index.jsonl"
SEED_STRIDE = 2**32  # image j of a row: row seed + j * SEED_STRIDE (row seeds are < 2**32)


@dataclass
class GenerationConfig:
    """What decides the pixels (all recorded in ``generation.json``).

    ``guidance_scale``/``num_inference_steps``/``height``/``width``: None uses each row's value
    (guidance) or the pipeline's default. ``seed``: base seed of rows that have none."""

    images_per_prompt: int = 1
    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    seed: int = 0
    batch_size: int = 4
    height: int | None = None
    width: int | None = None
    negative_prompt: str | None = None

    def __post_init__(self) -> None:
        if self.images_per_prompt < 1:
            raise ValueError(f"images_per_prompt must be >= 1; got {self.images_per_prompt}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1; got {self.batch_size}")
        if self.num_inference_steps is not None and self.num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be >= 1; got {self.num_inference_steps}")


@dataclass(frozen=True)
class Job:
    """One image to make."""

    name: str
    prompt: str
    seed: int
    guidance: float | None
    case_number: int
    index: int  # j: the image's number within its row
    label: str | None = None


@dataclass
class GenerationResult:
    """What a call did: images made here, images found finished, the folder and the time taken."""

    out_dir: Path
    generated: int
    skipped: int
    total: int
    seconds: float
    settings: dict[str, Any] = field(default_factory=dict)


def plan_jobs(rows: Sequence[PromptRow], config: GenerationConfig) -> list[Job]:
    """Every image of every row, in row order; names are unique (a repeated case number is an error)."""
    jobs, seen = [], set()
    for row in rows:
        if row.case_number in seen:
            raise ValueError(f"case_number {row.case_number} appears twice in the prompts; image names would collide")
        seen.add(row.case_number)
        if not row.prompt or not row.prompt.strip():
            raise ValueError(f"row with case_number {row.case_number} has an empty prompt")
        base = row.seed if row.seed is not None else config.seed + row.case_number
        guidance = config.guidance_scale if config.guidance_scale is not None else row.guidance
        for j in range(config.images_per_prompt):
            jobs.append(
                Job(
                    f"{row.case_number:05d}_{j:02d}.png",
                    row.prompt,
                    base + j * SEED_STRIDE,
                    guidance,
                    row.case_number,
                    j,
                    row.label,
                )
            )
    return jobs


def plan_batches(jobs: Sequence[Job], batch_size: int) -> list[list[Job]]:
    """Consecutive jobs in batches of at most ``batch_size`` (a new batch starts where guidance changes,
    as a pipeline call takes one guidance scale)."""
    batches: list[list[Job]] = []
    for job in jobs:
        if batches and len(batches[-1]) < batch_size and batches[-1][-1].guidance == job.guidance:
            batches[-1].append(job)
        else:
            batches.append([job])
    return batches


def _describe_pipeline(pipe: Any) -> dict[str, Any]:
    unet = getattr(pipe, "unet", None)
    scheduler = getattr(pipe, "scheduler", None)
    return {
        "class": type(pipe).__name__,
        "name_or_path": getattr(getattr(pipe, "config", None), "_name_or_path", None),
        "dtype": str(getattr(unet, "dtype", None)),
        "scheduler": type(scheduler).__name__ if scheduler is not None else None,
        "scheduler_config": dict(scheduler.config) if scheduler is not None else None,
    }


def _write_atomic(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _pixels_key(settings: dict[str, Any]) -> dict[str, Any]:
    """The settings that decide the pixels (not paths, versions or the number of processes)."""
    s = json.loads(json.dumps(settings, default=str))  # as read back from the file
    return {
        "pipeline": s["pipeline"],
        "patch": s["patch"] and s["patch"]["sha256"],
        "config": s["config"],
        "prompts": {k: s["prompts"][k] for k in ("sha256", "rows")},
    }


def _check_settings(out: Path, settings: dict[str, Any], overwrite: bool) -> None:
    path = out / SETTINGS_FILE
    if not path.is_file() or overwrite:
        return
    old, new = _pixels_key(json.loads(path.read_text())), _pixels_key(settings)
    diff = [k for k in new if old.get(k) != new[k]]
    if diff:
        raise ValueError(
            f"{out} holds images made with other settings ({', '.join(diff)} differ, see {path}); "
            "resume with the same settings, pass overwrite=True (--overwrite) to replace them, or choose another folder."
        )


def generate_images(
    pipe: Any,
    rows: Sequence[PromptRow],
    out_dir: str | Path,
    config: GenerationConfig | None = None,
    *,
    patch: str | Path | None = None,
    prompts_file: str | Path | None = None,
    overwrite: bool = False,
    process_index: int | None = None,
    num_processes: int | None = None,
    progress: bool = True,
) -> GenerationResult:
    """Generate every image of ``rows`` into ``out_dir`` (skipping finished ones unless ``overwrite``).

    ``patch``: the path of an :class:`~eraser.ErasurePatch` to apply before generating (recorded
    with its sha256; the pipeline is reverted afterwards). ``prompts_file``: the CSV the rows came
    from (recorded with its sha256). ``process_index``/``num_processes`` default to accelerate's
    ``PartialState`` (one process without ``accelerate launch``); then the processes wait for each
    other before and after generating. Pass both only to run one shard by hand (no waiting)."""
    from tqdm.auto import tqdm

    config = config or GenerationConfig()
    state = None
    if process_index is None or num_processes is None:
        state = process_state()
        process_index, num_processes = state.process_index, state.num_processes
    if not 0 <= process_index < num_processes:
        raise ValueError(f"process_index {process_index} is not in [0, {num_processes})")
    out = Path(out_dir)
    jobs = plan_jobs(rows, config)
    batches = plan_batches(jobs, config.batch_size)

    applied = None
    if patch is not None:
        from eraser.patch import ErasurePatch

        applied = ErasurePatch.load(patch)
    settings = {
        "pipeline": _describe_pipeline(pipe),
        "patch": None
        if patch is None
        else {"path": str(patch), "sha256": file_sha256(patch), "metadata": applied.metadata},
        "config": asdict(config),
        "prompts": {
            "file": None if prompts_file is None else str(prompts_file),
            "sha256": None if prompts_file is None else file_sha256(prompts_file),
            "rows": len(rows),
        },
        "noise": "one CPU torch.Generator per image, seeded with row seed + image number * 2**32",
        "versions": package_versions(),
        "num_processes": num_processes,
    }
    _check_settings(out, settings, overwrite)  # every process checks, before anything is written
    if applied is not None:
        # Before the record is written: a patch that does not fit this model leaves nothing behind
        # that would make the folder refuse the next, correct run.
        applied.apply(pipe)
    try:
        if state is not None:
            state.wait_for_everyone()
        if process_index == 0:
            out.mkdir(parents=True, exist_ok=True)
            for stale in out.glob(".*.tmp"):  # left by a killed run; nothing writes before the barrier below
                stale.unlink(missing_ok=True)
            _write_atomic(out / SETTINGS_FILE, lambda p: p.write_text(json.dumps(settings, indent=2, default=str)))
        if state is not None:
            state.wait_for_everyone()

        mine = batches[process_index::num_processes]
        todo = [b for b in mine if overwrite or not all((out / j.name).is_file() for j in b)]
        skipped = sum(len(b) for b in mine) - sum(len(b) for b in todo)
        if hasattr(pipe, "set_progress_bar_config"):
            pipe.set_progress_bar_config(disable=True)
        t0 = time.perf_counter()
        made = 0
        bar = tqdm(
            total=sum(len(b) for b in todo),
            desc=f"generating (process {process_index + 1}/{num_processes})",
            unit="img",
            disable=not progress or process_index != 0,
        )
        with bar:
            for batch in todo:
                images = _generate_batch(pipe, batch, config)
                for job, image in zip(batch, images):
                    target = out / job.name
                    if overwrite or not target.is_file():
                        _write_atomic(target, lambda p, image=image: image.save(p, format="PNG"))
                        made += 1
                bar.update(len(batch))
    finally:
        if applied is not None:
            applied.revert(pipe)
    seconds = time.perf_counter() - t0
    if state is not None:
        state.wait_for_everyone()
    if process_index == 0:
        lines = [
            json.dumps(
                {
                    "file": j.name,
                    "prompt": j.prompt,
                    "seed": j.seed,
                    "guidance": j.guidance,
                    "case_number": j.case_number,
                    "image": j.index,
                    "label": j.label,
                }
            )
            for j in jobs
        ]
        _write_atomic(out / INDEX_FILE, lambda p: p.write_text("\n".join(lines) + "\n"))
    return GenerationResult(out, made, skipped, len(jobs), seconds, settings)


@torch.no_grad()
def _generate_batch(pipe: Any, batch: list[Job], config: GenerationConfig) -> list:
    kwargs: dict[str, Any] = {
        "prompt": [j.prompt for j in batch],
        "generator": [torch.Generator("cpu").manual_seed(j.seed) for j in batch],
    }
    if batch[0].guidance is not None:
        kwargs["guidance_scale"] = batch[0].guidance
    if config.num_inference_steps is not None:
        kwargs["num_inference_steps"] = config.num_inference_steps
    if config.height is not None:
        kwargs["height"] = config.height
    if config.width is not None:
        kwargs["width"] = config.width
    if config.negative_prompt is not None:
        kwargs["negative_prompt"] = [config.negative_prompt] * len(batch)
    images = pipe(**kwargs).images
    if len(images) != len(batch):
        raise RuntimeError(f"the pipeline returned {len(images)} images for {len(batch)} prompts")
    return images


def read_index(folder: str | Path) -> dict[str, dict[str, Any]]:
    """``file name -> {prompt, seed, guidance, case_number, image, label}`` from a runner's ``index.jsonl``."""
    path = Path(folder) / INDEX_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: the folder was not made by the generation runner "
            "(`eraser generate`); give the prompts another way"
        )
    return {rec["file"]: rec for rec in map(json.loads, path.read_text().splitlines()) if rec}
