"""The container operations over a VM: host-side preparation, then the guest side through the agent.

Host side (no VM): resolve the image, check the command exists in it (exit 127 before any boot),
validate volumes, resolve the kernel bundle of the chosen profile, and write the container dir
(``config.json``, its own copy of the bundle's ``crun``, ``state.json``). Guest side
(:class:`ContainerVm`): boot a :class:`~vz_linux.vm.linux_vm.LinuxVm` with the image, the container
dir and every volume as virtiofs shares — the image, the container dir and ``:ro`` volumes read-only
on the host (docs/security.md) — run :func:`.guest.prepare_script` once, then ``crun run``/``exec``/
``kill`` through the agent with output streamed back and logged to size-capped files.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import secrets
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..bundle.model import KernelBundle
from ..errors import OciError, VzLinuxError
from ..fsutil import publish_file, write_atomic
from ..hashing import sha256_bytes, sha256_text
from ..profiles import KernelProfile
from ..vm.agent_client import ExecControl
from ..vm.agent_protocol import Stream
from ..vm.guest_log import CappedLog
from ..vm.linux_vm import LinuxVm, VmConfig, VmShare
from ..vm.port_forward import ForwardSpec, PortForwarder
from ..vm.qemu import Disk
from ..vm.template import restore_from_template
from . import guest
from .blockimage import ensure_block_image, placeholder
from .config import RuntimeConfig
from .image import Rootfs, find_command
from .pull import PullOptions, prepare
from .spec import ProcessSpec, Volume, merge_env, namespaces_for, runtime_spec
from .state import (
    CONFIG_FILE,
    PRIVATE_FILE_MODE,
    STDERR_LOG,
    STDOUT_LOG,
    ContainerState,
    ContainerStore,
    Status,
    now,
)

log = logging.getLogger(__name__)
Sink = Callable[[bytes], None]
OnStarted = Callable[[ExecControl], None]
# seconds a forward or an exec waits for `crun run` to have started the container's process (TCG, loaded host)
_START_WAIT = 60.0
_TAIL = 4096
CONTAINER_LOG_LIMIT = 8 << 20  # bytes per file of stdout.log / stderr.log, which keep two (docs/oci.md)
_COLLECT_LIMIT = 1 << 20  # output kept of the VM-side helper commands (prepare, crun kill)


@dataclass(frozen=True)
class ContainerRequest:
    """What the user asked for on ``vz oci run/create``."""

    image: str
    command: tuple[str, ...] = ()
    env: tuple[str, ...] = ()
    workdir: str | None = None
    volumes: tuple[Volume, ...] = ()
    name: str | None = None
    pull: PullOptions = field(default_factory=PullOptions)  # for a registry IMAGE: --pull, --tls-verify, platform overrides
    ports: tuple[ForwardSpec, ...] = ()  # -p, host side bound by whoever owns the VM


@dataclass(frozen=True)
class Attach:
    """How the caller is attached to a container process: ``tty`` runs it on a guest terminal
    (``winsize`` rows, columns), ``interactive`` keeps its stdin open for the caller, and
    ``on_started`` gets the running stream (to forward stdin and resizes; closing it kills it)."""

    tty: bool = False
    interactive: bool = False
    winsize: tuple[int, int] | None = None
    on_started: OnStarted | None = None


DETACHED = Attach()


def store_for(cfg: RuntimeConfig) -> ContainerStore:
    return ContainerStore(cfg.containers_dir)


def _profile(cfg: RuntimeConfig) -> KernelProfile:
    return cfg.linux_profile or KernelProfile.developer


def prepare_container(cfg: RuntimeConfig, req: ContainerRequest) -> tuple[ContainerState, KernelBundle]:
    """Everything that can be checked and written on the host, before a VM boots."""
    resolve_kernel = functools.cache(cfg.resolve_kernel)  # asked for early only by a registry IMAGE
    rootfs: Rootfs = prepare(req.image, store=cfg.image_store(), images_dir=cfg.images_dir, opts=req.pull,
                             guest=lambda: resolve_kernel().metadata.arch)
    args = req.command or rootfs.defaults.args
    env = merge_env(rootfs.defaults.env, req.env)
    cwd = req.workdir or rootfs.defaults.cwd
    process = ProcessSpec(args=tuple(args), env=env, cwd=cwd)
    find_command(rootfs.path, process.args[0], process.env, process.cwd)
    bundle = resolve_kernel()
    store = store_for(cfg)
    if req.name is not None:
        store.validate_name(req.name)
    cid = store.new_id()
    cdir = store.create_dir(cid)
    try:
        volumes = [(guest.volume_guest_path(i), v) for i, v in enumerate(req.volumes)]
        spec = runtime_spec(process, root_path=guest.GUEST_ROOTFS,
                            namespaces=namespaces_for(_profile(cfg), cfg.network), volumes=volumes,
                            cgroups_path=guest.cgroup_path(cid))
        write_atomic(cdir / CONFIG_FILE, (json.dumps(spec, indent=2) + "\n").encode(), mode=PRIVATE_FILE_MODE)
        # A copy, never a link: the container dir is shared with the guest (read-only, but a link
        # would still tie every container, and the install's checksum, to one inode).
        with publish_file(cdir / "crun", mode=0o755) as tmp:
            shutil.copyfile(bundle.oci_runtime, tmp)
        state = ContainerState(
            id=cid, name=req.name or cid, image=rootfs.image, rootfs=str(rootfs.path),
            profile=_profile(cfg).value, args=process.args, env=process.env, cwd=process.cwd,
            volumes=req.volumes, ports=req.ports, network=cfg.network, cpus=cfg.cpus, memory_mib=cfg.memory_mib,
            image_digest=rootfs.digest,
        )
        store.write(state)
    except BaseException:
        store.remove(cid)
        raise
    return state, bundle


class _Tee:
    """Streams one output channel to a sink and a size-capped log, keeping a tail for error detection."""

    def __init__(self, sink: Sink | None, log: Path | None) -> None:
        self.sink = sink
        self.file = CappedLog(log, CONTAINER_LOG_LIMIT) if log is not None else None
        self.tail = b""

    def __call__(self, data: bytes) -> None:
        if self.sink is not None:
            self.sink(data)
        if self.file is not None:
            self.file.write(data)
        self.tail = (self.tail + data)[-_TAIL:]

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


class ContainerVm:
    """One VM serving one container (context manager: the VM never outlives it). ``cold=False``:
    restored from the container template of its shape with the image on a block device
    (docs/oci.md, "Fast start"), unless volumes need virtiofs; else booted with virtiofs shares."""

    def __init__(self, cfg: RuntimeConfig, state: ContainerState, bundle: KernelBundle, cdir: Path,
                 *, cold: bool = True) -> None:
        self.cfg = cfg
        self.state = state
        self.bundle = bundle
        self.cdir = cdir
        self.cold = cold
        self.restored = False  # the VM came from a template, the image from a block device
        self._stack = contextlib.ExitStack()
        self._vm: LinuxVm | None = None
        # Seconds per phase of the last boot/run (what benchmarks/oci_run.py reports).
        self.timings: dict[str, float] = {}
        self._netns: str | None = None
        self._pid: int | None = None

    def vm_config(self) -> VmConfig:
        # Read-only on the host, not just by the guest's mount flags: a guest root can remount.
        shares = [VmShare(guest.IMAGE_TAG, Path(self.state.rootfs), read_only=True),
                  VmShare(guest.CTL_TAG, self.cdir, read_only=True)]
        shares += [VmShare(guest.volume_tag(i), v.source, read_only=v.read_only)
                   for i, v in enumerate(self.state.volumes)]
        return VmConfig.from_bundle(
            self.bundle.root,
            cpus=self.state.cpus,
            memory_mib=self.state.memory_mib,
            network=self.state.network,
            shares=tuple(shares),
            cmdline_extra=tuple(guest.volume_cmdline(i) for i in range(len(self.state.volumes))),
            serial_log=self.cdir / "serial.log",
        )

    def block_vm_config(self, disk: Path) -> VmConfig:
        """The restore path's VM: no shares, ``disk`` (the image, or a template's placeholder) as
        /dev/vda, read-only on the host; swappable: a template's disk stands for any of its size."""
        return VmConfig.from_bundle(
            self.bundle.root, cpus=self.state.cpus, memory_mib=self.state.memory_mib,
            network=self.state.network, disks=(Disk(disk, read_only=True, swappable=True),),
            serial_log=self.cdir / "serial.log",
        )

    def _from_template(self) -> bool:
        if self.cold:
            return False
        if self.state.volumes:
            log.info("booting cold: volumes (-v) need virtiofs shares, which block snapshots")
            return False
        return True

    def __enter__(self) -> ContainerVm:
        try:
            t0 = time.monotonic()
            if self._from_template():
                self._vm = self._stack.enter_context(self._restore())
                t1 = time.monotonic()
                self._prepare_block()
            else:
                self._vm = self._stack.enter_context(LinuxVm(self.vm_config()))
                self._vm.wait_for_agent(self.cfg.agent_ready_timeout)
                t1 = time.monotonic()
                self._prepare()
            t2 = time.monotonic()
            self.timings.update(boot_to_agent=t1 - t0, guest_prepare=t2 - t1)
        except BaseException:
            self._stack.close()
            raise
        return self

    def _restore(self) -> LinuxVm:
        t0 = time.monotonic()
        image = ensure_block_image(Path(self.state.rootfs), self.state.image_digest)
        self.timings["block_image"] = time.monotonic() - t0
        meta = self.bundle.metadata
        vm = restore_from_template(
            self.block_vm_config(image.path), timeout=self.cfg.agent_ready_timeout,
            known_sha256={self.bundle.kernel: meta.sha256_vmlinux, self.bundle.initramfs: meta.sha256_initramfs},
            make_config=self.block_vm_config(placeholder(image.disk_bytes)), setup=self._setup_template,
            inputs={"crun": meta.oci_runtime.sha256, "setup": sha256_text(guest.template_setup_script())})
        self.restored = True
        return vm

    def _setup_template(self, vm: LinuxVm) -> None:
        """Make a container template's guest ready for any container but its image (crun copied in)."""
        crun = self.bundle.oci_runtime.read_bytes()
        if sha256_bytes(crun) != self.bundle.metadata.oci_runtime.sha256:
            raise OciError(f"{self.bundle.oci_runtime} does not match its bundle's recorded sha256",
                           hint="reinstall the bundle")
        r = vm.agent.exec_collect(["/bin/sh", "-c", guest.template_setup_script()], stdin=crun, timeout=120,
                                  max_output=_COLLECT_LIMIT)
        if not r.ok:
            raise OciError(f"preparing the container template's guest failed (exit {r.exit_code}): "
                           f"{(r.stdout + r.stderr).decode(errors='replace').strip()[-500:]}")

    def _prepare_block(self) -> None:
        config = (self.cdir / CONFIG_FILE).read_bytes()
        code, output = self._collect(guest.block_prepare(self.state.cwd), stdin=config)
        if code != 0:
            raise OciError(f"mounting the container image's block device in the guest failed (exit {code}): "
                           f"{output.decode(errors='replace').strip()[-500:]}")

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    @property
    def vm(self) -> LinuxVm:
        if self._vm is None:
            raise OciError("the container's VM is not running")
        return self._vm

    def _exec(self, argv: Sequence[str], on_stdout: Sink, on_stderr: Sink,
              timeout: float | None = None, attach: Attach = DETACHED) -> int:
        # The stream is closed on any exit: a sink that fails (its reader went away) or a
        # cancellation kills the command in the guest instead of leaving it running.
        # With a terminal, crun runs on the agent's PTY with process.terminal=false: the container
        # process inherits it as stdin/stdout/stderr and controlling terminal (docs/oci.md).
        with self.vm.agent.exec_stream(list(argv), timeout=timeout, tty=attach.tty, winsize=attach.winsize,
                                       close_stdin=not attach.interactive) as stream:
            if attach.on_started is not None:
                attach.on_started(stream)
            for chunk in stream:
                (on_stderr if chunk.stream is Stream.STDERR else on_stdout)(chunk.data)
            result = stream.result
        assert result is not None
        return self._exit_code(argv, result.timed_out, result.exit_code, result.error,
                               result.shell_exit_code, timeout)

    @staticmethod
    def _exit_code(argv: Sequence[str], timed_out: bool, exit_code: int | None, error: str | None,
                   shell_exit_code: int, timeout: float | None) -> int:
        if timed_out:
            raise OciError(f"{argv[0]} did not finish within {timeout:.0f}s and was killed")
        if exit_code == 127 and error:
            raise OciError(f"the guest could not run {argv[0]}: {error}")
        return shell_exit_code

    def _collect(self, argv: Sequence[str], timeout: float = 60.0, stdin: bytes | None = None) -> tuple[int, bytes]:
        r = self.vm.agent.exec_collect(list(argv), stdin=stdin, timeout=timeout, max_output=_COLLECT_LIMIT)
        code = self._exit_code(argv, r.timed_out, r.exit_code, r.error, r.shell_exit_code, timeout)
        return code, r.stdout + r.stderr

    def _prepare(self) -> None:
        code, output = self._collect(["/bin/sh", "-c", guest.prepare_script(self.state.cwd)])
        if code != 0:
            raise OciError(f"preparing the container rootfs in the guest failed (exit {code}): "
                           f"{output.decode(errors='replace').strip()[-500:]}")

    def run(self, on_stdout: Sink | None, on_stderr: Sink | None, log: bool = True,
            attach: Attach = DETACHED) -> int:
        """``crun run``: the container's process, output streamed; its exit code."""
        out = _Tee(on_stdout, self.cdir / STDOUT_LOG if log else None)
        err = _Tee(on_stderr, self.cdir / STDERR_LOG if log else None)
        t0 = time.monotonic()
        try:
            code = self._exec(guest.crun_run(self.state.id), out, err, self.cfg.exec_timeout, attach)
            self.timings["crun_run"] = time.monotonic() - t0
        finally:
            out.close()
            err.close()
        return _not_found_is_127(code, err.tail)

    def exec(self, args: Sequence[str], env: Sequence[str], cwd: str | None,
             on_stdout: Sink, on_stderr: Sink, attach: Attach = DETACHED) -> int:
        """``crun exec``; ``attach.on_started`` gets the stream (closing it kills the command)."""
        err = _Tee(on_stderr, None)
        pid_file = guest.exec_pid_file(secrets.token_hex(8))
        try:
            code = self._exec(guest.crun_exec(self.state.id, args, env, cwd, pid_file), on_stdout, err,
                              self.cfg.exec_timeout, attach)
        except BaseException:
            self._kill_exec(pid_file)
            raise
        return _not_found_is_127(code, err.tail)

    def _kill_exec(self, pid_file: str) -> None:
        """Stop an exec's process that outlived crun (cancelled, timed out); best effort: the
        agent may be the thing that failed."""
        with contextlib.suppress(VzLinuxError):
            self._collect(["/bin/sh", "-c", guest.kill_exec(pid_file)], timeout=30)

    def netns_path(self) -> str | None:
        """The container's network namespace file in the guest, for port forwards (None: it shares
        the VM's, ``--net``). Waits a little for crun to have started the process; remembered."""
        if self.state.network:
            return None
        if self._netns is None:
            pid = self.running_pid(f"container {self.state.name} has no running process to forward ports to")
            self._netns = f"/proc/{pid}/ns/net"
        return self._netns

    def running_pid(self, error: str, ended: threading.Event | None = None) -> int:
        """The container's first process once ``crun run`` has started it (``start`` returns before
        the guest's crun has written its state; an exec then would find no container). Waits a
        little; remembered; ``error`` if it never runs or ``ended`` is set first."""
        if self._pid is not None:
            return self._pid
        deadline = time.monotonic() + _START_WAIT
        while True:
            r = self.vm.agent.exec_collect(guest.crun_argv("state", self.state.id), timeout=30,
                                           max_output=_COLLECT_LIMIT)
            pid = guest.running_pid(r.stdout) if r.ok else None
            if pid is not None:
                self._pid = pid
                return pid
            if time.monotonic() > deadline or (ended is not None and ended.is_set()):
                raise OciError(error)
            time.sleep(0.2)

    def kill(self, signal: str) -> int:
        code, _ = self._collect(guest.crun_kill(self.state.id, signal), timeout=30)
        return code


def _not_found_is_127(code: int, stderr_tail: bytes) -> int:
    return 127 if guest.looks_like_not_found(code, stderr_tail) else code


def run_foreground(cfg: RuntimeConfig, req: ContainerRequest, *, remove: bool,
                   on_stdout: Sink, on_stderr: Sink, timings: dict[str, float] | None = None,
                   attach: Attach = DETACHED, cold: bool = False) -> int:
    """``vz oci run``: start the VM (restored from its container template, ``cold``: booted), run,
    stream, return the container's exit code.

    ``timings``, when given, receives the seconds spent per phase (host prepare, block image, boot or
    restore → agent, guest prepare, crun run, VM stop) and ``restored`` (1.0 when from a template).
    """
    t0 = time.monotonic()
    forwarder = PortForwarder(req.ports)
    forwarder.bind()  # a port in use fails here, before anything is written or booted
    try:
        return _run_foreground(cfg, req, remove, on_stdout, on_stderr, timings, attach, forwarder, t0, cold)
    finally:
        forwarder.close()


def _run_foreground(cfg: RuntimeConfig, req: ContainerRequest, remove: bool, on_stdout: Sink,
                    on_stderr: Sink, timings: dict[str, float] | None, attach: Attach,
                    forwarder: PortForwarder, t0: float, cold: bool) -> int:
    state, bundle = prepare_container(cfg, req)
    host_prepare = time.monotonic() - t0
    store = store_for(cfg)
    cdir = store.dir(state.id)
    started = False
    try:
        with ContainerVm(cfg, state, bundle, cdir, cold=cold) as cvm:
            store.update(state.id, status=Status.running, started=now())
            started = True
            forwarder.start(cvm.vm.agent, cvm.netns_path)
            code = cvm.run(on_stdout, on_stderr, log=not remove, attach=attach)
            t_stop = time.monotonic()
        if timings is not None:
            timings.update(host_prepare=host_prepare, **cvm.timings, vm_stop=time.monotonic() - t_stop,
                           restored=float(cvm.restored))
        store.update(state.id, status=Status.exited, exit_code=code, finished=now())
        return code
    except BaseException as e:
        if started and not remove:
            with contextlib.suppress(Exception):
                store.update(state.id, status=Status.failed, error=str(e) or type(e).__name__, finished=now())
        else:
            remove = True  # it never ran: leave no record behind
        raise
    finally:
        if remove:
            store.remove(state.id)

