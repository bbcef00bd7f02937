"""Tabs that other packages add to the app: the ``playground.tabs`` entry point group.

A tab plugin is a module (or any object) with ``build_tab(ctx: UIContext) -> None``, which opens its own
``gr.Tab`` inside the app's ``gr.Tabs``, and optionally ``served_folders() -> list[Path]``: folders whose files the
app may send to the browser (gradio's ``allowed_paths``), and ``css() -> str``: rules added to the app's CSS.
Plugins come after the built-in tabs, by name.

Why a plugin and not an import: the Benchmark tab drives the benchmark runner, and ``benchmarks/`` builds on
``playground/``; if the app imported the tab, the two packages would import each other. So the tab lives in
``benchmarks/ui_tab.py`` and pyproject.toml declares it::

    [project.entry-points."playground.tabs"]
    benchmark = "benchmarks.ui_tab"

Entry points are written into the environment by ``pip install -e .`` (setup.sh does it). A checkout that was
never installed, or installed before the group existed, lacks them: so the plugins this repository ships,
``SHIPPED_TAB_PLUGINS`` (the same lines as pyproject.toml), are always included by module name, and entry points
of the same name take their place; ``python launch.py`` shows the same tabs either way, and other installed
packages can add theirs. A plugin whose package is not installed at all is left out with a line on stderr;
any other error while importing it is raised (a broken tab must not vanish quietly).
"""
from __future__ import annotations

import importlib
import sys
from importlib.metadata import entry_points
from pathlib import Path

GROUP = "playground.tabs"
SHIPPED_TAB_PLUGINS = {"benchmark": "benchmarks.ui_tab"}   # name → module, as in pyproject.toml


def declared_tab_plugins() -> dict[str, str]:
    """``SHIPPED_TAB_PLUGINS`` and the group's entry points (name → ``module`` or ``module:attr``), by name."""
    found = {ep.name: ep.value for ep in entry_points(group=GROUP)}
    return dict(sorted({**SHIPPED_TAB_PLUGINS, **found}.items()))


def load_plugin(name: str, target: str):
    """Import one plugin (``module`` or ``module:attr``); None when its package is not installed."""
    module_name, _, attr = target.partition(":")
    try:
        obj = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is None or not (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise                      # the plugin is there but something it imports is missing: a real error
        print(f"! The {name} tab is left out: {module_name} is not installed ({GROUP} entry point).",
              file=sys.stderr, flush=True)
        return None
    for part in filter(None, attr.split(".")):
        obj = getattr(obj, part)
    if not callable(getattr(obj, "build_tab", None)):
        raise TypeError(f"{GROUP} plugin {name} = {target!r} has no build_tab(ctx)")
    return obj


def tab_plugins() -> list:
    """The plugins to add after the built-in tabs (each with ``build_tab(ctx)``)."""
    loaded = (load_plugin(name, target) for name, target in declared_tab_plugins().items())
    return [plugin for plugin in loaded if plugin is not None]


def served_folders(plugins: list | None = None) -> list[Path]:
    """Every folder the plugins let the browser download from (``allowed_paths`` of the app's launch)."""
    plugins = tab_plugins() if plugins is None else plugins
    return [Path(p) for plugin in plugins for p in getattr(plugin, "served_folders", list)()]


def plugin_css(plugins: list | None = None) -> str:
    """The plugins' CSS rules, to add to the app's own."""
    plugins = tab_plugins() if plugins is None else plugins
    return "".join(getattr(plugin, "css", str)() for plugin in plugins)
