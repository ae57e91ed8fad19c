"""Fast start-up (docs/architecture.md, "Start-up"): ``import vz_linux`` and the root commands'
``--version``/``--help`` import nothing heavy, and every command is still reachable, with its help,
its short help in the root's listing and its exit codes as before.

Module sets are read in a fresh interpreter (``sys.modules`` after the call), never timed here:
the figures are benchmarks/startup.py's.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import click
import pytest
from benchmarks import startup
from benchmarks.figures import Figures
from click.testing import CliRunner

import vz_linux
from vz_linux.cli import main as vz_linux_root
from vz_linux.cli import vz_main as vz_root
from vz_linux.cli.entry import LazyGroup

VENV_BIN = Path(sys.executable).parent
# Whatever would make start-up slow: the pipeline's rooms, rich, pydantic, the QMP client.
HEAVY = ("vz_linux.build", "vz_linux.bundle", "vz_linux.vm", "vz_linux.oci", "rich", "pydantic", "qemu",
         "filelock", "kconfiglib", "matplotlib", "vz_linux.cli.common", "importlib.metadata")


def _modules_after(code: str) -> set[str]:
    probe = f"""
import sys, json, contextlib, io
with contextlib.redirect_stdout(io.StringIO()):
    try:
{chr(10).join('        ' + line for line in code.splitlines())}
    except SystemExit as e:
        assert e.code in (0, None), e.code
print(json.dumps(sorted(sys.modules)))
"""
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return set(json.loads(r.stdout))


def _heavy(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if any(m == h or m.startswith(h + ".") for h in HEAVY))


@pytest.mark.parametrize("code", [
    "import vz_linux",
    "from vz_linux import __version__, AGENT_PROTOCOL_REVISION",
    "from vz_linux.cli.main import main; main(['--version'])",
    "from vz_linux.cli.main import main; main(['--help'])",
    "from vz_linux.cli.vz_main import main; main(['--version'])",
    "from vz_linux.cli.vz_main import main; main(['--help'])",
], ids=["import", "version-constants", "vz-linux--version", "vz-linux--help", "vz--version", "vz--help"])
def test_start_up_imports_nothing_heavy(code: str) -> None:
    modules = _modules_after(code)
    assert _heavy(modules) == [], code
    if "cli" not in code:
        assert "click" not in modules


# What `vz oci run` does not need: the pipeline, rich (made on first print), the release installer,
# plotting. Importing a module of a package must not import the whole package (lazy.py).
NOT_FOR_OCI_RUN = ("vz_linux.build", "vz_linux.bundle.installer", "vz_linux.bundle.fetch",
                   "vz_linux.bundle.release", "vz_linux.vm.boot_verify", "vz_linux.vm.bench", "rich",
                   "matplotlib", "kconfiglib")


def test_oci_run_loads_only_what_it_uses() -> None:
    modules = _modules_after("from vz_linux.cli.vz_main import main; main(['oci', 'run', '--help'])")
    assert "vz_linux.oci.container" in modules  # the probe did load the command
    assert sorted(m for m in modules if any(m == h or m.startswith(h + ".") for h in NOT_FOR_OCI_RUN)) == []


def test_lazy_package_names_still_resolve() -> None:
    import vz_linux.bundle
    import vz_linux.oci
    import vz_linux.vm

    for package in (vz_linux, vz_linux.bundle, vz_linux.vm, vz_linux.oci):
        for name in dir(package):
            assert getattr(package, name) is not None, (package.__name__, name)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        vz_linux.vm.nope  # noqa: B018


def test_the_check_can_fail() -> None:
    """The module probe sees a heavy import when there is one (else the test above proves nothing)."""
    assert "vz_linux.vm.linux_vm" in _heavy(_modules_after("import vz_linux; vz_linux.LinuxVm"))
    assert "rich.console" in _heavy(_modules_after("from vz_linux.cli.main import main; main(['verify', '--help'])"))


def _tree(group: click.Group, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        assert command is not None, (*path, name)
        yield (*path, name)
        if isinstance(command, click.Group):
            yield from _tree(command, (*path, name))


ROOTS = {"vz-linux": vz_linux_root.cli, "vz": vz_root.vz}


def test_every_root_command_is_listed_and_loads() -> None:
    # the commands the roots had before they became lazy: none lost, none renamed
    assert set(vz_linux_root.COMMANDS) == {"build", "config", "install", "ensure", "verify", "run", "keygen",
                                           "release", "push", "pull"}
    assert set(vz_root.COMMANDS) == {"oci", "vm"}
    for prog, root in ROOTS.items():
        assert isinstance(root, LazyGroup)
        table = vz_linux_root.COMMANDS if prog == "vz-linux" else vz_root.COMMANDS
        for name, lazy in table.items():
            command = lazy.load()
            assert command.name == name, (prog, name, command.name)
            # the line --help shows without importing is the command's own short help
            for limit in (45, 70, 1000):
                assert (click.Command(name, help=lazy.short_help).get_short_help_str(limit)
                        == command.get_short_help_str(limit)), (prog, name, limit)


@pytest.mark.parametrize("prog", sorted(ROOTS))
def test_help_of_every_command_works(prog: str) -> None:
    paths = list(_tree(ROOTS[prog]))
    assert len(paths) >= (10 if prog == "vz-linux" else 20), paths
    runner = CliRunner()
    for path in paths:
        r = runner.invoke(ROOTS[prog], [*path, "--help"], prog_name=prog)
        assert r.exit_code == 0, (path, r.output)
        assert r.output.startswith(f"Usage: {prog} {' '.join(path)} "), (path, r.output[:200])


@pytest.mark.parametrize("prog", sorted(ROOTS))
def test_root_help_lists_what_a_loaded_group_would(prog: str) -> None:
    """The lazy listing is exactly click's own listing of the loaded commands."""
    lazy = CliRunner().invoke(ROOTS[prog], ["--help"], prog_name=prog, terminal_width=100)
    root = ROOTS[prog]
    assert isinstance(root, LazyGroup)
    eager = click.Group(root.name, params=root.params, help=root.help, callback=root.callback,
                        context_settings=root.context_settings,
                        commands={n: c.load() for n, c in (vz_linux_root.COMMANDS if prog == "vz-linux"
                                                            else vz_root.COMMANDS).items()})
    loaded = CliRunner().invoke(eager, ["--help"], prog_name=prog, terminal_width=100)
    assert lazy.exit_code == loaded.exit_code == 0
    assert lazy.output == loaded.output


def _script(prog: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(VENV_BIN / prog), *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("prog", ["vz-linux", "vz"])
def test_console_scripts_version_and_usage_exit_codes(prog: str) -> None:
    r = _script(prog, "--version")
    assert (r.returncode, r.stdout) == (0, f"{prog}, version {vz_linux.__version__}\n"), r.stderr
    r = _script(prog, "--no-such-option")
    assert r.returncode == 2 and "No such option" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("prog", ["vz-linux", "vz"])
def test_unknown_command_is_a_usage_error(prog: str) -> None:
    r = _script(prog, "no-such-command")
    assert r.returncode == 2 and "No such command 'no-such-command'" in r.stderr and "Traceback" not in r.stderr


def test_errors_from_lazily_loaded_commands_keep_their_exit_codes(tmp_path: Path) -> None:
    # MissingArtifactsError (10) from a vz-linux command, InvalidConfigError (18) from a vz one
    r = _script("vz-linux", "verify", str(tmp_path / "nope"))
    assert r.returncode == 10 and r.stderr.startswith("vz-linux: error: ") and "Traceback" not in r.stderr
    r = _script("vz", "oci", "run", "-d", "--rm", "--data-dir", str(tmp_path), "img", "--", "true")
    assert r.returncode == 18 and r.stderr.startswith("vz: error: ") and "Traceback" not in r.stderr


def test_version_constant_is_the_package_version() -> None:
    assert metadata.version("vz-linux") == vz_linux.__version__


def test_startup_benchmark_measures_both_trees(tmp_path: Path) -> None:
    figures = Figures(echo=False)
    p50 = startup.measure(figures, 1, baseline_src=startup.THIS_SRC)
    assert set(p50) == {f"{c}{s}" for c in startup.CASES for s in ("", "_baseline")}
    assert all(v > 0 for v in p50.values())
    assert figures.get("import_vz_linux_modules").value < 20
    assert figures.get("vz_linux_version_speedup").unit == "ratio"
