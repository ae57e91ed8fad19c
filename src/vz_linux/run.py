"""The one subprocess wrapper (modelled on mkosi's ``run()``/``spawn()``).

:func:`spawn` is the only place that starts a child; :func:`run` is built on it. So for every child:

* argv is a list, never a shell string; stdin is /dev/null unless given;
* the command is logged shell-quoted at debug level;
* ``env`` is *added* to our environment;
* a missing program becomes :class:`ToolMissingError` ("X not found");
* it runs in its own session with a parent-death signal, and is always terminated (its whole
  process group) and reaped, so no child outlives us even if we are SIGKILLed.

:func:`run` adds the contract of a command run to completion: a failure becomes
:class:`CommandFailedError` naming the command, its exit code or signal and the tail of its stderr.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import os
import shlex
import signal
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from .errors import CommandFailedError, ToolMissingError

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
_PR_SET_THP_DISABLE = 41

Redirect = int | IO[Any] | None


@functools.cache
def libc() -> ctypes.CDLL:
    """The C library, for the few calls Python's os module lacks (prctl, renameat2, KVM ioctls)."""
    return ctypes.CDLL(None, use_errno=True)


def _set_pdeathsig() -> None:
    """In the child, before exec: die with SIGKILL when the parent dies."""
    libc().prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _set_pdeathsig_no_thp() -> None:
    """As :func:`_set_pdeathsig`, and no transparent huge pages for the child (kept across exec)."""
    _set_pdeathsig()
    libc().prctl(_PR_SET_THP_DISABLE, 1, 0, 0, 0)


def _describe_status(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit code {returncode}"


def quote(argv: Sequence[str | os.PathLike[str]]) -> str:
    return shlex.join(str(a) for a in argv)


def _stderr_tail(stderr: object) -> str:
    if not isinstance(stderr, bytes) or not stderr.strip():
        return ""
    last = stderr.decode(errors="replace").strip().splitlines()[-3:]
    return ": " + " | ".join(line.strip() for line in last)


def run(
    argv: Sequence[str | os.PathLike[str]],
    *,
    check: bool = True,
    capture: bool = True,
    input: bytes | None = None,
    stdin: Redirect = None,
    stdout: Redirect = None,
    stderr: Redirect = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run a command to completion (through :func:`spawn`).

    ``capture=True`` (default) keeps the child's stdout/stderr off ours and returns them;
    explicit ``stdout``/``stderr`` override that. ``input`` is written to the child's stdin
    (otherwise stdin is /dev/null unless ``stdin`` is given). After ``timeout`` seconds the child's
    process group is killed and reaped and :class:`CommandFailedError` raised.
    """
    if input is not None:
        if stdin is not None:
            raise ValueError("stdin and input arguments may not both be used")
        stdin = subprocess.PIPE
    elif stdin is None:
        stdin = subprocess.DEVNULL
    out = stdout if stdout is not None else (subprocess.PIPE if capture else None)
    err = stderr if stderr is not None else (subprocess.PIPE if capture else None)
    with spawn(argv, stdin=stdin, stdout=out, stderr=err, env=env, cwd=cwd) as proc:
        try:
            got_out, got_err = proc.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired as e:
            _kill(proc)
            raise CommandFailedError(f"{quote(argv)} timed out after {timeout:.0f}s") from e
    if check and proc.returncode != 0:
        raise CommandFailedError(
            f"{quote(argv)} failed with {_describe_status(proc.returncode)}{_stderr_tail(got_err)}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, got_out, got_err)


def _start(args: list[str], *, stdin: Redirect, stdout: Redirect, stderr: Redirect,
           env: Mapping[str, str] | None, cwd: Path | None, pass_fds: Sequence[int],
           no_thp: bool = False) -> subprocess.Popen[bytes]:
    full_env = None if env is None else {**os.environ, **env}
    try:
        return subprocess.Popen(
            args,
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            env=full_env,
            cwd=cwd,
            pass_fds=tuple(pass_fds),
            preexec_fn=_set_pdeathsig_no_thp if no_thp else _set_pdeathsig,
            start_new_session=True,
        )
    except FileNotFoundError as e:
        if cwd is not None and not cwd.is_dir():
            raise CommandFailedError(f"working directory {cwd} does not exist") from e
        raise ToolMissingError(
            f"{args[0]} not found", hint="run scripts/setup.sh to install the host packages"
        ) from e


@contextlib.contextmanager
def spawn(
    argv: Sequence[str | os.PathLike[str]],
    *,
    stdin: Redirect = subprocess.DEVNULL,
    stdout: Redirect = subprocess.DEVNULL,
    stderr: Redirect = subprocess.DEVNULL,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    pass_fds: Sequence[int] = (),
    terminate_timeout: float = 5.0,
    no_thp: bool = False,
) -> Iterator[subprocess.Popen[bytes]]:
    """Start a child; on exit terminate it (SIGTERM, then SIGKILL), reap it and close its pipes.

    ``no_thp``: the child (and what it execs) gets no transparent huge pages (``PR_SET_THP_DISABLE``):
    a TCG QEMU's guest RAM then grows 4 KiB at a time instead of 2 MiB (docs/vm.md, "Memory").
    """
    args = [str(a) for a in argv]
    log.debug("+ %s", quote(args))
    proc = _start(args, stdin=stdin, stdout=stdout, stderr=stderr, env=env, cwd=cwd, pass_fds=pass_fds,
                  no_thp=no_thp)
    try:
        yield proc
    finally:
        terminate(proc, timeout=terminate_timeout)
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()


def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def _kill(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the child's process group and reap the child."""
    _signal_group(proc, signal.SIGKILL)
    proc.wait()


def terminate(proc: subprocess.Popen[bytes], *, timeout: float = 5.0) -> None:
    """SIGTERM the child's process group, SIGKILL it after ``timeout``, always reap."""
    if proc.poll() is None:
        _signal_group(proc, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=timeout)
    # Also when the leader is gone: others in its group may live on (e.g. a shell's children).
    _kill(proc)
