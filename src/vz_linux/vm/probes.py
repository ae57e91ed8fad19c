"""Live capability probes that do the thing (docs/agent.md, "Probes").

A capability whose registry entry has ``agent_probe`` is proved by ``vz-agent --probe NAME`` run in
the guest through an ordinary EXEC: it prints one evidence line and exits 0, or prints one reason
and exits nonzero. The others still run their shell snippet through the agent's PROBE operation.

Two probes need something from the host, made here before the boot (:class:`ProbeInputs`): the
virtiofs probe reads a random token from a read-only share, and the btrfs probe loop-mounts a small
btrfs image made with Debian's ``mkfs.btrfs --mixed`` and offered in the same share.

The guest is untrusted: what comes back is bounded (``MAX_PROBE_OUTPUT``), shown as one line and
never used as a host path.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ..build.initramfs import AGENT_PATH
from ..capabilities import REGISTRY
from ..errors import CommandFailedError, ExecOutputLimitError, ProbeInputError, ToolMissingError
from ..fsutil import owned_tempdir
from ..profiles import KernelCapability
from ..run import run
from .linux_vm import LinuxVm, VmShare

C = KernelCapability
PROBE_TIMEOUT = 60.0  # seconds per probe; the btrfs one copies 16 MiB and mounts under TCG
MAX_PROBE_OUTPUT = 64 * 1024  # bytes of a probe's stdout + stderr the host accepts
EVIDENCE_LIMIT = 160  # characters of evidence kept per row
BTRFS_IMAGE = "btrfs.img"
BTRFS_IMAGE_BYTES = 16 << 20  # mkfs.btrfs's minimum device size
TOKEN_FILE = "token"
# Capabilities whose probe reads from the host's probe share.
NEEDS_SHARE = frozenset({C.virtiofs, C.btrfs_snapshots})
INPUTS_PREFIX = "vz-probe-inputs-"


@dataclass(frozen=True)
class ProbeOutcome:
    passed: bool
    evidence: str  # one line: what the probe saw, or why it failed


@dataclass(frozen=True)
class ProbeInputs:
    """What the host made for the probes: a directory shared read-only as ``tag``."""

    directory: Path
    token: str
    tag: str

    @property
    def guest_dir(self) -> str:
        return f"/mnt/{self.tag}"  # where the guest's init mounts share vz-mount-N (docs/guest.md)

    def share(self) -> VmShare:
        return VmShare(self.tag, self.directory, read_only=True)


def mkfs_btrfs() -> str:
    """Debian's mkfs.btrfs (in /usr/sbin, often not on a user's PATH)."""
    found = shutil.which("mkfs.btrfs") or shutil.which("mkfs.btrfs", path="/usr/sbin:/sbin")
    if found is None:
        raise ToolMissingError("mkfs.btrfs not found", hint="install btrfs-progs (scripts/setup.sh does)")
    return found


def make_btrfs_image(path: Path) -> Path:
    """A sparse ``BTRFS_IMAGE_BYTES`` file holding an empty btrfs (mixed data+metadata block groups)."""
    with open(path, "xb") as f:
        f.truncate(BTRFS_IMAGE_BYTES)
    try:
        run([mkfs_btrfs(), "--mixed", "--quiet", "--label", "vz-probe", str(path)], timeout=60)
    except CommandFailedError as e:
        path.unlink(missing_ok=True)
        raise ProbeInputError(f"cannot make the btrfs probe image: {e}",
                              hint="check btrfs-progs (scripts/setup.sh installs it)") from None
    return path


def share_tag(existing: Iterable[VmShare]) -> str:
    """The first free ``vz-mount-N`` tag: init mounts them in order and stops at the first gap."""
    tags = {s.tag for s in existing}
    n = 0
    while f"vz-mount-{n}" in tags:
        n += 1
    return f"vz-mount-{n}"


@contextlib.contextmanager
def probe_inputs(declared: Iterable[KernelCapability], existing: Iterable[VmShare] = (),
                 parent: Path | None = None) -> Iterator[ProbeInputs | None]:
    """Make the token file and the btrfs image when a declared probe needs them (None otherwise)."""
    wanted = set(declared) & NEEDS_SHARE
    if not wanted:
        yield None
        return
    base = Path(parent) if parent is not None else Path(os.environ.get("TMPDIR") or "/tmp")
    with owned_tempdir(base, INPUTS_PREFIX) as d:
        token = secrets.token_hex(16)
        (d / TOKEN_FILE).write_text(token + "\n")
        if C.btrfs_snapshots in wanted:
            make_btrfs_image(d / BTRFS_IMAGE)
        d.chmod(0o755)
        yield ProbeInputs(d, token, share_tag(existing))


def probe_argv(capability: KernelCapability, inputs: ProbeInputs | None) -> list[str]:
    """The guest command line of an agent probe."""
    argv = [f"/{AGENT_PATH}", "--probe", capability.value]
    if capability is C.virtiofs and inputs is not None:
        argv += [f"{inputs.guest_dir}/{TOKEN_FILE}", inputs.token]
    elif capability is C.btrfs_snapshots and inputs is not None:
        argv += [f"{inputs.guest_dir}/{BTRFS_IMAGE}"]
    return argv


def one_line(text: str | bytes, limit: int = EVIDENCE_LIMIT) -> str:
    """The last non-empty line of ``text``, printable characters only, at most ``limit`` long."""
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    flat = "".join(ch if ch.isprintable() else "?" for ch in (lines[-1] if lines else ""))
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def run_probe(vm: LinuxVm, capability: KernelCapability, inputs: ProbeInputs | None,
              timeout: float = PROBE_TIMEOUT) -> ProbeOutcome:
    """Prove ``capability`` in the running guest; never raises for a failing probe."""
    spec = REGISTRY[capability]
    if not spec.agent_probe:
        res = vm.probe(capability.value, spec.probe, timeout=timeout)
        evidence = one_line(res.evidence) or (f"exit code {res.exit_code}" if res.exit_code is not None
                                              else "no output")
        if res.timed_out:
            evidence = f"timed out after {timeout:.0f}s: {evidence}"
        return ProbeOutcome(res.passed, evidence)
    if capability in NEEDS_SHARE and inputs is None:
        return ProbeOutcome(False, "no probe share was offered to the guest")
    try:
        r = vm.agent.exec_collect(probe_argv(capability, inputs), timeout=timeout, max_output=MAX_PROBE_OUTPUT)
    except ExecOutputLimitError:
        return ProbeOutcome(False, f"probe output over {MAX_PROBE_OUTPUT} bytes")
    if r.timed_out:
        return ProbeOutcome(False, f"timed out after {timeout:.0f}s: {one_line(r.stderr or r.stdout)}")
    if r.ok:
        return ProbeOutcome(True, one_line(r.stdout) or "exit code 0, no evidence")
    reason = one_line(r.stderr) or one_line(r.stdout) or r.describe()
    return ProbeOutcome(False, reason)
