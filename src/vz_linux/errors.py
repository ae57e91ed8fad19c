"""The one error hierarchy of vz-linux.

Every expected failure is a subclass of :class:`VzLinuxError` carrying a distinct
``exit_code`` and a message that says what went wrong and what to do next. The
library raises them; only the CLI turns them into one line on stderr and an exit
code. Anything else that escapes is a bug and is shown with its traceback.
"""

from __future__ import annotations


class VzLinuxError(Exception):
    """Base class. ``exit_code`` is what the CLI exits with."""

    exit_code: int = 1
    hint: str | None = None

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        if hint is not None:
            self.hint = hint

    def one_line(self) -> str:
        msg = str(self)
        return f"{msg} ({self.hint})" if self.hint else msg


# --- bundle / selection (docs/selection.md) ---------------------------------------------------
class MissingArtifactsError(VzLinuxError):
    exit_code = 10


class AgentVersionMismatchError(VzLinuxError):
    exit_code = 11


class ProtocolRevisionMissingError(VzLinuxError):
    exit_code = 12


class ProtocolRevisionMismatchError(VzLinuxError):
    exit_code = 13


class ChecksumMismatchError(VzLinuxError):
    exit_code = 14


class MissingCapabilitiesError(VzLinuxError):
    exit_code = 15


class ProfileMismatchError(VzLinuxError):
    exit_code = 16


class NoHomeDirectoryError(VzLinuxError):
    exit_code = 17


class InvalidConfigError(VzLinuxError):
    """Bad user input: unknown profile/capability/arch name, malformed metadata, bad option."""

    exit_code = 18


class InvalidMetadataError(InvalidConfigError):
    """version.json missing fields, wrong types, not JSON."""

    exit_code = 19


class UnsafeBundleError(VzLinuxError):
    """A bundle file is a symlink, device or other non-regular file."""

    exit_code = 20


class InstallError(VzLinuxError):
    """The install directory cannot be created or written."""

    exit_code = 21


# --- build (docs/profiles.md, docs/guest.md) -------------------------------------------------
class KernelSourceError(VzLinuxError):
    exit_code = 30


class UnknownKernelPinError(KernelSourceError):
    """``--kernel-pin`` / ``KERNEL_PIN`` names no linux/kernel-version*.mk."""

    exit_code = 22


class KconfigCheckError(VzLinuxError):
    """A fragment line did not hold after olddefconfig (and is not allow-listed)."""

    exit_code = 31


class CapabilityContractError(VzLinuxError):
    """The derived capabilities miss the profile's contract."""

    exit_code = 32


class BuildError(VzLinuxError):
    exit_code = 33


class NotReproducibleError(BuildError):
    """Two builds of the same inputs gave different bytes (docs/reproducible.md)."""

    exit_code = 23


class InitramfsCompressionError(BuildError):
    """An initramfs compression that is unknown, or that the bundle's kernel cannot unpack
    (docs/guest.md, "Initramfs")."""

    exit_code = 94


class BuildRootError(BuildError):
    """The isolated build root (mmdebstrap + bubblewrap) could not be made or entered
    (docs/reproducible.md, "Hermetic builds")."""

    exit_code = 24


class ToolMissingError(VzLinuxError):
    """A required host program is not installed."""

    exit_code = 34


class CommandFailedError(VzLinuxError):
    """An external command exited non-zero (or was killed)."""

    exit_code = 35


class InsecureDownloadError(KernelSourceError):
    """A source URL or a redirect was refused: plain http, an https→http downgrade, another scheme."""

    exit_code = 36


class DownloadTooLargeError(KernelSourceError):
    """A download announced or sent more than its size cap."""

    exit_code = 37


class DownloadTimeoutError(KernelSourceError):
    """A download did not finish within its total-time cap."""

    exit_code = 38


# --- guest / VM (docs/agent.md, docs/vm.md) --------------------------------------------------
class AgentError(VzLinuxError):
    """The guest agent replied with an error, or the channel broke."""

    exit_code = 40


class AgentTimeoutError(AgentError):
    exit_code = 41


class VmError(VzLinuxError):
    exit_code = 42


class GuestBootError(VmError):
    """The guest panicked, hung or exited before the agent answered."""

    exit_code = 43


class CapabilityProbeError(VmError):
    """A declared capability failed its live probe in the guest."""

    exit_code = 44


class ProbeInputError(VmError):
    """The host could not prepare what the live probes need (the btrfs image, the virtiofs token)."""

    exit_code = 25


class AgentGoneError(AgentError):
    """The guest agent went away: its channel closed, a restarted agent answered, or it stopped
    answering keepalives. Requests it was serving are lost."""

    exit_code = 45
    hint = "a process in the guest may have killed it, e.g. `kill -9 -1` as root: see docs/security.md"


class AgentProtocolError(AgentError):
    """The agent sent something the protocol does not allow: broken framing, a frame whose values are
    out of range, or more output than it was allowed to queue (docs/PROTOCOL.md)."""

    exit_code = 46


class ExecOutputLimitError(AgentError):
    """A collected exec printed more than the collector keeps (the command was killed)."""

    exit_code = 47
    hint = "stream the output instead (exec_stream) or raise max_output"


# --- snapshots and templates (docs/vm.md, "Snapshots and templates") ---------------------------
class SnapshotError(VmError):
    """Saving a VM failed (QEMU's migration to the state file failed or timed out)."""

    exit_code = 80


class SnapshotMismatchError(SnapshotError):
    """A snapshot was made from another bundle, QEMU or VM shape than the one asked to restore it."""

    exit_code = 81


class SnapshotCorruptError(SnapshotError):
    """A snapshot is missing, truncated, fails its checksum, or QEMU could not load it."""

    exit_code = 82


class SnapshotUnsupportedError(SnapshotError):
    """The VM cannot be saved or restored: virtiofs shares block migration."""

    exit_code = 83


class TemplateError(SnapshotError):
    """A template could not be made or kept in the cache, or a rebuilt one still failed to restore."""

    exit_code = 84


# --- persistent Linux VMs (docs/vm.md, "Persistent VMs") --------------------------------------
class VmNotFoundError(VmError):
    """No descriptor NAME.linux.json in the VM directory."""

    exit_code = 85


class VmDiskError(VmError):
    """The VM's disk cannot be made or booted: mke2fs failed, the rootfs does not fit, no ext4 on it."""

    exit_code = 86


class VmExistsError(VmError):
    """``init --rootfs/--image`` over a VM whose disk already holds data (without ``--force``)."""

    exit_code = 87


class VmBusyError(VmError):
    """The VM's disk is in use by another ``vz vm linux run`` (or ``rm`` of a running VM)."""

    exit_code = 88


# --- OCI (docs/oci.md) -----------------------------------------------------------------------
class OciError(VzLinuxError):
    exit_code = 50


class ImageError(OciError):
    exit_code = 51


class ContainerStateError(OciError):
    exit_code = 52


class VolumeError(OciError):
    """A ``-v HOST:GUEST[:ro]`` volume is malformed or its host source does not exist."""

    exit_code = 53


class DiskImageError(OciError):
    """A VM disk image exists with the wrong size (``vz vm linux init`` without ``--force``)."""

    exit_code = 54


class ImageDigestError(ImageError):
    """An OCI image blob's content does not match the digest it is named by."""

    exit_code = 55


class ImageReferenceError(ImageError):
    """IMAGE is neither a local directory nor a registry reference ``[docker://]HOST/REPO[:TAG][@DIGEST]``."""

    exit_code = 56


class ImageNotPresentError(ImageError):
    """``--pull=never`` and the image is not in the local store."""

    exit_code = 57


class ImageInUseError(ImageError):
    """``vz oci rmi`` of an image a live container still runs from (without ``-f``)."""

    exit_code = 58


class ImageStoreError(ImageError):
    """The local image store is damaged: an unreadable catalogue or a blob missing from it."""

    exit_code = 59


class CommandNotFoundError(OciError):
    """The container's command is not in the image: the shell's (and OCI runtimes') 127."""

    exit_code = 127


# --- OCI: files and stats (docs/oci.md, "Copying files", "Stats") ------------------------------
class CopyError(OciError):
    """``vz oci cp`` failed inside the guest: no such path in the container, not a directory, a
    member that could not be written."""

    exit_code = 75


class HostileArchiveError(CopyError):
    """The tar stream from the guest was refused: an absolute or ``..`` name, a device node or hard
    link, a name outside its top-level entry, a bad header, or more than the size/count bounds."""

    exit_code = 76


class CopyHostPathError(OciError):
    """``vz oci cp``'s host side: the source is missing or unreadable, the destination's directory is
    missing, or the destination exists as a directory and would be merged into."""

    exit_code = 77


class StatsError(OciError):
    """``vz oci stats``: the guest's cgroup/proc figures are missing or malformed."""

    exit_code = 78


# --- OCI: fast start (docs/oci.md, "Fast start: templates and block images") -------------------
class BlockImageError(OciError):
    """A container image's read-only ext4 block image cannot be built or kept: ``mke2fs`` failed,
    the image is over the largest size class, the cache is not writable."""

    exit_code = 89


# --- distribution: releases, the installer, registries (docs/distribution.md) ----------------
class ReleaseError(VzLinuxError):
    """A release (or a signing key) cannot be made: duplicate bundles, a used output dir, a bad key."""

    exit_code = 60


class SignatureError(VzLinuxError):
    """A release's signature is missing or does not verify over the file it signs."""

    exit_code = 61


class UntrustedKeyError(SignatureError):
    """A valid signature, but by a key that is not trusted (or no key is trusted at all)."""

    exit_code = 62


class ReleaseAssetMissingError(VzLinuxError):
    """The release has no such version, asset or file."""

    exit_code = 63


class DownloadError(VzLinuxError):
    """A download failed: unreachable, an HTTP error, truncated, or larger than the size cap."""

    exit_code = 64


class AssetChecksumError(ChecksumMismatchError):
    """A downloaded release asset's sha256 differs from the signed ``SHA256SUMS``."""

    exit_code = 65


class RegistryError(VzLinuxError):
    """An OCI registry could not be used: unreachable, TLS, not a vz-linux bundle, other failures."""

    exit_code = 66


class RegistryAuthError(RegistryError):
    """The registry refused the credentials (or wants some and none are configured)."""

    exit_code = 67


class ReferenceNotFoundError(RegistryError):
    """No such repository, tag or digest in the registry, or no bundle for the wanted platform."""

    exit_code = 68


class BlobDigestError(RegistryError):
    """Content from the registry does not match its digest (a corrupted or tampered blob)."""

    exit_code = 69


# --- terminals and ports (docs/oci.md, docs/vm.md "Terminals and ports") -----------------------
class PortSpecError(InvalidConfigError):
    """A ``-p`` mapping that is not ``[HOSTIP:]HOSTPORT:CONTAINERPORT[/tcp]``."""

    exit_code = 70


class PortInUseError(VmError):
    """A ``-p`` host address cannot be listened on (in use, or a privileged port)."""

    exit_code = 71


class TerminalError(VmError):
    """``-t`` with ``-i`` while our stdin is not a terminal, or the terminal cannot be set up."""

    exit_code = 72


def all_error_classes() -> list[type[VzLinuxError]]:
    """Every concrete error class (used by a test that checks exit codes are distinct)."""
    out: list[type[VzLinuxError]] = []
    todo: list[type[VzLinuxError]] = [VzLinuxError]
    while todo:
        cls = todo.pop()
        out.append(cls)
        todo.extend(cls.__subclasses__())
    return out
