"""The web app (Gradio): upload a photo, click points or draw a box to get the masks of each
granularity, type a vocabulary to get semantic and panoptic segmentations with a legend,
segment everything, and download the JSON of the current result.

Run it with ``python demo/app.py --model BUNDLE`` (see :func:`main`). The page is built by
:func:`build_web_app` from any :class:`~uniovseg.inference.predictor.UniOVSegPredictor`; the
state of each uploaded photo (encoded once at upload, so that clicks run the prompt decoder
only) lives in :mod:`uniovseg.inference.web_session` (kept by
:mod:`uniovseg.inference.web_session_store`).

Gradio never phones home from here: analytics are off (``analytics_enabled=False`` and
``GRADIO_ANALYTICS_ENABLED=False``), no share link is made, and server-side rendering (a Node
process) is off.
"""

import argparse
import functools
import html
import logging
import os
import sys

import gradio as gr

from uniovseg.inference.web_session_store import WebSessionStore
from uniovseg.inference.web_views import FOREGROUND, PROMPT_MODES, LegendRow, PromptView

__all__ = ["WebAppCallbacks", "build_web_app", "launch_locally", "legend_html", "main"]

logger = logging.getLogger(__name__)

_INTRO = """\
# Uni-OVSeg
1. **Upload a photo.** It is encoded once; every click and button below reuses that encoding.
2. **Click on it.** A *foreground point* gives its masks at 4 granularities with their predicted
   IoU (the best is shown; click another under *Masks of the last prompt* to show it). Two
   clicks in *box corner* mode, at opposite corners, make a box prompt (one mask). The model
   takes positive points only: a *background point* erases its mask from the foreground masks.
   Each prompt is numbered on the photo.
3. **Type class names** (`cat, dog, sky`, or `cat; dog, puppy; sky` with synonyms) for semantic
   and panoptic segmentation with a legend; the prompts' masks are then labelled too.
4. **Segment everything** finds every mask of the photo.

The files of the current result (JSON of SAM-style records with COCO RLE masks, in the
original photo's pixels; label maps) are at the bottom of the page.
"""


# Classes in neither map listed by name at most (a packaged vocabulary has hundreds).
_MAX_ABSENT_LISTED = 20


def legend_html(rows: list[LegendRow]) -> str:
    """An HTML legend of the vocabulary: a swatch, the name, its share of the semantic map and
    its number of panoptic segments; the classes found first, by decreasing share, then the
    others (at most 20 of them by name)."""
    found = sorted((r for r in rows if r.semantic_share or r.segments), key=_by_share)
    absent = [r for r in rows if not (r.semantic_share or r.segments)]
    lines = []
    for row in found + absent[:_MAX_ABSENT_LISTED]:
        r, g, b = row.color
        share = f"{_percent(row.semantic_share)} of the semantic map"
        if not row.semantic_share:
            share = "not in the semantic map"
        lines.append(
            '<li class="uniovseg-class">'
            f'<span style="display:inline-block;width:1em;height:1em;margin-right:0.4em;'
            f'vertical-align:middle;border:1px solid #333;background:rgb({r},{g},{b})"></span>'
            f"<b>{html.escape(row.name)}</b>: {html.escape(share)}, "
            f"{row.segments} panoptic segment{'s' if row.segments != 1 else ''}</li>"
        )
    if len(absent) > _MAX_ABSENT_LISTED:
        more = len(absent) - _MAX_ABSENT_LISTED
        lines.append(f"<li>and {more} more classes, in neither map (see the JSON)</li>")
    return '<ul id="uniovseg-legend" style="list-style:none;padding:0">' + "".join(lines) + "</ul>"


def _by_share(row: LegendRow) -> float:
    return -row.semantic_share


def _percent(share: float) -> str:
    return "<1%" if share < 0.01 else f"{100 * share:.0f}%"


def _user_errors(callback):
    """Shows a ``ValueError`` (bad input, no photo...) as a warning on the page and leaves
    every output as it was (a ``gradio.Error`` would blank them)."""

    @functools.wraps(callback)
    def wrapper(*args, **kwargs):
        try:
            return callback(*args, **kwargs)
        except ValueError as e:
            gr.Warning(html.escape(str(e)))  # rendered as HTML: user text must stay text
            return gr.skip()

    return wrapper


def _shown(picture):
    return gr.update(value=picture, visible=True)


def _hidden():
    return gr.update(value=None, visible=False)


class WebAppCallbacks:
    """The page's event handlers over a :class:`WebSessionStore`.

    Each takes the values of its input components (and gradio's ``SelectData`` for clicks on
    the photo or the gallery) and returns the new values of its outputs, in the order that
    :func:`build_web_app` lists them. Bad input (no photo yet, a click beside the photo, an
    empty vocabulary...) leaves the outputs unchanged (``gradio.skip()``) and shows the reason
    as a warning (``gradio.Warning``; a ``UserWarning`` outside a page request).
    """

    def __init__(self, store: WebSessionStore) -> None:
        self.store = store

    @_user_errors
    def upload(self, path, old_id):
        """-> canvas, gallery, status, files, session id, semantic, panoptic, automatic,
        legend."""
        self.store.close(old_id)
        if not path:
            raise ValueError("upload a photo first")
        session_id = self.store.open(path)
        session = self.store.get(session_id)
        height, width = session.image.shape[:2]
        notes = f" ({'; '.join(session.loaded.notes)})" if session.loaded.notes else ""
        status = (
            f"{session.file_name}: {width}x{height} px{notes}, encoded in "
            f"{session.encode_seconds:.2f} s. Click on it."
        )
        return session.image, [], status, [], session_id, _hidden(), _hidden(), _hidden(), ""

    def remove(self, old_id):
        """The photo was removed: -> the outputs of :meth:`upload` but the canvas."""
        self.store.close(old_id)
        return [], "Upload a photo.", [], None, _hidden(), _hidden(), _hidden(), ""

    @_user_errors
    def click(self, session_id, mode, evt: gr.SelectData):
        """A click on the photo: -> canvas, gallery, status, files."""
        x, y = evt.index[:2]
        return _prompt_outputs(self.store.get(session_id).click(float(x), float(y), mode))

    @_user_errors
    def choose(self, session_id, evt: gr.SelectData):
        """A click on the gallery: -> canvas, gallery, status, files."""
        return _prompt_outputs(self.store.get(session_id).choose_mask(int(evt.index)))

    @_user_errors
    def clear(self, session_id):
        """-> canvas, gallery, status, files."""
        return _prompt_outputs(self.store.get(session_id).clear_prompts())

    @_user_errors
    def vocabulary(self, session_id, vocabulary_text, thing_text):
        """-> semantic, panoptic, legend, canvas, gallery, status, files."""
        view = self.store.get(session_id).segment_vocabulary(vocabulary_text, thing_text)
        pictures = (_shown(view.semantic), _shown(view.panoptic), legend_html(view.legend))
        canvas, gallery, _, _ = _prompt_outputs(view.prompts)
        return (*pictures, canvas, gallery, view.status, view.files)

    @_user_errors
    def everything(self, session_id):
        """-> automatic, status, files."""
        view = self.store.get(session_id).segment_everything()
        return _shown(view.picture), view.status, view.files


def _prompt_outputs(view: PromptView) -> tuple:
    """-> canvas, gallery (the shown mask selected), status, files."""
    gallery = gr.update(value=view.gallery, selected_index=view.chosen)
    return view.canvas, gallery, view.status, view.files


def build_web_app(predictor, *, max_side: int | None = 1600, max_sessions: int = 8) -> gr.Blocks:
    """The page for a predictor.

    Args:
        predictor: A :class:`~uniovseg.inference.predictor.UniOVSegPredictor`; the page sets its
            vocabulary (a model without open-vocabulary inference still segments prompts and
            everything).
        max_side: Photos larger than this are processed downscaled (the JSON stays in the
            original pixels); None: never.
        max_sessions: Photos kept encoded at once (one per browser tab that uploaded).

    Returns:
        The ``gradio.Blocks`` (launch it with ``share=False``); ``app.uniovseg_callbacks`` are
        its :class:`WebAppCallbacks`.
    """
    callbacks = WebAppCallbacks(
        WebSessionStore(predictor, max_side=max_side, max_sessions=max_sessions)
    )
    # delete_cache: pictures and files sent to browsers are deleted after an hour.
    with gr.Blocks(title="Uni-OVSeg", analytics_enabled=False, delete_cache=(3600, 3600)) as app:
        gr.Markdown(_INTRO)
        session_id = gr.State(None, delete_callback=callbacks.store.close)
        with gr.Row():
            with gr.Column(scale=3):
                canvas = gr.Image(
                    label="Photo: upload, then click on it",
                    type="filepath",
                    sources=["upload"],
                    format="png",
                    height=480,
                    elem_id="canvas",
                )
                with gr.Row():
                    mode = gr.Radio(
                        list(PROMPT_MODES), value=FOREGROUND, label="A click adds", elem_id="mode"
                    )
                    clear = gr.Button("Clear prompts", elem_id="clear", scale=0)
            with gr.Column(scale=2):
                status = gr.Markdown("Upload a photo.", elem_id="status")
                gallery = gr.Gallery(
                    label="Masks of the last prompt (* = shown on the photo)",
                    columns=2,
                    object_fit="contain",
                    format="png",
                    allow_preview=False,
                    interactive=False,
                    elem_id="masks",
                )
        with gr.Row():
            vocabulary = gr.Textbox(
                label="Vocabulary",
                placeholder="cat, dog, sky   or   cat; dog, puppy; sky   or   ade20k_150",
                elem_id="vocabulary",
                scale=3,
            )
            things = gr.Textbox(
                label="Thing classes (split into instances in the panoptic map)",
                placeholder="cat, dog",
                elem_id="things",
                scale=2,
            )
        with gr.Row():
            segment = gr.Button("Semantic + panoptic", variant="primary", elem_id="segment")
            everything = gr.Button("Segment everything", elem_id="everything")
        legend = gr.HTML(elem_id="legend")
        with gr.Row():
            semantic, panoptic = (
                gr.Image(
                    label=name.capitalize(),
                    format="png",
                    interactive=False,
                    visible=False,
                    elem_id=name,
                )
                for name in ("semantic", "panoptic")
            )
        automatic = gr.Image(
            label="Segment everything",
            format="png",
            interactive=False,
            visible=False,
            elem_id="automatic",
        )
        files = gr.File(
            label="Files of the current result (JSON first)",
            file_count="multiple",
            interactive=False,
            elem_id="files",
        )

        prompt_views = [canvas, gallery, status, files]
        photo_outputs = [gallery, status, files, session_id, semantic, panoptic, automatic, legend]
        canvas.upload(callbacks.upload, [canvas, session_id], [canvas, *photo_outputs])
        canvas.clear(callbacks.remove, [session_id], photo_outputs)
        canvas.select(callbacks.click, [session_id, mode], prompt_views)
        gallery.select(callbacks.choose, [session_id], prompt_views)
        clear.click(callbacks.clear, [session_id], prompt_views)
        vocabulary_outputs = [semantic, panoptic, legend, *prompt_views]
        for trigger in (segment.click, vocabulary.submit, things.submit):
            trigger(callbacks.vocabulary, [session_id, vocabulary, things], vocabulary_outputs)
        everything.click(callbacks.everything, [session_id], [automatic, status, files])
    app.uniovseg_callbacks = callbacks
    return app


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n", 1)[0],
        epilog="Examples:\n"
        "  python demo/app.py --model output/quickstart/bundles/stage2\n"
        "  python demo/app.py --config-file stage2/uniovseg_convnext_large_stage2.yaml "
        "--opts MODEL.WEIGHTS model_final.pth",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="a model bundle folder or a Hugging Face hub repo id")
    source.add_argument(
        "--config-file", help="a uniovseg YAML config (path or packaged name); weights by --opts"
    )
    parser.add_argument(
        "--device", default=None, help="cpu, cuda or cuda:N (default: the model's config)"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to serve on (default local)")
    parser.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    parser.add_argument(
        "--max-side", type=int, default=1600, help="downscale larger photos (default 1600)"
    )
    parser.add_argument(
        "--max-sessions", type=int, default=8, help="photos kept encoded at once (default 8)"
    )
    parser.add_argument(
        "--max-file-size",
        default="50mb",
        help="largest upload the server accepts, e.g. 50mb or 1gb (default 50mb: a 100 MP JPEG)",
    )
    parser.add_argument(
        "--opts", nargs=argparse.REMAINDER, default=[], help="config overrides: KEY VALUE ..."
    )
    return parser


def launch_locally(app, *, attempts: int = 3, **launch_options) -> None:
    """``app.queue().launch(share=False, ssr_mode=False, **launch_options)``, retried.

    After starting its server Gradio checks that it answers on localhost, with one 3 s
    request; on a busy machine that request can time out, and Gradio then refuses to run
    without a share link ("When localhost is not accessible..."). The server itself is fine,
    so the launch is retried (``attempts`` times in all) rather than failing the command.
    """
    for attempt in range(1, attempts + 1):
        try:
            app.queue().launch(share=False, ssr_mode=False, **launch_options)
            return
        except ValueError as e:
            if "localhost is not accessible" not in str(e) or attempt == attempts:
                raise
            logger.warning("Gradio's localhost check timed out (attempt %d); retrying", attempt)
            app.close()


def main(argv: list[str] | None = None) -> int:
    """Builds the predictor and serves the page until interrupted; returns the exit status."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)
    if len(args.opts) % 2:
        parser.error(f"--opts needs KEY VALUE pairs, got {args.opts}")
    if args.max_side < 1 or args.max_sessions < 1:
        parser.error("--max-side and --max-sessions must be >= 1")
    from uniovseg.inference.predictor import UniOVSegPredictor

    try:
        if args.model:
            predictor = UniOVSegPredictor.from_pretrained(
                args.model, device=args.device, opts=args.opts
            )
        else:
            predictor = UniOVSegPredictor.from_config(
                args.config_file, opts=args.opts, device=args.device
            )
    except (FileNotFoundError, ValueError, KeyError) as e:
        parser.error(f"cannot build the model: {e}")
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # also for any Blocks made elsewhere
    app = build_web_app(predictor, max_side=args.max_side, max_sessions=args.max_sessions)
    launch_locally(
        app,
        server_name=args.host,
        server_port=args.port,
        max_file_size=args.max_file_size,  # refused by the server before any decoding
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
