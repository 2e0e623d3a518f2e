"""The Gradio demo: type what to forget, see the same prompt and seeds before and after.

    python -m apps.demo.app                       # the bundled digits model, http://127.0.0.1:7860
    python -m apps.demo.app --model "SD 1.4=CompVis/stable-diffusion-v1-4" --device cuda --dtype float16

Models come from the server's list (``--model NAME=SPEC``, repeatable; the bundled digits model by
default); users cannot type paths. Each browser session has its own stack of erasures (see
``apps.demo.session``); requests are queued one at a time per model.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the session module imports torch: loaded only when the demo runs
    from .session import DemoConfig, ModelSlot

__all__ = ["build_app", "load_slots", "add_arguments", "launch_options", "run", "main"]

EXAMPLES = ["a photo of the digit seven", "handwritten 3", "the number five", "a handwritten two"]
DISPLAY = 128  # pixels per generated image on screen
CACHE_SWEEP = (3600, 86400)  # Gradio's file cache: every hour, remove files older than a day


def load_slots(config: DemoConfig) -> dict[str, ModelSlot]:
    """Load every configured model once (shared by all sessions)."""
    from .session import ModelSlot, load_model

    return {
        name: ModelSlot(name, spec, load_model(spec, config.device, config.dtype))
        for name, spec in config.models.items()
    }


def _upscale(images: list[Any]) -> list[Any]:
    from PIL import Image

    return [im.resize((DISPLAY, DISPLAY), Image.NEAREST) if im.size[0] < DISPLAY else im for im in images]


def _seeds(text: str, limit: int) -> list[int]:
    from .session import DemoError

    try:
        seeds = [int(s) for s in str(text).replace(" ", "").split(",") if s]
    except ValueError:
        raise DemoError(f"seeds are whole numbers separated by commas (for example 0,1,2,3); got {text!r}") from None
    if not seeds:
        raise DemoError("give at least one seed (for example 0,1,2,3)")
    if len(seeds) > limit:
        raise DemoError(f"at most {limit} seeds at once; got {len(seeds)}")
    if any(not 0 <= s < 2**63 for s in seeds):
        raise DemoError("seeds must be between 0 and 2^63 - 1")
    return seeds


def build_app(config: DemoConfig | None = None, slots: dict[str, ModelSlot] | None = None):
    """The Gradio Blocks app (not launched)."""
    import gradio as gr

    from .session import METHODS, UNLINK_STRENGTH, DemoConfig, DemoError, Session, close_session

    config = config or DemoConfig()
    slots = slots if slots is not None else load_slots(config)
    limits = config.limits

    def session(state: Session | None) -> Session:
        return state if state is not None else Session(slots, config)

    def stack_view(s: Session) -> tuple[str, Any]:
        if not s.stack:
            return "No erasures yet.", None
        lines = [
            f"{i + 1}. {e.label} — {e.seconds:.2f} s, patch {e.size_bytes / 1024:.0f} KB" for i, e in enumerate(s.stack)
        ]
        return "\n".join(lines), str(s.stack[-1].file)

    def on_model(name: str, state: Session | None):
        s = session(state)
        s.select_model(name)
        return (s, *stack_view(s))

    def on_erase(concepts: str, keep: str, method: str, k: float | None, strength: float | None, state: Session | None):
        s = session(state)
        try:
            e = s.erase(
                concepts,
                keep,
                method,
                None if k in (None, "", 0) else k,  # 0: automatic
                None if strength in (None, "") else strength,
            )
            msg = f"Erased in {e.seconds:.2f} s; patch {e.size_bytes / 1024:.0f} KB ({e.label})."
        except DemoError as err:
            msg = f"⚠️ {err}"
        return (s, msg, *stack_view(s))

    def on_revert(state: Session | None):
        s = session(state)
        try:
            e = s.revert_last()
            msg = f"Reverted: {e.label}."
        except DemoError as err:
            msg = f"⚠️ {err}"
        return (s, msg, *stack_view(s))

    def on_upload(file: Any, state: Session | None):
        s = session(state)
        if file is None:
            return (s, "⚠️ choose a .safetensors patch file first", *stack_view(s))
        path = getattr(file, "name", file)
        try:
            e = s.upload(path)
            msg = f"Applied the uploaded patch ({e.label})."
        except DemoError as err:
            msg = f"⚠️ {err}"
        return (s, msg, *stack_view(s))

    def on_generate(prompt: str, seeds: str, state: Session | None):
        s = session(state)
        try:
            before, after = s.generate(prompt, _seeds(seeds, limits.max_images))
        except DemoError as err:
            return s, None, None, f"⚠️ {err}"
        n = len(s.stack)
        note = f"Run {s.runs}: same prompt and seeds on both sides; right: with {n} erasure{'s' * (n != 1)}."
        return s, _upscale(before), _upscale(after), note

    def on_check(state: Session | None):
        import pandas as pd

        s = session(state)
        try:
            rows = s.check()
        except DemoError as err:
            return s, None, f"⚠️ {err}"
        df = pd.DataFrame(rows)
        erased = {c.lower() for e in s.stack for c in e.patch.metadata.get("concepts", [])}
        from eraser.bundled import DIGIT_WORDS

        gone = [d for d in range(10) if DIGIT_WORDS[d] in erased or str(d) in erased]
        after = df[df.model == "erased"].set_index("digit")["judge accuracy"]
        parts = []
        if gone:
            parts.append(f"UA on {', '.join(map(str, gone))}: {100 - after[[str(d) for d in gone]].mean():.0f}%")
        kept = [str(d) for d in range(10) if d not in gone]
        before = df[df.model == "original"].set_index("digit")["judge accuracy"]
        parts.append(f"accuracy on the other digits: {before[kept].mean():.0f}% -> {after[kept].mean():.0f}%")
        return s, df, " · ".join(parts) + " (digit judge, 8 generations per digit)"

    # delete_cache: Gradio's own copies of uploads and downloads (a session keeps its own copy of
    # every patch) are removed hourly once a day old, and all of them when the server stops.
    with gr.Blocks(title="eraser demo", delete_cache=CACHE_SWEEP) as app:
        # Gradio deletes a session's state some time after its tab closes; its patch files go with it.
        state = gr.State(None, delete_callback=close_session)
        gr.Markdown(
            "# eraser: erase a concept from a text-to-image model\nType what to forget, then compare the "
            "same prompt and seeds before and after. Erasures stack and can be reverted one by one."
        )
        model = gr.Dropdown(list(slots), value=next(iter(slots)), label="Model", elem_id="model")
        with gr.Tab("Erase"):
            with gr.Row():
                # lengths are checked on the server, which says what is wrong (a browser limit would cut silently)
                concepts = gr.Textbox(
                    label="Concepts to erase (comma-separated)", value="seven", max_lines=1, elem_id="concepts"
                )
                keep = gr.Textbox(label="Concepts to keep (for 'Unlink + keep' and UCE)", max_lines=1, elem_id="keep")
            with gr.Row():
                method = gr.Dropdown(
                    list(METHODS),
                    value="Unlink",
                    label="Method",
                    info=" · ".join(f"{m}: {t}" for m, (_, _, t) in METHODS.items()),
                    elem_id="method",
                )
                k = gr.Number(value=0, label=f"Rank k (0: automatic; 1-{limits.max_k})", elem_id="k")
                strength = gr.Number(
                    value=UNLINK_STRENGTH,
                    minimum=1.0,
                    maximum=2.0,
                    step=0.25,
                    elem_id="strength",
                    label="Unlink strength (1: remove; up to 2: reverse, steers away)",
                )
            erase_btn = gr.Button("Erase", variant="primary", elem_id="erase")
            status = gr.Markdown(elem_id="status")
            stack = gr.Markdown("No erasures yet.", elem_id="stack")
            with gr.Row():
                revert_btn = gr.Button("Revert last erasure", elem_id="revert")
                download = gr.File(label="Patch of the last erasure", interactive=False, elem_id="download")
            with gr.Row():
                upload = gr.File(label="Upload a patch (.safetensors)", file_types=[".safetensors"], elem_id="upload")
                upload_btn = gr.Button("Apply uploaded patch", elem_id="apply-upload")
            with gr.Row():
                prompt = gr.Textbox(
                    label=f"Prompt (up to {limits.max_prompt_chars} characters)",
                    value=EXAMPLES[0],
                    max_lines=1,
                    elem_id="prompt",
                )
                seeds = gr.Textbox(
                    label=f"Seeds (up to {limits.max_images})", value="0,1,2,3", max_lines=1, elem_id="seeds"
                )
            gr.Examples(EXAMPLES, inputs=prompt)
            gen_btn = gr.Button("Generate", variant="primary", elem_id="generate")
            gen_note = gr.Markdown(elem_id="gen-note")
            with gr.Row():
                original = gr.Gallery(label="Original", columns=4, height=300, format="png", elem_id="original")
                erased = gr.Gallery(label="Erased", columns=4, height=300, format="png", elem_id="erased")
        with gr.Tab("Check"):
            gr.Markdown(
                "Runs the digit judge on generations of every digit (bundled model only), before and after "
                "your erasures."
            )
            check_btn = gr.Button("Run the judge", elem_id="check")
            check_note = gr.Markdown(elem_id="check-note")
            chart = gr.BarPlot(x="digit", y="judge accuracy", color="model", y_lim=[0, 100], elem_id="chart")

        stack_out = [state, status, stack, download]
        model.change(on_model, [model, state], [state, stack, download])
        erase_btn.click(on_erase, [concepts, keep, method, k, strength, state], stack_out, api_name="erase")
        revert_btn.click(on_revert, [state], stack_out, api_name="revert")
        upload_btn.click(on_upload, [upload, state], stack_out, api_name="upload")
        gen_btn.click(on_generate, [prompt, seeds, state], [state, original, erased, gen_note], api_name="generate")
        check_btn.click(on_check, [state], [state, chart, check_note], api_name="check")
    app.queue(default_concurrency_limit=1, max_size=64)
    return app


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """The demo's command-line options (shared by ``python -m apps.demo.app`` and ``eraser demo``)."""
    ap.add_argument(
        "--model",
        action="append",
        metavar="NAME=SPEC",
        help="a model users may pick: SPEC is bundled:digits, a diffusers hub id or a pipeline folder (repeatable)",
    )
    ap.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 to serve the network)")
    ap.add_argument("--port", type=int, default=7860, help="port to listen on (default 7860)")
    ap.add_argument("--device", default="cpu", help="where the models run: cpu, cuda, cuda:1, mps (default cpu)")
    ap.add_argument(
        "--dtype",
        default="float32",
        choices=["float32", "float16", "bfloat16"],
        help="weights' dtype (float16 on GPUs halves memory; default float32)",
    )
    ap.add_argument("--steps", type=int, default=None, help="denoising steps per image (default: the pipeline's)")


def launch_options(config: DemoConfig) -> dict[str, Any]:
    """Options for ``launch()`` that enforce the config's limits in the server itself."""
    # Gradio refuses a larger upload before storing it; the session's own check comes after.
    return {"max_file_size": config.limits.max_patch_bytes}


def run(args: argparse.Namespace) -> None:
    """Load the configured models and serve the demo until interrupted."""
    from .session import DemoConfig

    models = {}
    for item in args.model or []:
        name, sep, spec = item.partition("=")
        if not sep or not name.strip() or not spec.strip():
            raise SystemExit(
                f"--model takes NAME=SPEC (for example 'SD 1.4=CompVis/stable-diffusion-v1-4'); got {item!r}"
            )
        models[name.strip()] = spec.strip()
    config = DemoConfig(models=models) if models else DemoConfig()
    config.device, config.dtype, config.steps = args.device, args.dtype, args.steps
    build_app(config).launch(server_name=args.host, server_port=args.port, **launch_options(config))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="The eraser Gradio demo.", epilog=__doc__.split("\n\n")[1])
    add_arguments(ap)
    run(ap.parse_args(argv))


if __name__ == "__main__":
    main()
