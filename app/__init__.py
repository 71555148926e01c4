"""The LSGM exploration app: a Gradio UI over lsgm_core's public API. Run `python -m app`."""
