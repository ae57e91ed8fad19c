"""Config resolution and the line-by-line fragment check (docs/profiles.md, "How configs are
checked").

baseline (``allnoconfig``/``defconfig``) → merge the fragments (profile, arch, profile+arch) →
``olddefconfig``, all with the kernel's own ``scripts/kconfig`` (the reference for the resulting
``.config``) → every line of every fragment is compared with the result. Lines that did not hold
are explained with kconfiglib (a real Kconfig implementation, loaded only when something failed):
the unmet dependency with the current values of its symbols, the symbols that select it, or the
missing prompt.
"""

from __future__ import annotations

import fnmatch
import io
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from filelock import FileLock

from ..arch import Architecture
from ..dotconfig import ConfigLine, parse_dotconfig, parse_lines
from ..errors import InvalidConfigError, KconfigCheckError
from ..fsutil import write_text_if_changed
from ..hashing import cache_key
from ..layout import cache_root, source_checkout
from ..profiles import KernelProfile
from ..run import run
from .kbuild import kconfig_env, make_argv, toolchain_info
from .sources import KernelSource


def linux_dir() -> Path:
    top = source_checkout()
    if top is None:
        raise InvalidConfigError("the linux/ fragments are not found: run vz-linux from a source checkout")
    return top / "linux"


def fragment_paths(profile: KernelProfile, arch: Architecture, linux: Path | None = None,
                   series: str | None = None) -> list[Path]:
    """The fragments of (profile, arch), in merge order (later lines win). ``series`` (e.g.
    "6.12") adds ``<profile fragment>-<series>.config`` when it exists: the lines whose symbols
    the other pin does not have."""
    linux = linux or linux_dir()
    paths = [linux / profile.fragment_name]
    if series is not None:
        per_series = linux / f"{profile.fragment_name.removesuffix('.config')}-{series}.config"
        if per_series.is_file():
            paths.append(per_series)
    paths.append(linux / "arch" / f"{arch.value}.config")
    per_profile = linux / "arch" / f"{arch.value}-{profile.value}.config"
    if per_profile.is_file():
        paths.append(per_profile)
    return paths


# --- allow-list --------------------------------------------------------------------------------
@dataclass(frozen=True)
class AllowEntry:
    """``<profile|*>:<arch|*> CONFIG_SYMBOL reason…`` in linux/config-allowlist.txt."""

    profile: str
    arch: str
    symbol: str
    reason: str

    def matches(self, profile: KernelProfile, arch: Architecture, symbol: str) -> bool:
        return (fnmatch.fnmatchcase(profile.value, self.profile) and fnmatch.fnmatchcase(arch.value, self.arch)
                and self.symbol == symbol)


def read_allowlist(path: Path) -> list[AllowEntry]:
    if not path.is_file():
        return []
    out: list[AllowEntry] = []
    for n, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        m = re.fullmatch(r"([\w*?]+):([\w*?]+)\s+CONFIG_(\w+)\s+(\S.*)", line)
        if not m:
            raise InvalidConfigError(
                f"{path}:{n}: expected '<profile|*>:<arch|*> CONFIG_SYMBOL reason', got {line!r}")
        out.append(AllowEntry(m[1], m[2], m[3], m[4].strip()))
    return out


def default_allowlist() -> Path:
    return linux_dir() / "config-allowlist.txt"


# --- results -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class CheckResult:
    line: ConfigLine
    resulting: str  # value in the resolved .config ("n" when absent)
    ok: bool
    explanation: str = ""  # why it did not hold (empty when ok)
    allowed_because: str = ""  # the allow-list reason, when a failure is accepted

    @property
    def failed(self) -> bool:
        return not self.ok and not self.allowed_because

    def describe(self) -> str:
        where = f"{self.line.path.name}:{self.line.lineno}" if self.line.path else "?"
        if self.ok:
            return f"ok       {self.line.as_text()}  ({where})"
        verb = "dropped" if self.resulting == "n" else f"resolved to {self.resulting}"
        text = f"{self.line.as_text()} {verb}: {self.explanation}  ({where})"
        if self.allowed_because:
            return f"allowed  {text} [allow-list: {self.allowed_because}]"
        return f"FAILED   {text}"


@dataclass(frozen=True)
class ResolvedConfig:
    profile: KernelProfile
    arch: Architecture
    source: KernelSource
    config_text: str
    fragments: tuple[Path, ...]
    checks: tuple[CheckResult, ...]
    config: Mapping[str, str] = field(repr=False, default_factory=dict)

    @property
    def failures(self) -> list[CheckResult]:
        return [c for c in self.checks if c.failed]

    @property
    def exclusions(self) -> list[ConfigLine]:
        """The "off" lines of the fragments: what container_sandbox is derived from."""
        return [c.line for c in self.checks if c.line.value == "n"]

    def counts(self) -> dict[str, int]:
        """y/m/n line counts of the resolved .config (the seed's kernel-config-summary)."""
        vals = parse_lines(self.config_text)
        return {
            "y": sum(1 for v in vals if v.value == "y"),
            "m": sum(1 for v in vals if v.value == "m"),
            "n": sum(1 for v in vals if v.value == "n"),
            "other": sum(1 for v in vals if v.value not in ("y", "m", "n")),
        }

    def raise_for_failures(self) -> None:
        bad = self.failures
        if bad:
            lines = "; ".join(c.describe().removeprefix("FAILED   ") for c in bad)
            raise KconfigCheckError(
                f"{self.profile}/{self.arch}: {len(bad)} fragment line(s) did not hold after olddefconfig: {lines}",
                hint="fix the fragment, or accept the drop in linux/config-allowlist.txt with a reason",
            )


# --- resolution --------------------------------------------------------------------------------
def _same(requested: str, resulting: str) -> bool:
    if requested == resulting:
        return True
    try:
        return int(requested, 0) == int(resulting, 0)
    except ValueError:
        return False


def merge_fragments(base_text: str, fragments: Sequence[Sequence[ConfigLine]]) -> str:
    """``base_text`` with every fragment line replacing the symbol's line (as merge_config.sh -m)."""
    wanted: dict[str, ConfigLine] = {}
    for frag in fragments:
        for line in frag:
            wanted[line.symbol] = line
    kept = [raw for raw in base_text.splitlines()
            if not ((p := parse_lines(raw)) and p[0].symbol in wanted)]
    return "\n".join([*kept, *(line.as_text() for line in wanted.values())]) + "\n"


def _memo_path(source: KernelSource, profile: KernelProfile, arch: Architecture,
               fragments: Sequence[Path]) -> Path:
    """Where the resolved .config of these exact inputs is kept. The key covers the source, the
    baseline, the fragments' text in merge order, the toolchain (Kconfig probes the compiler)
    and the host tools Kconfig asks about (pahole; rustc and bindgen are pinned to ``false`` by
    :data:`kbuild.NO_RUST`, schema 2)."""
    key = cache_key({
        "memo_schema": 2,
        "source": source.identity,
        "baseline": profile.baseline,
        "arch": arch.value,
        "fragments": [p.read_text() for p in fragments],
        "toolchain": toolchain_info(arch).model_dump(),
        "host_tools": [shutil.which("pahole")],
    })
    return cache_root() / "kconfig" / "resolved" / f"{key}.config"


def config_workdir(profile: KernelProfile, arch: Architecture, series: str) -> Path:
    """Where configs are resolved (not the compile dir, so `config` never disturbs a build);
    one per kernel series, so switching pins never reconfigures the other's tree."""
    return cache_root() / "kconfig" / series / f"{profile.value}-{arch.value}"


def resolve_config(
    source: KernelSource,
    profile: KernelProfile,
    arch: Architecture,
    *,
    fragments: Sequence[Path] | None = None,
    allowlist: Path | None = None,
    workdir: Path | None = None,
    memoize: bool = True,
) -> ResolvedConfig:
    """Resolve and check the config of (profile, arch). Never raises for failed checks: see
    :meth:`ResolvedConfig.raise_for_failures`.

    The kernel's ``make <baseline>`` + ``olddefconfig`` result is memoized under a key over
    every input (see :func:`_memo_path`), so a cache-hit build runs no make of the kernel at all.
    """
    frag_paths = list(fragments) if fragments is not None else fragment_paths(profile, arch, series=source.series)
    parsed: list[list[ConfigLine]] = []
    for p in frag_paths:
        try:
            parsed.append(parse_lines(p.read_text(), p))
        except OSError as e:
            raise InvalidConfigError(f"cannot read config fragment {p}: {e.strerror}") from None
    allow = read_allowlist(allowlist if allowlist is not None else default_allowlist())
    memo = _memo_path(source, profile, arch, frag_paths) if memoize else None
    if memo is not None and memo.is_file():
        text = memo.read_text()
    else:
        text = _olddefconfig(source, profile, arch, parsed, workdir or config_workdir(profile, arch, source.series))
        if memo is not None:
            memo.parent.mkdir(parents=True, exist_ok=True)
            write_text_if_changed(memo, text)
    resolved = parse_dotconfig(text)
    checks = _check(parsed, resolved, text, source, profile, arch, allow)
    return ResolvedConfig(profile, arch, source, text, tuple(frag_paths), checks, resolved)


def _olddefconfig(source: KernelSource, profile: KernelProfile, arch: Architecture,
                  fragments: Sequence[Sequence[ConfigLine]], workdir: Path) -> str:
    """The kernel's own ``make <baseline>``, the fragments merged, ``make olddefconfig``: the .config."""
    workdir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(workdir) + ".lock"):
        run(make_argv(source, workdir, arch, profile.baseline))
        base = (workdir / ".config").read_text()
        (workdir / ".config").write_text(merge_fragments(base, fragments))
        run(make_argv(source, workdir, arch, "olddefconfig"))
        return (workdir / ".config").read_text()


def _check(parsed: Sequence[Sequence[ConfigLine]], resolved: Mapping[str, str], text: str,
           source: KernelSource, profile: KernelProfile, arch: Architecture,
           allow: Sequence[AllowEntry]) -> tuple[CheckResult, ...]:
    """Every fragment line compared with the resolved config, failures explained and matched
    against the allow-list."""
    # The last line per symbol is the one that counts; an earlier one with another value is overridden.
    last: dict[str, ConfigLine] = {}
    for frag in parsed:
        for line in frag:
            last[line.symbol] = line
    raw: list[tuple[ConfigLine, str, bool, str]] = []
    for frag in parsed:
        for line in frag:
            got = resolved.get(line.symbol, "n")
            winner = last[line.symbol]
            if winner is not line and not _same(line.value, winner.value):
                where = f"{winner.path.name if winner.path else '?'}:{winner.lineno}"
                raw.append((line, got, False, f"overridden by {winner.as_text()} ({where})"))
            else:
                raw.append((line, got, _same(line.value, got), ""))
    explainer = _Explainer(source, arch) if any(not ok and not why for _, _, ok, why in raw) else None
    checks: list[CheckResult] = []
    for line, got, ok, why in raw:
        if not ok and not why and explainer is not None:
            why = explainer.explain(line, got, text)
        allowed = "" if ok else next(
            (a.reason for a in allow if a.matches(profile, arch, line.symbol)), "")
        checks.append(CheckResult(line, got, ok, why, allowed))
    return tuple(checks)


# --- explanations with kconfiglib --------------------------------------------------------------
@contextmanager
def _environ(extra: Mapping[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in extra}
    os.environ.update(extra)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def load_kconfig(source: KernelSource, arch: Architecture) -> Any:
    """kconfiglib's view of the tree (slow: docs/profiles.md). Linux 6.1's bare ``modules``
    attribute (in kernel/module/Kconfig) predates kconfiglib 14.1: it is read as ``option
    modules``, in memory only, never by editing the shared tree."""
    # Imported here, not at the top: kconfiglib is needed only to explain a failed line, and
    # every `vz-linux` command would otherwise pay for loading it.
    import kconfiglib

    class _Kconfig(kconfiglib.Kconfig):  # type: ignore[misc]
        def _open(self, filename: str, mode: str) -> IO[str]:
            if mode == "r" and filename.endswith("kernel/module/Kconfig"):
                text = Path(filename).read_text()
                return io.StringIO(re.sub(r"(?m)^(\s+)modules\s*$", r"\1option modules", text))
            return super()._open(filename, mode)  # type: ignore[no-any-return]

    with _environ(kconfig_env(source, arch)):
        return _Kconfig(str(source.tree / "Kconfig"), warn=False)


class _Explainer:
    def __init__(self, source: KernelSource, arch: Architecture) -> None:
        self.source = source
        self.arch = arch
        self._kconf: Any = None
        self._loaded_text: str | None = None

    def _kc(self, config_text: str) -> Any:
        if self._kconf is None:
            self._kconf = load_kconfig(self.source, self.arch)
        if self._loaded_text != config_text:
            with tempfile.NamedTemporaryFile("w", suffix=".config") as f:
                f.write(config_text)
                f.flush()
                with _environ(kconfig_env(self.source, self.arch)):
                    self._kconf.load_config(f.name)
            self._loaded_text = config_text
        return self._kconf

    def explain(self, line: ConfigLine, resulting: str, config_text: str) -> str:
        import kconfiglib as k  # lazily, as in load_kconfig (already loaded by then)

        kc = self._kc(config_text)
        sym = kc.syms.get(line.symbol)
        if sym is None or not sym.nodes:
            return f"no such symbol in Linux {self.source.info.version} for ARCH={self.arch.kernel_arch}"

        def sc(item: Any) -> str:
            if isinstance(item, k.Symbol) and not item.is_constant:
                return f"{item.name} [={item.str_value}]"
            return str(k.standard_sc_expr_str(item))

        def show(expr: Any) -> str:
            return str(k.expr_str(expr, sc))

        prompts = [n for n in sym.nodes if n.prompt]
        if line.value == "n":
            if k.expr_value(sym.rev_dep) > 0:
                on = [show(t) for t in k.split_expr(sym.rev_dep, k.OR) if k.expr_value(t) > 0]
                return "selected by " + ", ".join(on)
            if sym.choice is not None:
                return f"in choice {sym.choice.name or '<choice>'}, which must select one of its options"
            if not prompts:
                return f"no prompt (always {resulting} by its default)"
            hidden = [n.prompt[1] for n in prompts]
            if all(k.expr_value(c) == 0 for c in hidden):
                return ("its prompt is only visible if " + " || ".join(show(c) for c in hidden)
                        + f", so its default ({resulting}) applies")
            if sym.type in (k.STRING, k.INT, k.HEX):
                return f"a {k.TYPE_TO_STR[sym.type]} option cannot be 'not set'; it is {resulting}"
            return f"kconfiglib sees {sym.name}={sym.str_value}; kernel olddefconfig gave {resulting}"
        if k.expr_value(sym.direct_dep) == 0:
            unmet = [show(t) for t in k.split_expr(sym.direct_dep, k.AND) if k.expr_value(t) == 0]
            full = show(sym.direct_dep)
            text = f"depends on {full}"
            return text if len(unmet) > 3 or " && " not in full else f"{text} (unmet: {' && '.join(unmet)})"
        if not prompts:
            return "no prompt: it is only set by select or default"
        if sym.choice is not None and sym.choice.selection is not None and sym.choice.selection is not sym:
            return f"choice selects {sym.choice.selection.name} instead"
        vis_conds = [n.prompt[1] for n in prompts]
        if all(k.expr_value(c) == 0 for c in vis_conds):
            return "its prompt is only visible if " + " || ".join(show(c) for c in vis_conds)
        if sym.type in (k.INT, k.HEX) and sym.ranges:
            rng = ", ".join(f"{show(lo)}..{show(hi)}" for lo, hi, _ in sym.ranges)
            return f"outside its range ({rng}); it is {resulting}"
        if k.expr_value(sym.direct_dep) == 1 and line.value == "y":
            return f"depends on {show(sym.direct_dep)}, which is m: only m is possible"
        return f"kconfiglib sees {sym.name}={sym.str_value}; kernel olddefconfig gave {resulting}"
