"""The whole page: the model picker above the tabs (app.tabs.TABS), and the server settings it is launched with."""
import gradio as gr

from lsgm_core import CheckpointError

from .common import Context, user_errors
from .images import MAX_UPLOAD_MB
from .paths import ASSETS
from .tabs import TABS

MAX_QUEUE = 64  # requests waiting at once, all users together; more are refused with "queue full"
# System fonts: the default theme would fetch Google Fonts, and the app must work offline.
THEME = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                          font_mono=["ui-monospace", "monospace"])


def describe(model, model_id: str) -> str:
    meta, cfg = model.meta, model.config
    parts = [f"**{model_id}**: {model.kind}", f"data {cfg['data']['dataset']}",
             "latent " + "×".join(map(str, model.latent_shape)), f"step {meta.get('step', '?')}"]
    metrics = meta.get("metrics") or {}
    if metrics.get("test_bound_nelbo_1k") is not None:
        parts.append(f"test bound NELBO {metrics['test_bound_nelbo_1k']:.2f} nats")
    if model.kind == "lsgm" and meta.get("stage") == 1:
        parts.append("stage 1: its prior is still N(0, I)")
    return " · ".join(parts)


def build_app(ctx: Context) -> gr.Blocks:
    with gr.Blocks(title="LSGM explorer", analytics_enabled=False, delete_cache=(1800, 3600)) as demo:
        gr.Markdown("# LSGM explorer\nA VAE whose prior over the latent z0 is a score-based model "
                    "(Vahdat, Kreis & Kautz 2021). Pick a model, then explore it tab by tab.")
        good = gr.State(None)  # the last model of this page that loaded, to fall back to
        with gr.Row():
            picker = gr.Dropdown(ctx.registry.choices(), value=ctx.registry.default_id(), label="Model",
                                 allow_custom_value=True, scale=4, elem_id="model-picker",
                                 info="checkpoints/ ships with the app; runs/ are trained in the Train tab")
            refresh = gr.Button("Refresh list", scale=0)
        info = gr.Markdown(elem_id="model-info")
        with gr.Tabs():
            for tab in TABS:
                with gr.Tab(tab.label, id=tab.name):
                    tab.build(ctx, picker, demo)

        def on_pick(model_id, good):
            """Load the picked model; a broken one is reported and the page goes back to the last good one."""
            if not model_id:
                return gr.skip(), "No model yet: train one in the Train tab, or put a checkpoint in checkpoints/.", good
            try:
                model = ctx.registry.load(model_id)
            except (ValueError, CheckpointError) as e:
                gr.Warning(f"Cannot use {model_id}: {e}")
                return (gr.update(value=good) if good and good != model_id else gr.skip(),
                        f"⚠ cannot use **{model_id}**: {e}", good)
            return gr.skip(), describe(model, model_id), model_id

        gr.on([picker.change, demo.load], on_pick, [picker, good], [picker, info, good], api_visibility="private")
        refresh.click(lambda: gr.update(choices=ctx.registry.choices()), None, picker,
                      api_visibility="private", queue=False)

        @user_errors
        def models() -> dict:
            """The models a request may name, and the default one."""
            return {"default": ctx.registry.default_id(),
                    "models": [{"id": e.id, "description": e.label} for e in ctx.registry.entries()]}

        gr.api(models, api_name="models", queue=False)
    demo.queue(max_size=MAX_QUEUE, default_concurrency_limit=2)
    return demo


def launch_options(ctx: Context) -> dict:
    """Keyword arguments of Blocks.launch: local, no share link, limits on uploads, offline assets."""
    return {"share": False, "show_error": True, "quiet": True, "ssr_mode": False, "mcp_server": False,
            "max_file_size": f"{MAX_UPLOAD_MB}mb", "allowed_paths": [str(ctx.outputs.dir), str(ASSETS)],
            "theme": THEME, "css": "\n".join(t.css for t in TABS if t.css),
            "head": "".join(t.head for t in TABS), "footer_links": ["api"]}
