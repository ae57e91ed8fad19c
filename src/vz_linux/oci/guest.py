"""What the OCI path does inside the VM: share tags, guest paths, and the commands it runs there.

The container's image is shared over virtiofs under the ``rootfs`` tag's sibling
``vz-oci-image`` — not ``rootfs`` itself, because on ``rootfs`` the guest's init switches the
whole VM (agent included) into the share, and the runtime would then depend on the image's own
``sh``/``mount``. Kata Containers does the same: the agent lives in the VM's own userland and mounts
the container rootfs next to it. The init's BusyBox prepares an overlay (lower = the image share,
upper = tmpfs, so the host's image is never written), and the bundle's static ``crun`` — shared
read-only with the container's ``config.json`` under ``vz-oci-ctl`` — runs the container.
Volumes are the init's ``vz-mount-N`` shares, bind-mounted into the container by ``config.json``.
"""

from __future__ import annotations

import json
import posixpath
import shlex
from collections.abc import Sequence

IMAGE_TAG = "vz-oci-image"
CTL_TAG = "vz-oci-ctl"
VOLUME_TAG_PREFIX = "vz-mount-"

GUEST_ROOT = "/run/vz-oci"
GUEST_IMAGE = f"{GUEST_ROOT}/image"
GUEST_CTL = f"{GUEST_ROOT}/ctl"  # host: the container's state dir (config.json, crun)
GUEST_WORK = f"{GUEST_ROOT}/c"  # tmpfs: overlay upper/work and the merged rootfs
GUEST_ROOTFS = f"{GUEST_WORK}/rootfs"
GUEST_EXECS = f"{GUEST_ROOT}/execs"  # pid files of running `crun exec`s
GUEST_CRUN = f"{GUEST_CTL}/crun"
GUEST_AGENT = "/sbin/vz-agent"  # the initramfs's agent: its --in-root mode copies files
CONTAINER_PID_FILE = f"{GUEST_WORK}/pid"  # `crun run --pid-file`: the container's first process
CGROUP_PARENT = "/vz"  # each container's cgroup is /sys/fs/cgroup/vz/<id> in the guest
CGROUP_FS = "/sys/fs/cgroup"
CRUN_STATE = "/run/crun"
# crun exits 1/255 (not 127) when execve finds no such file; its message is how we tell.
CRUN_NOT_FOUND_MARKERS = (b"not found in $PATH", b"executable file `")


def volume_tag(index: int) -> str:
    return f"{VOLUME_TAG_PREFIX}{index}"


def volume_guest_path(index: int) -> str:
    """Where the guest's init mounts share ``vz-mount-N`` when no path is given on the cmdline."""
    return f"/mnt/{volume_tag(index)}"


def volume_cmdline(index: int) -> str:
    return f"vz.mount.{index}={volume_guest_path(index)}"


def prepare_script(cwd: str) -> str:
    """BusyBox sh, run once per VM: mount the shares, build the overlay, make cgroup2 available."""
    q = shlex.quote
    lines = [
        "set -e",
        f"mkdir -p {GUEST_IMAGE} {GUEST_CTL} {GUEST_WORK} {GUEST_EXECS}",
        f"mount -t virtiofs -o ro {IMAGE_TAG} {GUEST_IMAGE}",
        f"mount -t virtiofs -o ro {CTL_TAG} {GUEST_CTL}",
        f"mount -t tmpfs -o mode=0755 vz-oci {GUEST_WORK}",
        f"mkdir -p {GUEST_WORK}/upper {GUEST_WORK}/work {GUEST_ROOTFS}",
        f"mount -t overlay -o lowerdir={GUEST_IMAGE},upperdir={GUEST_WORK}/upper,"
        f"workdir={GUEST_WORK}/work vz-oci-rootfs {GUEST_ROOTFS}",
        # A working directory the image lacks is created, as Docker does for WORKDIR, inside the
        # container's root (resolved there: not through the image's symlinks into the guest).
        " ".join(q(a) for a in (GUEST_AGENT, "--mkdir-in", GUEST_ROOTFS, posixpath.join("/", cwd))),
        # crun needs a cgroup2 hierarchy to decide its cgroup mode, even with cgroups disabled
        # (init normally mounts it already).
        "grep -qw cgroup2 /proc/mounts || mount -t cgroup2 cgroup2 /sys/fs/cgroup 2>/dev/null || true",
        "sync",
        "echo 1 > /proc/sys/vm/drop_caches",
    ]
    return "\n".join(lines) + "\n"


# --- the restore path (docs/oci.md, "Fast start: templates and block images") -------------------
# The image is the VM's first virtio-blk disk: an ext4 built on the host (oci.blockimage), read-only.
IMAGE_DEVICE = "/dev/vda"


def template_setup_script() -> str:
    """BusyBox sh, run once in a container template's guest before it is saved: the guest paths of
    the container, crun (from stdin) at :data:`GUEST_CRUN` — no share: a plain directory in the
    initramfs root — and the tmpfs for the overlay. Everything a restored copy needs but the image.
    The placeholder disk's first blocks, which the kernel read at boot (zeros), are not cached in
    the saved guest: every template's save drops the clean page cache first
    (:func:`vz_linux.vm.template.zero_free_memory`), so a restored copy's mount reads the image."""
    crun = shlex.quote(GUEST_CRUN)
    lines = [
        "set -e",
        f"mkdir -p {GUEST_IMAGE} {GUEST_CTL} {GUEST_WORK} {GUEST_EXECS}",
        f"cat > {crun}.part",
        f"chmod 0755 {crun}.part",
        f"mv {crun}.part {crun}",
        f"mount -t tmpfs -o mode=0755 vz-oci {GUEST_WORK}",
        f"mkdir -p {GUEST_WORK}/upper {GUEST_WORK}/work {GUEST_ROOTFS}",
        "grep -qw cgroup2 /proc/mounts || mount -t cgroup2 cgroup2 /sys/fs/cgroup 2>/dev/null || true",
    ]
    return "\n".join(lines) + "\n"


def block_prepare(cwd: str, disk: str = IMAGE_DEVICE) -> list[str]:
    """The agent's ``--oci-prepare`` (guest/agent/mounts.c), once per restored VM, ``config.json`` on
    its stdin: the image ``disk`` mounted read-only, the overlay on it (upper on the template's tmpfs),
    ``cwd`` made inside the container's root (resolved there: the image's symlinks cannot point it
    elsewhere). No shell, no BusyBox: each fork+exec costs tens of ms in a just-restored guest under
    TCG. The template dropped the placeholder's cached blocks before it was saved
    (:func:`vz_linux.vm.template.zero_free_memory`); should stale blocks show anyway, the agent drops the page
    cache and retries the mount (docs/oci.md)."""
    return [GUEST_AGENT, "--oci-prepare", f"{GUEST_CTL}/config.json", disk, GUEST_IMAGE, GUEST_WORK, GUEST_ROOTFS,
            posixpath.join("/", cwd)]


def cgroup_path(container_id: str) -> str:
    """The container's cgroup (``linux.cgroupsPath``), relative to the guest's cgroup2 mount."""
    return f"{CGROUP_PARENT}/{container_id}"


def crun_argv(*args: str) -> list[str]:
    # cgroupfs: crun puts the container's processes (not itself) into linux.cgroupsPath and removes
    # the cgroup when the container ends; `crun exec` joins it.
    return [GUEST_CRUN, f"--root={CRUN_STATE}", "--cgroup-manager=cgroupfs", *args]


def crun_run(container_id: str) -> list[str]:
    # --no-pivot: the VM's root is the initramfs (rootfs), which pivot_root(2) refuses to move;
    # crun then moves the container root over / and chroots, in the container's mount namespace.
    return crun_argv("run", "--no-pivot", "--pid-file", CONTAINER_PID_FILE, "--bundle", GUEST_CTL, container_id)


def in_root(action: str, path: str) -> list[str]:
    """``vz-agent --in-root ROOT --extract|--create PATH`` (guest/agent/files.c). ROOT is the running
    container's own root (``/proc/PID/root``: its volumes are mounts there), else the prepared
    rootfs of a container that has not started."""
    script = ('r=$1; if p=$(cat "$2" 2>/dev/null) && [ -n "$p" ] && [ -d "/proc/$p/root/" ]; then '
              'r=/proc/$p/root; fi; exec "$3" --in-root "$r" "$4" "$5"')
    return ["/bin/sh", "-c", script, "vz-cp", GUEST_ROOTFS, CONTAINER_PID_FILE, GUEST_AGENT, action, path]


def stats_script(container_id: str) -> str:
    """BusyBox sh printing ``key value`` lines about the container's cgroup (parsed, bounded, by
    :mod:`.stats` on the host). The kernels have no memory controller (CONFIG_MEMCG is off in both
    profiles): without ``memory.current`` the container's memory is the sum of its processes' VmRSS."""
    cg = shlex.quote(f"{CGROUP_FS}{cgroup_path(container_id)}")
    return "\n".join([
        f"cg={cg}",
        '[ -d "$cg" ] || { echo "cgroup none"; exit 0; }',
        'echo "cgroup present"',
        'while read -r k v; do echo "cpu.$k $v"; done < "$cg/cpu.stat"',
        '[ -r "$cg/memory.current" ] && read -r m < "$cg/memory.current" && echo "memory.current $m"',
        '[ -r "$cg/pids.current" ] && read -r n < "$cg/pids.current" && echo "pids.current $n"',
        "rss=0; procs=0",
        'while read -r p; do',
        '  while read -r k v u; do',
        '    [ "$k" = VmRSS: ] && rss=$((rss + v)) && procs=$((procs + 1)) && break',
        '  done 2>/dev/null < "/proc/$p/status"',
        'done < "$cg/cgroup.procs"',
        'echo "rss.kib $rss"; echo "rss.procs $procs"',
    ]) + "\n"


def exec_pid_file(name: str) -> str:
    return f"{GUEST_EXECS}/{name}.pid"


def crun_exec(container_id: str, args: Sequence[str], env: Sequence[str], cwd: str | None,
              pid_file: str) -> list[str]:
    """``crun exec``, recording its process in ``pid_file`` while it runs. That process has a
    session of its own, so killing crun (a timeout, a cancelled exec) leaves it running:
    :func:`kill_exec` stops it through the pid file. A shell removes the file afterwards."""
    opts: list[str] = ["--pid-file", pid_file]
    for item in env:
        opts += ["--env", item]
    if cwd:
        opts += ["--cwd", cwd]
    crun = crun_argv("exec", *opts, container_id, *args)
    return ["/bin/sh", "-c", 'f=$1; shift; "$@"; rc=$?; rm -f "$f"; exit $rc', "vz-exec", pid_file, *crun]


def kill_exec(pid_file: str) -> str:
    """BusyBox sh: SIGKILL the process group of the exec recorded in ``pid_file``, remove the file."""
    f = shlex.quote(pid_file)
    # Field 5 of /proc/PID/stat is the process group; the name before it may hold spaces.
    return (f'p=$(cat {f} 2>/dev/null) && read -r s < /proc/"$p"/stat && s=${{s##*) }} && set -- $s && '
            f'kill -9 -"$3" "$p"; rm -f {f}')


def running_pid(state_json: bytes) -> int | None:
    """The pid in ``crun state`` output when the container is running (bounded, checked: it comes
    from the guest)."""
    try:
        state = json.loads(state_json[:65536])
    except ValueError:
        return None
    pid = state.get("pid") if isinstance(state, dict) else None
    if state.get("status") != "running" or not isinstance(pid, int) or not 1 <= pid < (1 << 22):
        return None
    return pid


def crun_kill(container_id: str, signal: str) -> list[str]:
    return crun_argv("kill", container_id, signal)


def looks_like_not_found(exit_code: int, stderr_tail: bytes) -> bool:
    # `crun run` exits 1, `crun exec` 255 when execve fails.
    return exit_code in (1, 255) and any(m in stderr_tail for m in CRUN_NOT_FOUND_MARKERS)
