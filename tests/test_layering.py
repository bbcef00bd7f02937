"""The packages' layering: benchmarks/ builds on playground/, never the other way round (issue 18).

The web app reaches the benchmark through seams that playground/ owns: the ``playground.tabs`` plugins
(``playground/ui/plugins.py``) and the record of who shares the device (``playground/device_use.py``)."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every absolute import in a file, at any depth (inside functions too)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
    return found


def test_no_module_under_playground_imports_benchmarks():
    files = sorted((ROOT / "playground").rglob("*.py"))
    assert len(files) > 20, files          # the scan really looks at the package
    offending = [f"{path.relative_to(ROOT)}:{line} imports {module}" for path in files
                 for line, module in imported_modules(path)
                 if module == "benchmarks" or module.startswith("benchmarks.")]
    assert offending == [], "\n".join(offending)


def test_the_scan_sees_imports_inside_functions(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from benchmarks.runner import is_running\n    import benchmarks.plots as p\n")
    assert imported_modules(probe) == [(2, "benchmarks.runner"), (3, "benchmarks.plots")]


def test_the_shipped_tab_plugins_are_the_ones_pyproject_declares():
    import tomllib

    from playground.ui.plugins import GROUP, SHIPPED_TAB_PLUGINS
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"][GROUP]
    assert declared == SHIPPED_TAB_PLUGINS == {"benchmark": "benchmarks.ui_tab"}


def test_tab_plugins_are_the_shipped_list_and_the_entry_points(monkeypatch):
    import types

    from playground.ui import plugins
    monkeypatch.setattr(plugins, "entry_points", lambda group: [])            # never installed: the shipped list
    import benchmarks.ui_tab
    assert plugins.tab_plugins() == [benchmarks.ui_tab]
    monkeypatch.setattr(plugins, "entry_points", lambda group: [
        types.SimpleNamespace(name="benchmark", value="benchmarks.ui_tab"),
        types.SimpleNamespace(name="aa", value="playground.ui.chat_tab")])    # installed: the group, by name
    assert plugins.declared_tab_plugins() == {"aa": "playground.ui.chat_tab", "benchmark": "benchmarks.ui_tab"}
    import playground.ui.chat_tab
    assert plugins.tab_plugins() == [playground.ui.chat_tab, benchmarks.ui_tab]
    monkeypatch.setattr(plugins, "entry_points", lambda group: [            # an entry point replaces its namesake
        types.SimpleNamespace(name="benchmark", value="playground.ui.models_tab")])
    assert plugins.declared_tab_plugins() == {"benchmark": "playground.ui.models_tab"}


def test_a_plugin_not_installed_is_left_out_with_a_line_but_a_broken_one_raises(monkeypatch, tmp_path, capsys):
    import sys

    import pytest

    from playground.ui import plugins
    monkeypatch.setattr(plugins, "entry_points", lambda group: [])
    monkeypatch.setattr(plugins, "SHIPPED_TAB_PLUGINS", {"gone": "no_such_package_here.tab"})
    assert plugins.tab_plugins() == [] and plugins.served_folders() == []
    assert "The gone tab is left out: no_such_package_here.tab is not installed" in capsys.readouterr().err
    (tmp_path / "broken_tab_plugin.py").write_text("import no_such_dependency_of_the_tab\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(plugins, "SHIPPED_TAB_PLUGINS", {"broken": "broken_tab_plugin"})
    with pytest.raises(ModuleNotFoundError, match="no_such_dependency_of_the_tab"):
        plugins.tab_plugins()
    sys.modules.pop("broken_tab_plugin", None)
    (tmp_path / "no_tab_plugin.py").write_text("X = 1\n")
    monkeypatch.setattr(plugins, "SHIPPED_TAB_PLUGINS", {"nothing": "no_tab_plugin"})
    with pytest.raises(TypeError, match="has no build_tab"):
        plugins.tab_plugins()


def test_the_app_has_its_tabs_in_order_and_serves_the_benchmark_results_folder(manager, tmp_path, monkeypatch):
    import gradio as gr

    from benchmarks import ui_tab
    from playground.ui import plugins
    from playground.ui.app import build_app
    app = build_app(manager)
    tabs = [b for b in app.blocks.values() if isinstance(b, gr.Tab)]
    assert [t.elem_id for t in tabs] == ["tab-chat", "tab-compare", "tab-models", "tab-benchmark"]
    monkeypatch.setattr(ui_tab, "RESULTS_ROOT", tmp_path / "runs")
    assert plugins.served_folders() == [tmp_path / "runs"] and (tmp_path / "runs").is_dir()


def test_the_chat_busy_note_follows_what_shares_the_device():
    from benchmarks import runner
    from playground.device_use import device_sharers, sharing_device
    from playground.ui.common import device_busy_note
    assert device_busy_note() == "" and not runner.is_running()
    with sharing_device(runner.DEVICE_SHARER):
        assert runner.is_running() and device_sharers() == ["benchmark"]
        assert device_busy_note() == ("◔ A benchmark is running on this machine: replies share the device with it "
                                      "(slower), and chatting disturbs the benchmark's timings.")
    assert device_busy_note() == "" and not runner.is_running() and device_sharers() == []


def test_an_installed_distribution_declaring_the_group_is_found(monkeypatch, tmp_path):
    """Real package metadata (what ``pip install -e .`` writes from pyproject.toml), not a stand-in function."""
    from playground.ui import plugins
    info = tmp_path / "some_tabs-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: some-tabs\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[playground.tabs]\nmodels-again = playground.ui.models_tab\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    declared = plugins.declared_tab_plugins()
    assert declared["models-again"] == "playground.ui.models_tab" and declared["benchmark"] == "benchmarks.ui_tab"
