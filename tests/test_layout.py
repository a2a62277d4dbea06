"""The shape of the code and its set-up, checked: which part may import which,
what each part needs installed, and that the README says what `make` does."""
from __future__ import annotations

import ast
import re
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# part -> folder; the firmware folder is the `edgewire` package itself (device SDK and wire protocol)
PARTS = {"app": ROOT / "app", "gateway": ROOT / "gateway", "sim": ROOT / "sim",
         "sdk": ROOT / "firmware" / "edgewire"}
# Who may import whom: a tree with the console command at the top and the
# device SDK at the bottom. The gateway and the simulator never import each other.
MAY_IMPORT = {"app": {"app", "gateway", "sim", "sdk"}, "gateway": {"gateway", "sdk"},
              "sim": {"sim", "sdk"}, "sdk": {"sdk"}}
# Third-party packages each CPython part may import at run time (the
# pyproject.toml run-time dependencies); the test extra is not among them.
RUNTIME_IMPORTS = {"msgpack", "aiohttp", "amqtt", "prometheus_client"}
# Optional extras: a module may import its extra's packages (pyproject.toml), no other module may.
OPTIONAL_IMPORTS = {"gateway/sinks/amqp.py": {"aio_pika", "aiormq"}, "gateway/sinks/grpc.py": {"grpc"},
                    "gateway/grpcapi/forward_pb2.py": {"google"}, "gateway/grpcapi/forward_pb2_grpc.py": {"grpc"},
                    "app/backend.py": {"grpc", "aio_pika"}, "gateway/grpc_service.py": {"grpc"},
                    "gateway/grpcapi/gateway_pb2.py": {"google"}, "gateway/grpcapi/gateway_pb2_grpc.py": {"grpc"},
                    "gateway/certs.py": {"cryptography"}}  # `edgewire certs init` only: the tls extra (D21)
# The one module only pytest loads (the simulator's pytest11 plugin): it may import pytest.
PYTEST_ONLY = {"sim/pytest_plugin.py": {"pytest"}}
# Modules that exist only on MicroPython; the SDK imports them on a device.
MICROPYTHON_ONLY = {"machine", "network", "micropython", "utime", "ustruct", "uselect", "usocket", "uos",
                    "uerrno", "ubinascii", "uhashlib", "ujson", "urandom", "esp", "esp32", "rp2", "gc",
                    "select", "errno", "ssl", "tls", "ucollections", "uio", "sys", "time", "os", "struct", "socket"}


def _part_of(module: str) -> str | None:
    """'edgewire.gateway.core' -> 'gateway'; 'edgewire.wire' -> 'sdk'; 'aiohttp' -> None."""
    if module != "edgewire" and not module.startswith("edgewire."):
        return None
    second = module.split(".")[1] if "." in module else ""
    return second if second in ("app", "gateway", "sim") else "sdk"


def _imports(path: Path) -> list[tuple[int, str]]:
    """Every module a file imports, at top level or inside a function (lazy imports count)."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, a.name) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                raise AssertionError(f"{path}:{node.lineno}: relative import; the layout check needs absolute ones")
            assert node.module is not None
            found.append((node.lineno, node.module))
            if node.module == "edgewire":  # `from edgewire import sim` imports edgewire.sim
                found.extend((node.lineno, f"edgewire.{a.name}") for a in node.names)
    return found


def _sources(part: str) -> list[Path]:
    folder = PARTS[part]
    files = sorted(p for p in folder.rglob("*.py") if "__pycache__" not in p.parts)
    if part == "sdk":  # the other parts live in their own folders, not under firmware/edgewire
        assert not any((folder / p).exists() for p in ("gateway", "sim", "app"))
    assert files, folder
    return files


@pytest.mark.parametrize("part", sorted(PARTS))
def test_parts_import_only_downwards(part: str) -> None:
    wrong = []
    for path in _sources(part):
        for line, module in _imports(path):
            target = _part_of(module)
            if target is not None and target not in MAY_IMPORT[part]:
                wrong.append(f"{path.relative_to(ROOT)}:{line} imports {module} ({part} -> {target})")
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("part", ["app", "gateway", "sim"])
def test_cpython_parts_import_only_runtime_dependencies(part: str) -> None:
    """A Pi installs the gateway without the test tools: nothing the gateway,
    the simulator or the command imports may come only with the test extra."""
    wrong = []
    for path in _sources(part):
        for line, module in _imports(path):
            top = module.split(".")[0]
            if top == "edgewire" or top in sys.stdlib_module_names or top in RUNTIME_IMPORTS:
                continue
            if top in OPTIONAL_IMPORTS.get(str(path.relative_to(ROOT)), ()):
                continue
            if top in PYTEST_ONLY.get(str(path.relative_to(ROOT)), ()):
                continue
            wrong.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    assert not wrong, "\n".join(wrong)


def test_runtime_dependencies_are_what_the_parts_import() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {re.split(r"[<>=!~\[ ;]", d, maxsplit=1)[0].lower().replace("-", "_") for d in project["dependencies"]}
    assert names == RUNTIME_IMPORTS, "update RUNTIME_IMPORTS with pyproject.toml's dependencies (or the reverse)"


def test_the_layout_check_catches_a_cycle(tmp_path: Path) -> None:
    """The check itself can fail: a gateway module importing the simulator lazily is found."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from edgewire.sim import Fleet\n    return Fleet\n")
    assert [_part_of(m) for _, m in _imports(bad)] == ["sim"]
    assert "sim" not in MAY_IMPORT["gateway"]


def _system_packages() -> list[str]:
    script = (ROOT / "scripts" / "system-deps.sh").read_text()
    return re.findall(r"need\+=\(([\w.-]+)\)", script)


def _test_extra() -> list[str]:
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["test"]
    return [re.split(r"[<>=!~\[ ;]", d, maxsplit=1)[0] for d in extra]


def test_readme_says_what_make_test_installs() -> None:
    readme = (ROOT / "README.md").read_text()
    packages = _system_packages()
    assert packages == ["mosquitto", "mosquitto-clients", "chromium", "prometheus"], packages
    for name in packages:
        assert re.search(rf"`{re.escape(name)}`", readme), f"README does not name {name}, which `make test` installs"
    for name in _test_extra():
        assert f"`{name}`" in readme, f"README does not name {name} (the test extra `make test` installs)"


def test_makefile_demo_installs_no_test_extra() -> None:
    make = (ROOT / "Makefile").read_text()
    demo_rule = re.search(r"^\$\(DEMO_STAMP\):.*?(?=^\S)", make, re.S | re.M)
    assert demo_rule, "Makefile has no $(DEMO_STAMP) rule"
    assert "[test]" not in demo_rule.group(0)
    assert re.search(r"^demo: \$\(DEMO_STAMP\)\s*$", make, re.M), "`make demo` must depend on the demo install only"
