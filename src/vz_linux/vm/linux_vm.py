"""``LinuxVm``: boot a bundle (or kernel + initramfs) with QEMU and talk to its guest agent (docs/vm.md).

Every resource of a boot — the work directory, the listening sockets, each virtiofsd, QEMU, the QMP
connection, the agent client — is entered on one :class:`contextlib.ExitStack`, so teardown runs in
reverse on any exit. Helpers are started through :func:`vz_linux.run.spawn` (own process group,
parent-death SIGKILL), so even a SIGKILLed host leaves no QEMU or virtiofsd behind. A SIGTERM to a
program using the CLI becomes ``KeyboardInterrupt`` (``cli.common``) and unwinds the stack.

Readiness is a fact: the host listens on the agent socket before QEMU starts, QEMU connects as a
client, and the VM is ready when the agent answers hello with our protocol revision.

The guest is untrusted (docs/security.md): its serial console reaches a size-capped log through a
socket we read (QEMU's own file backend has no size limit), read-only shares are read-only on the
host (virtiofsd under bubblewrap), and the agent client bounds what it queues and notices a dead agent.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from ..arch import Architecture
from ..errors import (
    AgentError,
    AgentTimeoutError,
    GuestBootError,
    InvalidConfigError,
    SnapshotCorruptError,
    SnapshotError,
    VmError,
    VzLinuxError,
)
from ..fsutil import owned_tempdir, publish_dir
from ..layout import BundlePaths
from ..run import spawn, terminate
from ..version import AGENT_PROTOCOL_REVISION
from .accel import AccelChoice, AccelVerdict, resolve_accel
from .agent_client import AgentClient, AgentHello, ExecResult, ExecStream, ProbeResult
from .guest_log import CappedLog
from .qemu import TCG_X86_ITEMS, Accel, Disk, QemuVm, Share, Transport, host_tsc_khz, vhost_vsock_available
from .snapshot import (
    STATE,
    OpenSnapshot,
    RestoreTimes,
    SnapshotManifest,
    Verifier,
    check_file_sizes,
    check_shape,
    load_state,
    open_snapshot,
    qemu_version,
    refuse_shares,
    save_state,
    vm_shape,
    write_manifest,
)
from .virtiofsd import CacheMode, VirtiofsdConfig, virtiofsd

ROOTFS_TAG = "rootfs"
PANIC_MARKER = "Kernel panic"
LOG_TAIL_LINES = 40
QMP_CONNECT_TIMEOUT = 10.0
WORKDIR_PREFIX = "vz-vm-"  # a VM's work dir: $TMPDIR/vz-vm-XXXXXXXX (sockets, logs)
SERIAL_LOG_LIMIT = 1 << 20  # bytes per file of the serial log, which keeps two (docs/vm.md)


@dataclass(frozen=True)
class VmShare:
    """A host directory offered to the guest over virtiofs under ``tag``."""

    tag: str
    source: Path
    cache: CacheMode = CacheMode.auto
    read_only: bool = False  # enforced on the host, whatever the guest's mount flags say


@dataclass(frozen=True)
class VmConfig:
    kernel: Path
    initramfs: Path | None = None
    arch: Architecture = field(default_factory=Architecture.host)
    cpus: int = 1
    memory_mib: int = 256
    cmdline_extra: tuple[str, ...] = ()
    fast_cmdline: bool = True
    hardening_cmdline: bool = True  # qemu.HARDENING_CMDLINE (off only to measure it)
    network: bool = False
    rootfs: Path | None = None  # shared as tag "rootfs": init overlays it and chroots (docs/guest.md)
    shares: tuple[VmShare, ...] = ()  # further shares, conventionally tagged vz-mount-N
    disks: tuple[Disk, ...] = ()  # virtio-blk: /dev/vda, /dev/vdb… (root=/dev/vda boots from the first)
    serial_log: Path | None = None  # None: kept in the VM's work dir (for error reports) and deleted
    serial_log_limit: int = SERIAL_LOG_LIMIT  # bytes per file; the log keeps this file and one rotated
    accel: AccelChoice | str = AccelChoice.auto
    vsock_cid: int | None = None  # only used when the host has /dev/vhost-vsock
    hvc_console: bool = True
    machine: str | None = None  # None: the arch's qemu_machine; "pc" for stock kernels
    transport: Transport | None = None
    tell_tsc_rate: bool = True  # TCG x86_64: pass the host's TSC rate (qemu.host_tsc_khz)
    # TCG only (docs/vm.md, "Memory"): transparent huge pages for QEMU (off: guest RAM is backed 4 KiB at a
    # time, not in 2 MiB pieces), and the translation cache size in MiB (None: QEMU's 1 GiB default).
    tcg_huge_pages: bool = False
    tcg_tb_size_mib: int | None = 64
    tcg_tuning: bool = True  # TCG x86_64 microvm: qemu.TCG_X86_CMDLINE and -cpu TCG_X86_CPU (off to measure)
    tcg_tuning_skip: tuple[str, ...] = ()  # items of qemu.TCG_X86_ITEMS left out (to measure each one)

    @classmethod
    def from_bundle(cls, bundle_dir: Path, **overrides: Any) -> VmConfig:
        """Kernel, initramfs and arch of a bundle directory (its layout: docs/selection.md)."""
        paths = BundlePaths(Path(bundle_dir))
        for p in (paths.kernel, paths.initramfs):
            if not p.is_file():
                raise InvalidConfigError(f"{bundle_dir} is not a bundle: {p.name} is missing",
                                         hint="build one with `vz-linux build` or pass --kernel/--initramfs")
        arch = Architecture.host()
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            arch = Architecture.parse(str(json.loads(paths.metadata.read_text())["arch"]))
        return cls(kernel=paths.kernel, initramfs=paths.initramfs, **{"arch": arch, **overrides})

    def all_shares(self) -> tuple[VmShare, ...]:
        # The rootfs share is only ever an overlay's lower layer: read-only on the host too.
        root = (VmShare(ROOTFS_TAG, self.rootfs, read_only=True),) if self.rootfs is not None else ()
        return root + self.shares

    def validate(self) -> None:
        if not self.kernel.is_file():
            raise InvalidConfigError(f"kernel {self.kernel} does not exist")
        if self.initramfs is not None and not self.initramfs.is_file():
            raise InvalidConfigError(f"initramfs {self.initramfs} does not exist")
        if self.cpus < 1 or self.memory_mib < 32:
            raise InvalidConfigError("a VM needs at least 1 CPU and 32 MiB of memory")
        if self.serial_log_limit < 1:
            raise InvalidConfigError("serial_log_limit must be a positive number of bytes")
        if unknown := set(self.tcg_tuning_skip) - set(TCG_X86_ITEMS):
            raise InvalidConfigError(f"unknown TCG tuning item(s) {', '.join(sorted(unknown))}; "
                                     f"valid: {', '.join(TCG_X86_ITEMS)}")
        tags = [s.tag for s in self.all_shares()]
        if len(set(tags)) != len(tags):
            raise InvalidConfigError(f"share tags must be unique: {', '.join(tags)}")
        for s in self.all_shares():
            if not s.source.is_dir():
                raise InvalidConfigError(f"share {s.tag}: {s.source} is not a directory")
        for d in self.disks:
            if not d.path.is_file():
                raise InvalidConfigError(f"disk {d.path} is not a regular file")


@dataclass(frozen=True)
class BootTimes:
    """Host ``time.monotonic_ns()`` stamps of one boot (for the benchmark's phase split)."""

    spawned_ns: int  # just before QEMU was spawned
    vmm_ready_ns: int  # QEMU answered QMP: devices created, the guest about to run
    agent_ready_ns: int  # the answered hello arrived
    hello: AgentHello


_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1bc|\r")


class _SerialPump:
    """Copies the guest's serial console from QEMU's socket chardev into a size-capped log."""

    def __init__(self, listener: socket.socket, log: CappedLog) -> None:
        self._listener = listener
        self._log = log
        self._conn: socket.socket | None = None
        self._thread = threading.Thread(target=self._run, name="vz-serial-log", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with contextlib.suppress(OSError):
            self._listener.settimeout(QMP_CONNECT_TIMEOUT)
            self._conn, _ = self._listener.accept()  # QEMU connects while it starts up
            self._conn.settimeout(None)
            while data := self._conn.recv(65536):
                self._log.write(data)

    def stop(self, qemu: subprocess.Popen[bytes]) -> None:
        """Stop reading and close the log: once QEMU has exited, after what it wrote is read."""
        if qemu.poll() is not None:
            self._thread.join(timeout=2)  # EOF follows the last bytes
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        if self._conn is not None:
            with contextlib.suppress(OSError):
                self._conn.shutdown(socket.SHUT_RDWR)
        self._thread.join(timeout=5)
        self._log.close()


def _log_end(path: Path) -> str:
    """The last 16 KiB of a (serial) log, terminal escapes removed; '' if there is none."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 16384))
            return _ANSI.sub("", f.read().decode(errors="replace"))
    except OSError:
        return ""


def tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines of a (serial) log, terminal escapes removed; '' if there is none."""
    return "\n".join(_log_end(path).splitlines()[-lines:])


def panic_line(path: Path) -> str | None:
    """The kernel's last panic line near the end of a serial log: its stack trace can be longer than
    the tail shown (6.12 prints more), so it is looked for in the whole last 16 KiB."""
    found = [line for line in _log_end(path).splitlines() if PANIC_MARKER in line]
    return found[-1][found[-1].index(PANIC_MARKER):].strip() if found else None


def effective_accel(config: VmConfig) -> AccelVerdict:
    """The accelerator a VM of ``config`` gets: KVM only when proven, and never for a foreign arch."""
    verdict = resolve_accel(config.accel)
    if verdict.accel is Accel.kvm and config.arch is not Architecture.host():
        return AccelVerdict(Accel.tcg, f"{config.arch} guest on a {Architecture.host()} host: using TCG")
    return verdict


def describe(config: VmConfig, accel: Accel, workdir: Path, shares: tuple[Share, ...] = (),
             *, incoming: bool = False) -> QemuVm:
    """The QEMU description of ``config`` with its sockets in ``workdir`` (templates key on it too)."""
    tcg_x86 = accel is Accel.tcg and config.arch is Architecture.x86_64 and Architecture.host() is Architecture.x86_64
    return QemuVm(
        arch=config.arch, kernel=config.kernel, initramfs=config.initramfs, cpus=config.cpus,
        memory_mib=config.memory_mib, accel=accel, cmdline_extra=config.cmdline_extra,
        fast_cmdline=config.fast_cmdline, hardening_cmdline=config.hardening_cmdline,
        serial_socket=workdir / "serial.sock", agent_socket=workdir / "agent.sock",
        qmp_socket=workdir / "qmp.sock", network=config.network, shares=shares, disks=config.disks,
        hvc_console=config.hvc_console,
        vsock_cid=config.vsock_cid if config.vsock_cid is not None and vhost_vsock_available() else None,
        machine=config.machine, transport=config.transport,
        tsc_khz=host_tsc_khz() if config.tell_tsc_rate and tcg_x86 else None, incoming=incoming,
        tcg_tb_size_mib=config.tcg_tb_size_mib,
        tcg_tuning=config.tcg_tuning, tcg_tuning_skip=config.tcg_tuning_skip,
    )


class LinuxVm:
    """One QEMU guest. Use as a context manager, or call :meth:`start` / :meth:`stop`."""

    def __init__(self, config: VmConfig, *, workdir_parent: Path | None = None) -> None:
        config.validate()
        self.config = config
        self._workdir_parent = workdir_parent
        self._stack = contextlib.ExitStack()
        self._proc: subprocess.Popen[bytes] | None = None
        self._qmp: Any = None
        self._agent_listener: socket.socket | None = None
        self._client: AgentClient | None = None
        self.workdir: Path | None = None
        self.qemu: QemuVm | None = None
        self.accel: AccelVerdict | None = None
        self.serial_log: Path | None = config.serial_log
        self.spawned_ns = 0
        self.vmm_ready_ns = 0
        self.times: BootTimes | None = None
        self.restore_times: RestoreTimes | None = None  # set by restore()

    # --- lifecycle ------------------------------------------------------------------------------
    def __enter__(self) -> LinuxVm:
        if self._proc is None:  # restore() hands out a VM that is already running
            self.start()
        return self

    def __exit__(self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    @property
    def process(self) -> subprocess.Popen[bytes] | None:
        return self._proc

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self) -> None:
        """Spawn QEMU (and virtiofsd per share). Returns once QEMU is up; the guest boots on."""
        if self._proc is not None:
            raise VmError("this LinuxVm was already started")
        try:
            self._start()
        except BaseException:
            self._stack.close()
            raise

    def _start(self, incoming_fd: int | None = None) -> None:
        cfg = self.config
        # Unix socket paths are limited to 108 bytes: keep the work dir short (under /tmp by default).
        # Owned (fsutil.owned_tempdir): a work dir left by a VM owner that was SIGKILLed is removed here.
        parent = self._workdir_parent or Path(tempfile.gettempdir())
        self.workdir = self._stack.enter_context(owned_tempdir(parent, WORKDIR_PREFIX))
        workdir = self.workdir
        if self.serial_log is None:
            self.serial_log = workdir / "serial.log"
        self.serial_log.parent.mkdir(parents=True, exist_ok=True)
        # Fresh log per boot: the panic scan must not see an old one.
        serial_log = CappedLog(self.serial_log, cfg.serial_log_limit, fresh=True)
        self._stack.callback(serial_log.close)

        self.accel = effective_accel(cfg)
        self._agent_listener = self._listen(workdir / "agent.sock")
        qmp_listener = self._listen(workdir / "qmp.sock")
        serial_listener = self._listen(workdir / "serial.sock")
        shares = self._start_virtiofsds(workdir)

        self.qemu = describe(cfg, self.accel.accel, workdir, tuple(shares), incoming=incoming_fd is not None)
        argv = self.qemu.argv()
        stderr = self._stack.enter_context(open(workdir / "qemu.stderr", "wb"))  # noqa: SIM115
        self.spawned_ns = time.monotonic_ns()
        self._proc = self._stack.enter_context(spawn(
            argv, stderr=stderr, terminate_timeout=3.0, pass_fds=() if incoming_fd is None else (incoming_fd,),
            no_thp=self.accel.accel is Accel.tcg and not cfg.tcg_huge_pages))
        # stop() ends QEMU before it unwinds the stack, so the pump sees EOF after the last byte.
        self._stack.callback(_SerialPump(serial_listener, serial_log).stop, self._proc)
        self._connect_qmp(qmp_listener)
        self.vmm_ready_ns = time.monotonic_ns()
        qmp_listener.close()

    def _start_virtiofsds(self, workdir: Path) -> list[Share]:
        shares: list[Share] = []
        for i, share in enumerate(self.config.all_shares()):
            sock = workdir / f"fs{i}.sock"
            self._stack.enter_context(virtiofsd(
                VirtiofsdConfig(source=share.source.resolve(), socket_path=sock, cache=share.cache,
                                read_only=share.read_only),
                log_path=workdir / f"virtiofsd-{i}.log"))
            shares.append(Share(share.tag, sock))
        return shares

    def _listen(self, path: Path) -> socket.socket:
        s = self._stack.enter_context(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC))
        s.bind(str(path))
        s.listen(1)
        return s

    def _connect_qmp(self, listener: socket.socket) -> None:
        from qemu.qmp.legacy import QEMUMonitorProtocol

        # qemu.qmp logs a dropped connection (QEMU quitting) at ERROR; we handle those ourselves.
        logging.getLogger("qemu.qmp").setLevel(logging.CRITICAL)

        conn = self._accept(listener, QMP_CONNECT_TIMEOUT, "QMP monitor")
        qmp = QEMUMonitorProtocol(conn)
        qmp.settimeout(QMP_CONNECT_TIMEOUT)
        try:
            qmp.connect(negotiate=True)
        except Exception as e:  # qemu.qmp raises its own hierarchy; any failure means no clean control
            qmp.close()
            raise self._boot_error(f"QEMU's QMP monitor did not answer: {e}") from e
        self._qmp = qmp
        self._stack.callback(_close_quietly, qmp)

    def _accept(self, listener: socket.socket, timeout: float, what: str) -> socket.socket:
        deadline = time.monotonic() + timeout
        listener.settimeout(0.05)
        while True:
            try:
                conn, _ = listener.accept()
                conn.settimeout(None)
                return conn
            except TimeoutError:
                pass
            self._raise_if_exited(f"before connecting its {what}")
            if time.monotonic() > deadline:
                raise self._boot_error(f"QEMU did not connect its {what} within {timeout:.0f}s")

    def _raise_if_exited(self, when: str) -> None:
        if self._proc is not None and self._proc.poll() is not None:
            raise self._boot_error(f"QEMU exited with code {self._proc.returncode} {when}")

    def _boot_error(self, message: str) -> GuestBootError:
        """A :class:`GuestBootError` with QEMU's stderr and the serial log tail, naming a panic."""
        log_tail = tail(self.serial_log) if self.serial_log is not None else ""
        err = tail(self.workdir / "qemu.stderr", 5) if self.workdir is not None else ""
        panic = panic_line(self.serial_log) if self.serial_log is not None else None
        if panic is not None:
            message = f"guest kernel panicked: {panic} ({message})"
        parts = [message]
        if err.strip():
            parts.append(f"QEMU stderr:\n{err}")
        if log_tail.strip():
            parts.append(f"serial log tail ({self.serial_log}):\n{log_tail}")
        return GuestBootError("\n".join(parts))

    def wait_for_agent(self, timeout: float = 60.0,
                       on_retry: Callable[[int, float], None] | None = None,
                       *, attempt_timeout: float = 0.5) -> AgentHello:
        """Block until the agent answers hello with our protocol revision.

        Raises :class:`GuestBootError` (with the serial log tail, naming a kernel panic) when QEMU
        exits or ``timeout`` passes first. ``on_retry(attempt, elapsed_s)`` is called per attempt.
        """
        if self._proc is None or self._agent_listener is None:
            raise VmError("wait_for_agent() before start()")
        if self._client is not None and self.times is not None:
            return self.times.hello
        start = time.monotonic()
        client = AgentClient.from_socket(self.open_agent_channel(timeout), default_timeout=30.0)
        self._stack.callback(client.close)

        def before_attempt(attempt: int, _elapsed: float) -> None:
            if on_retry is not None:
                on_retry(attempt, time.monotonic() - start)
            self._raise_if_exited("before the guest agent answered")
            if self.serial_log is not None and PANIC_MARKER in tail(self.serial_log):
                raise self._boot_error("before the guest agent answered")

        try:
            hello = client.wait_ready(start + timeout - time.monotonic(), attempt_timeout=attempt_timeout,
                                      on_retry=before_attempt)
        except AgentTimeoutError as e:
            raise self._boot_error(f"the guest agent did not answer within {timeout:.0f}s") from e
        except AgentError as e:
            # The channel broke: almost always QEMU going away (panic, reboot) — report that.
            if _exited(self._proc, 2.0):
                raise self._boot_error("before the guest agent answered") from e
            raise self._boot_error(f"agent channel failed: {e}") from e
        if hello.protocol_revision != AGENT_PROTOCOL_REVISION:
            raise GuestBootError(
                f"guest agent speaks protocol revision {hello.protocol_revision}, this host needs "
                f"{AGENT_PROTOCOL_REVISION}", hint="rebuild the bundle with this vz-linux release")
        self._client = client
        self.times = BootTimes(self.spawned_ns, self.vmm_ready_ns, hello.host_received_ns, hello)
        return hello

    def open_agent_channel(self, timeout: float = 10.0) -> socket.socket:
        """The raw agent channel (QEMU's connection to our socket), for guests without an agent
        (the benchmark's floor guest writes one line to it). Owned by the VM: closed on stop()."""
        if self._agent_listener is None:
            raise VmError("open_agent_channel() before start()")
        conn = self._accept(self._agent_listener, timeout, "agent channel")
        self._stack.callback(conn.close)
        return conn

    @property
    def agent(self) -> AgentClient:
        if self._client is None:
            raise VmError("the guest agent is not ready: call wait_for_agent() first")
        return self._client

    # --- guest operations -------------------------------------------------------------------------
    def exec_collect(self, argv: Sequence[str], *, env: Mapping[str, str] | None = None,
                     cwd: str | None = None, stdin: bytes | None = None,
                     timeout: float | None = None) -> ExecResult:
        return self.agent.exec_collect(argv, env=env, cwd=cwd, stdin=stdin, timeout=timeout)

    def exec_stream(self, argv: Sequence[str], *, env: Mapping[str, str] | None = None,
                    cwd: str | None = None, stdin: bytes | None = None,
                    timeout: float | None = None) -> ExecStream:
        return self.agent.exec_stream(argv, env=env, cwd=cwd, stdin=stdin, timeout=timeout)

    def probe(self, capability: str, snippet: str, *, timeout: float = 20.0) -> ProbeResult:
        return self.agent.probe(capability, snippet, timeout=timeout)

    def qmp(self, command: str, **args: object) -> object:
        if self._qmp is None:
            raise VmError("QEMU is not running")
        return self._qmp.cmd(command, **args)

    def rss_bytes(self) -> int:
        """QEMU's resident memory now (VmRSS of its process)."""
        if self._proc is None:
            raise VmError("QEMU is not running")
        for line in Path(f"/proc/{self._proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise VmError("cannot read QEMU's VmRSS")

    # --- snapshots (docs/vm.md, "Snapshots and templates") ---------------------------------------
    def save(self, path: Path, *, resume: bool = True, timeout: float = 60.0) -> SnapshotManifest:
        """Save the whole VM into the directory ``path`` (replaced atomically) and return its record.

        The guest is paused while QEMU writes its state; ``resume=False`` leaves it paused (for a VM
        that is stopped next, as a template's is). Raises :class:`SnapshotUnsupportedError` for a VM
        with virtiofs shares, :class:`SnapshotError` when QEMU cannot save it.
        """
        refuse_shares([s.tag for s in self.config.all_shares()], "save")
        if self._proc is None or self._qmp is None or self.qemu is None:
            raise VmError("save() before start()")
        hello = self.times.hello if self.times is not None else None
        if self._client is not None:
            # Every reply still in flight (a late answer to a resent hello) arrives before this one,
            # so none is left in the saved channel to reach a restored copy's new client.
            self._client.ping(timeout=timeout)
        try:
            with publish_dir(Path(path), replace=True) as stage:
                save_state(self._qmp, stage / STATE, timeout)
                return write_manifest(stage, self.qemu, qemu_version(self._qmp), hello)
        except OSError as e:
            raise SnapshotError(f"cannot write snapshot {path}: {e.strerror or e}",
                                hint="save it to a writable directory") from e
        finally:
            if resume:
                with contextlib.suppress(Exception):  # a QEMU that died here is reported by the caller's next use
                    self._qmp.cmd("cont")

    @classmethod
    def restore(cls, path: Path, config: VmConfig, *, timeout: float = 60.0,
                workdir_parent: Path | None = None) -> LinuxVm:
        """A new VM from the snapshot at ``path``, running with its agent ready.

        The snapshot must have been made from this ``config``'s kernel and initramfs, by this QEMU, for
        a VM of the same shape (:class:`SnapshotMismatchError` otherwise); a short, unreadable or
        corrupt state is :class:`SnapshotCorruptError`. Once the guest runs, the agent steps its clock
        to the host's and reseeds its RNG. Stop the VM (or use it as a context manager) when done.
        """
        refuse_shares([s.tag for s in config.all_shares()], "restore")
        vm = cls(config, workdir_parent=workdir_parent)
        snap = open_snapshot(Path(path))
        try:
            check_file_sizes(snap, config.kernel, config.initramfs)
            vm._start(incoming_fd=snap.state_fd)
            vm._restore(snap, timeout)
        except BaseException:
            vm.stop()
            raise
        finally:
            snap.close()
        return vm

    def _restore(self, snap: OpenSnapshot, timeout: float) -> None:
        assert self.qemu is not None
        check_shape(snap, vm_shape(self.qemu), qemu_version(self._qmp))
        verifier = Verifier(snap, self.config.kernel, self.config.initramfs)
        load_started = time.monotonic_ns()
        try:
            self._load(snap, timeout)
            loaded = time.monotonic_ns()
            self.wait_for_agent(timeout)
        except VzLinuxError:
            verifier.check()  # a bad checksum explains a failed load or a guest that never answered
            raise
        finally:
            with contextlib.suppress(VzLinuxError):
                verifier.check()  # joined on every path: the thread reads the descriptor we close next
        verifier.check()
        before = self.agent.restored()
        now = time.monotonic_ns()
        self.restore_times = RestoreTimes(snap.manifest.id, load_started, loaded, now,
                                          time.time_ns() - before)

    def _load(self, snap: OpenSnapshot, timeout: float) -> None:
        assert self._proc is not None
        try:
            load_state(self._qmp, snap.state_fd, timeout)
        except SnapshotError as e:
            if not _exited(self._proc, 2.0):
                raise
            err = tail(self.workdir / "qemu.stderr", 5).strip() if self.workdir is not None else ""
            raise SnapshotCorruptError(
                f"QEMU could not load snapshot {snap.path} (exit code {self._proc.returncode})"
                + (f": {err}" if err else ""), hint="save it again (templates are rebuilt by themselves)") from e

    def stop(self, timeout: float = 5.0) -> None:
        """Quit QEMU cleanly through QMP, then make sure (terminate/kill); tear down everything."""
        proc, qmp = self._proc, self._qmp
        try:
            if proc is not None and proc.poll() is None and qmp is not None:
                with contextlib.suppress(Exception):  # a dead monitor just means we go straight to kill
                    qmp.settimeout(timeout)
                    qmp.cmd("quit")
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout)
            if qmp is not None:
                # Disconnect now, so the reader task's EOF (QEMU quit) is collected, not logged at exit.
                with contextlib.suppress(Exception):
                    qmp.close()
            if proc is not None:
                terminate(proc, timeout=timeout)
        finally:
            self._qmp = None
            self._client = None
            self._stack.close()

    def __repr__(self) -> str:
        return f"LinuxVm({self.config.kernel}, pid={self.pid})"


def _close_quietly(qmp: Any) -> None:
    with contextlib.suppress(Exception):
        qmp.close()


def _exited(proc: subprocess.Popen[bytes], within: float) -> bool:
    try:
        proc.wait(within)
        return True
    except subprocess.TimeoutExpired:
        return False
