"""The dependency direction moa_core <- gateway -> adapters, checked by parsing imports."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PLATFORM_SDKS = {"telegram", "discord", "slack_bolt", "slack_sdk"}
STORAGE = {"sqlite3", "sqlite_utils", "psycopg", "psycopg_pool"}


def imported_modules(package: str, root: Path = ROOT) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for path in sorted((root / package).rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        names: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
        out[str(path.relative_to(root))] = names
    return out


def top(name: str) -> str:
    return name.split(".")[0]


@pytest.mark.parametrize("package", ["moa_core", "gateway", "adapters"])
def test_every_package_has_modules(package):
    assert imported_modules(package), f"{package} has no modules"


def test_moa_core_imports_no_gateway_adapters_or_platform_sdk():
    for path, names in imported_modules("moa_core").items():
        bad = {n for n in names if top(n) in {"gateway", "adapters", *PLATFORM_SDKS, *STORAGE}}
        assert not bad, f"{path} imports {sorted(bad)}"


def test_adapters_import_no_moa_core_gateway_or_storage():
    for path, names in imported_modules("adapters").items():
        bad = {n for n in names if top(n) in {"moa_core", "gateway", *STORAGE}}
        assert not bad, f"{path} imports {sorted(bad)}"


def test_only_the_storage_package_imports_database_drivers():
    """The service, costs and digest speak to the storage contract, never to a backend's driver."""
    for path, names in imported_modules("gateway").items():
        if Path(path).parts[:2] == ("gateway", "storage"):
            continue
        bad = {n for n in names if top(n) in STORAGE}
        assert not bad, f"{path} imports {sorted(bad)}"


def test_each_adapter_uses_only_its_own_platform_sdk():
    allowed = {"telegram": {"telegram"}, "discord": {"discord"}, "slack": {"slack_bolt", "slack_sdk"}}
    for path, names in imported_modules("adapters").items():
        sdks_used = {top(n) for n in names} & PLATFORM_SDKS
        parts = Path(path).parts
        folder = parts[1] if len(parts) > 2 else ""
        assert sdks_used <= allowed.get(folder, set()), f"{path} imports {sorted(sdks_used)}"


def test_the_checker_would_catch_a_violation(tmp_path):
    # Guard against a test that cannot fail: a planted import is found.
    (tmp_path / "moa_core").mkdir()
    (tmp_path / "moa_core" / "bad.py").write_text("import telegram\nfrom gateway.storage import Store\n")
    found = imported_modules("moa_core", tmp_path)
    assert {"telegram", "gateway.storage"} <= found["moa_core/bad.py"]


def test_ci_runs_exactly_the_readme_test_command():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    command = "python3 -m venv .venv && .venv/bin/pip install -e '.[test]' && .venv/bin/python -m pytest -q"
    assert command in readme and command in ci.splitlines()


def _fresh_interpreter(code: str):  # type: ignore[no-untyped-def]
    """Run `code` in a new interpreter at the project root (what start-up imports is per process)."""
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)


def test_start_up_does_not_import_numpy_and_the_chart_still_draws():
    # sqlite-utils imports numpy when installed (it is, for matplotlib): about 65 ms and 11 MB of
    # every start-up. gateway.storage imports sqlite-utils without it; the chart imports it when
    # it draws, and sqlite-utils works as before.
    check = ("import sys, datetime\n"
             "import gateway.app, gateway.cli, gateway.config, gateway.runtime, gateway.service\n"
             "import gateway.storage.sqlite, sqlite_utils\n"
             "print('numpy' in sys.modules)\n"
             "db = sqlite_utils.Database(memory=True)\n"
             "db['t'].insert({'a': 1, 'b': 'x'})\n"
             "print(list(db['t'].rows))\n"
             "from gateway.costs.chart import spend_chart_png\n"
             "png = spend_chart_png([datetime.date(2026, 12, 1), datetime.date(2026, 12, 2)], {'p': [0.5, 1.25]}, 't')\n"
             "print(png[:4] == b'\\x89PNG', 'numpy' in sys.modules)\n")
    out = _fresh_interpreter(check)
    assert out.stdout.split("\n")[:3] == ["False", "[{'a': 1, 'b': 'x'}]", "True True"], out.stdout + out.stderr


def test_only_a_gateway_with_mcp_servers_imports_the_mcp_sdk():
    # The SDK and its models cost about 0.3 s of every start-up, `moa-gateway cost` and `ask`
    # included; config and the toolbox read their values from moa_core.tools.mcp_settings.
    check = ("import sys\n"
             "import gateway.app, gateway.cli, gateway.config, gateway.runtime, gateway.service\n"
             "from moa_core.settings import ToolLimits\n"
             "from moa_core.tools.mcp_settings import McpServerSettings\n"
             "from moa_core.tools.mcp_toolbox import McpToolbox\n"
             "McpToolbox({}, {}, ToolLimits())\n"
             "print('mcp' in sys.modules)\n"
             "McpToolbox({'s': McpServerSettings('s', url='http://127.0.0.1:9/mcp')}, {}, ToolLimits())\n"
             "print('mcp' in sys.modules)\n")
    out = _fresh_interpreter(check)
    assert out.stdout.split() == ["False", "True"], out.stderr
