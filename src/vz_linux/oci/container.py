"""The container operations over a VM: host-side preparation, then the guest side through the agent.

Host side (no VM): resolve the image, check the command exists in it (exit 127 before any boot),
validate volumes, resolve the kernel bundle of the chosen profile, and write the container dir
(``config.json``, the bundle's ``crun``, ``state.json``). Guest side (:class:`ContainerVm`): boot a
:class:`~vz_linux.vm.linux_vm.LinuxVm` with the image, the container dir and every volume as virtiofs
shares, run :func:`.guest.prepare_script` once, then ``crun run``/``exec``/``kill`` through the
agent with output streamed back.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..bundle.model import KernelBundle
from ..errors import OciError
from ..fsutil import write_atomic
from ..profiles import KernelProfile
from ..vm.agent_protocol import Stream
from ..vm.linux_vm import LinuxVm, VmConfig, VmShare
from . import guest
from .config import RuntimeConfig
from .image import Rootfs, find_command, prepare_image
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
    same_file_or_copy,
)

Sink = Callable[[bytes], None]
_TAIL = 4096


@dataclass(frozen=True)
class ContainerRequest:
    """What the user asked for on ``vz oci run/create``."""

    image: str
    command: tuple[str, ...] = ()
    env: tuple[str, ...] = ()
    workdir: str | None = None
    volumes: tuple[Volume, ...] = ()
    name: str | None = None


def store_for(cfg: RuntimeConfig) -> ContainerStore:
    return ContainerStore(cfg.containers_dir)


def _profile(cfg: RuntimeConfig) -> KernelProfile:
    return cfg.linux_profile or KernelProfile.developer


def prepare_container(cfg: RuntimeConfig, req: ContainerRequest) -> tuple[ContainerState, KernelBundle]:
    """Everything that can be checked and written on the host, before a VM boots."""
    rootfs: Rootfs = prepare_image(req.image, cfg.images_dir)
    args = req.command or rootfs.defaults.args
    env = merge_env(rootfs.defaults.env, req.env)
    cwd = req.workdir or rootfs.defaults.cwd
    process = ProcessSpec(args=tuple(args), env=env, cwd=cwd)
    find_command(rootfs.path, process.args[0], process.env, process.cwd)
    bundle = cfg.resolve_kernel()
    store = store_for(cfg)
    if req.name is not None:
        store.validate_name(req.name)
    cid = store.new_id()
    cdir = store.create_dir(cid)
    try:
        volumes = [(guest.volume_guest_path(i), v) for i, v in enumerate(req.volumes)]
        spec = runtime_spec(process, root_path=guest.GUEST_ROOTFS,
                            namespaces=namespaces_for(_profile(cfg), cfg.network), volumes=volumes)
        write_atomic(cdir / CONFIG_FILE, (json.dumps(spec, indent=2) + "\n").encode(), mode=PRIVATE_FILE_MODE)
        same_file_or_copy(bundle.oci_runtime, cdir / "crun")
        state = ContainerState(
            id=cid, name=req.name or cid, image=rootfs.image, rootfs=str(rootfs.path),
            profile=_profile(cfg).value, args=process.args, env=process.env, cwd=process.cwd,
            volumes=req.volumes, network=cfg.network, cpus=cfg.cpus, memory_mib=cfg.memory_mib,
        )
        store.write(state)
    except BaseException:
        store.remove(cid)
        raise
    return state, bundle


class _Tee:
    """Streams one output channel to a sink and a log file, keeping a tail for error detection."""

    def __init__(self, sink: Sink | None, log: Path | None) -> None:
        self.sink = sink
        self.file = open(log, "ab") if log is not None else None  # noqa: SIM115 - closed in close()
        self.tail = b""

    def __call__(self, data: bytes) -> None:
        if self.sink is not None:
            self.sink(data)
        if self.file is not None:
            self.file.write(data)
            self.file.flush()
        self.tail = (self.tail + data)[-_TAIL:]

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


class ContainerVm:
    """One booted VM serving one container (context manager: the VM never outlives it)."""

    def __init__(self, cfg: RuntimeConfig, state: ContainerState, bundle: KernelBundle, cdir: Path) -> None:
        self.cfg = cfg
        self.state = state
        self.bundle = bundle
        self.cdir = cdir
        self._stack = contextlib.ExitStack()
        self._vm: LinuxVm | None = None
        # Seconds per phase of the last boot/run (what benchmarks/oci_run.py reports).
        self.timings: dict[str, float] = {}

    def vm_config(self) -> VmConfig:
        shares = [VmShare(guest.IMAGE_TAG, Path(self.state.rootfs)), VmShare(guest.CTL_TAG, self.cdir)]
        shares += [VmShare(guest.volume_tag(i), v.source) for i, v in enumerate(self.state.volumes)]
        return VmConfig.from_bundle(
            self.bundle.root,
            cpus=self.state.cpus,
            memory_mib=self.state.memory_mib,
            network=self.state.network,
            shares=tuple(shares),
            cmdline_extra=tuple(guest.volume_cmdline(i) for i in range(len(self.state.volumes))),
            serial_log=self.cdir / "serial.log",
        )

    def __enter__(self) -> ContainerVm:
        try:
            t0 = time.monotonic()
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

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    @property
    def vm(self) -> LinuxVm:
        if self._vm is None:
            raise OciError("the container's VM is not running")
        return self._vm

    def _exec(self, argv: Sequence[str], on_stdout: Sink, on_stderr: Sink,
              timeout: float | None = None) -> int:
        stream = self.vm.exec_stream(list(argv), timeout=timeout)
        for chunk in stream:
            (on_stderr if chunk.stream is Stream.STDERR else on_stdout)(chunk.data)
        result = stream.result
        assert result is not None
        if result.timed_out:
            raise OciError(f"{argv[0]} did not finish within {timeout:.0f}s and was killed")
        if result.exit_code == 127 and result.error:
            raise OciError(f"the guest could not run {argv[0]}: {result.error}")
        return result.shell_exit_code

    def _collect(self, argv: Sequence[str], timeout: float = 60.0) -> tuple[int, bytes]:
        out = bytearray()
        code = self._exec(argv, out.extend, out.extend, timeout)
        return code, bytes(out)

    def _prepare(self) -> None:
        code, output = self._collect(["/bin/sh", "-c", guest.prepare_script(self.state.cwd)])
        if code != 0:
            raise OciError(f"preparing the container rootfs in the guest failed (exit {code}): "
                           f"{output.decode(errors='replace').strip()[-500:]}")

    def run(self, on_stdout: Sink | None, on_stderr: Sink | None, log: bool = True) -> int:
        """``crun run``: the container's process, output streamed; its exit code."""
        out = _Tee(on_stdout, self.cdir / STDOUT_LOG if log else None)
        err = _Tee(on_stderr, self.cdir / STDERR_LOG if log else None)
        t0 = time.monotonic()
        try:
            code = self._exec(guest.crun_run(self.state.id), out, err, self.cfg.exec_timeout)
            self.timings["crun_run"] = time.monotonic() - t0
        finally:
            out.close()
            err.close()
        return _not_found_is_127(code, err.tail)

    def exec(self, args: Sequence[str], env: Sequence[str], cwd: str | None,
             on_stdout: Sink, on_stderr: Sink) -> int:
        err = _Tee(on_stderr, None)
        code = self._exec(guest.crun_exec(self.state.id, args, env, cwd), on_stdout, err,
                          self.cfg.exec_timeout)
        return _not_found_is_127(code, err.tail)

    def kill(self, signal: str) -> int:
        code, _ = self._collect(guest.crun_kill(self.state.id, signal), timeout=30)
        return code


def _not_found_is_127(code: int, stderr_tail: bytes) -> int:
    return 127 if guest.looks_like_not_found(code, stderr_tail) else code


def run_foreground(cfg: RuntimeConfig, req: ContainerRequest, *, remove: bool,
                   on_stdout: Sink, on_stderr: Sink, timings: dict[str, float] | None = None) -> int:
    """``vz oci run``: boot, run, stream, return the container's exit code.

    ``timings``, when given, receives the seconds spent per phase (host prepare, boot → agent,
    guest prepare, crun run, VM stop).
    """
    t0 = time.monotonic()
    state, bundle = prepare_container(cfg, req)
    host_prepare = time.monotonic() - t0
    store = store_for(cfg)
    cdir = store.dir(state.id)
    started = False
    try:
        with ContainerVm(cfg, state, bundle, cdir) as cvm:
            store.update(state.id, status=Status.running, started=now())
            started = True
            code = cvm.run(on_stdout, on_stderr, log=not remove)
            t_stop = time.monotonic()
        if timings is not None:
            timings.update(host_prepare=host_prepare, **cvm.timings, vm_stop=time.monotonic() - t_stop)
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

