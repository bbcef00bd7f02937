"""Gradio web UI: ``build_app(manager, ...)`` composes the tabs (see ``app.py``)."""
from .app import APP_CSS, build_app, launch_app

__all__ = ["APP_CSS", "build_app", "launch_app"]
