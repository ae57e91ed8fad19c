"""The one subprocess wrapper (modelled on mkosi's ``run()``/``spawn()``).

* argv is a list, never a shell string; stdin is /dev/null unless given;
* the command is logged shell-quoted at debug level;
* a missing program becomes :class:`ToolMissingError` ("X not found");
* a failure becomes :class:`CommandFailedError` naming the command, its exit code or signal
  and the tail of its stderr;
* children started with :func:`spawn` get a parent-death signal and are always reaped, so no
  helper outlives us even if we are SIGKILLed.
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

log = logging.getLogger("vz_linux.run")

_PR_SET_PDEATHSIG = 1


@functools.cache
def libc() -> ctypes.CDLL:
    """The C library, for the few calls Python's os module lacks (prctl, renameat2, KVM ioctls)."""
    return ctypes.CDLL(None, use_errno=True)


def _set_pdeathsig() -> None:
    """In the child, before exec: die with SIGKILL when the parent dies."""
    libc().prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _describe_status(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit code {returncode}"


def quote(argv: Sequence[str | os.PathLike[str]]) -> str:
    return shlex.join(str(a) for a in argv)


def run(
    argv: Sequence[str | os.PathLike[str]],
    *,
    check: bool = True,
    capture: bool = True,
    input: bytes | None = None,
    stdin: int | IO[Any] | None = None,
    stdout: int | IO[Any] | None = None,
    stderr: int | IO[Any] | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run a command to completion.

    ``capture=True`` (default) keeps the child's stdout/stderr off ours and returns them;
    explicit ``stdout``/``stderr`` override that. ``env`` is *added* to our environment.
    """
    args = [str(a) for a in argv]
    log.debug("+ %s", quote(args))
    full_env = None if env is None else {**os.environ, **env}
    if stdin is None and input is None:
        stdin = subprocess.DEVNULL
    out = stdout if stdout is not None else (subprocess.PIPE if capture else None)
    err = stderr if stderr is not None else (subprocess.PIPE if capture else None)
    try:
        proc = subprocess.run(
            args,
            input=input,
            stdin=stdin,
            stdout=out,
            stderr=err,
            env=full_env,
            cwd=cwd,
            timeout=timeout,
            preexec_fn=_set_pdeathsig,
            check=False,
        )
    except FileNotFoundError as e:
        if cwd is not None and not cwd.is_dir():
            raise CommandFailedError(f"working directory {cwd} does not exist") from e
        raise ToolMissingError(
            f"{args[0]} not found", hint="run scripts/setup.sh to install the host packages"
        ) from e
    except subprocess.TimeoutExpired as e:
        raise CommandFailedError(f"{quote(args)} timed out after {timeout:.0f}s") from e
    if check and proc.returncode != 0:
        tail = ""
        if isinstance(proc.stderr, bytes) and proc.stderr.strip():
            last = proc.stderr.decode(errors="replace").strip().splitlines()[-3:]
            tail = ": " + " | ".join(line.strip() for line in last)
        raise CommandFailedError(f"{quote(args)} failed with {_describe_status(proc.returncode)}{tail}")
    return proc


@contextlib.contextmanager
def spawn(
    argv: Sequence[str | os.PathLike[str]],
    *,
    stdin: int | IO[Any] | None = subprocess.DEVNULL,
    stdout: int | IO[Any] | None = subprocess.DEVNULL,
    stderr: int | IO[Any] | None = subprocess.DEVNULL,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    pass_fds: Sequence[int] = (),
    terminate_timeout: float = 5.0,
) -> Iterator[subprocess.Popen[bytes]]:
    """Start a long-running helper; on exit terminate it (SIGTERM, then SIGKILL) and reap it."""
    args = [str(a) for a in argv]
    log.debug("& %s", quote(args))
    full_env = None if env is None else {**os.environ, **env}
    try:
        proc = subprocess.Popen(
            args,
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            env=full_env,
            cwd=cwd,
            pass_fds=tuple(pass_fds),
            preexec_fn=_set_pdeathsig,
            start_new_session=True,
        )
    except FileNotFoundError as e:
        raise ToolMissingError(
            f"{args[0]} not found", hint="run scripts/setup.sh to install the host packages"
        ) from e
    try:
        yield proc
    finally:
        terminate(proc, timeout=terminate_timeout)


def terminate(proc: subprocess.Popen[bytes], *, timeout: float = 5.0) -> None:
    """SIGTERM the child's process group, SIGKILL it after ``timeout``, always reap."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    # The leader may be gone while others in its group live on (e.g. a shell's children).
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def which(program: str) -> str | None:
    import shutil

    return shutil.which(program)
