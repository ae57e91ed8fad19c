"""The selection API (docs/selection.md): find, validate and install the bundle a caller asks for.

Resolution order for the bundle to install (first that applies wins):

1. ``KernelBundleOptions.bundle_dir`` or ``KernelBundleOptions.reference`` (the caller's; not both);
2. ``$VZ_LINUX_<PROFILE>_BUNDLE_DIR`` (``VZ_LINUX_DEVELOPER_BUNDLE_DIR``, ``VZ_LINUX_CONTAINER_BUNDLE_DIR``);
3. ``$VZ_LINUX_<PROFILE>_REFERENCE`` (a registry reference, e.g. ``HOST/REPO:TAG@sha256:…``);
4. ``$VZ_LINUX_BUNDLE_DIR``;
5. only when the install dir is the default and the package runs from a real source checkout
   (``layout.source_checkout``): its ``linux/out[/container]``, if a bundle is there. A
   wheel-installed package never takes a bundle from the current directory.

A reference is pulled into the by-digest store (:mod:`vz_linux.bundle.transfer`) unless the store
already holds that digest (then there is no network round trip) and the stored bundle is the
source. A bundle found that way is validated and installed into the install dir (default
``~/.vz/linux/<profile>/``) unless an identical intact install is already there. With none, the
installed files are validated and returned; the developer profile falls back to the legacy
``~/.vz/linux/`` when its own dir holds nothing.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from .. import layout
from ..errors import InvalidConfigError, MissingArtifactsError, NoHomeDirectoryError
from ..profiles import KernelCapability, KernelProfile
from .install import install_bundle, load_installed
from .model import KernelBundle
from .transfer import bundle_dir_for

ENV_BUNDLE_DIR = "VZ_LINUX_BUNDLE_DIR"


def profile_env_var(profile: KernelProfile) -> str:
    return f"VZ_LINUX_{profile.value.upper()}_BUNDLE_DIR"


def reference_env_var(profile: KernelProfile) -> str:
    return f"VZ_LINUX_{profile.value.upper()}_REFERENCE"


@dataclass(frozen=True)
class KernelBundleOptions:
    profile: KernelProfile | None = None  # None = developer
    required_capabilities: frozenset[KernelCapability] = field(default_factory=frozenset)
    install_dir: Path | None = None  # None = ~/.vz/linux/<profile>/
    bundle_dir: Path | None = None  # None = environment, then the source checkout's linux/out
    require_exact_agent_version: bool = True
    reference: str | None = None  # HOST/REPO[:TAG][@sha256:…]: pulled unless that digest is stored

    def __post_init__(self) -> None:
        # Accept strings and plain iterables from callers; store the typed forms.
        if self.profile is not None and not isinstance(self.profile, KernelProfile):
            object.__setattr__(self, "profile", KernelProfile.parse(str(self.profile)))
        caps: Iterable[KernelCapability | str] = self.required_capabilities
        object.__setattr__(
            self, "required_capabilities",
            frozenset(c if isinstance(c, KernelCapability) else KernelCapability.parse(c) for c in caps),
        )
        for name in ("install_dir", "bundle_dir"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                object.__setattr__(self, name, Path(value))

    @property
    def resolved_profile(self) -> KernelProfile:
        return self.profile or KernelProfile.developer


@dataclass(frozen=True)
class Resolution:
    """Where ensure_kernel_bundle looks, and why (what `vz-linux ensure` explains)."""

    profile: KernelProfile
    install_dir: Path
    default_install: bool
    source: Path | None
    source_reason: str | None  # "bundle_dir", "reference", "$VZ_LINUX_…", "source checkout"
    reference: str | None = None  # set when the source is a registry reference (pulled on ensure)


def _env_dir(name: str) -> Path | None:
    value = os.environ.get(name)
    return Path(value) if value else None


def resolve(options: KernelBundleOptions) -> Resolution:
    """Apply the resolution order without touching any bundle (beyond an existence check of step 4)."""
    profile = options.resolved_profile
    if options.install_dir is None:
        install_dir, default_install = layout.default_install_dir(profile), True
    else:
        install_dir = options.install_dir
        try:
            default_install = _same_path(install_dir, layout.default_install_dir(profile))
        except NoHomeDirectoryError:
            default_install = False
    if options.bundle_dir is not None and options.reference is not None:
        raise InvalidConfigError("give a bundle dir or a reference, not both")
    env_ref = os.environ.get(reference_env_var(profile)) or None
    candidates: list[tuple[Path | str | None, str]] = [
        (options.bundle_dir, "bundle_dir"),
        (options.reference, "reference"),
        (_env_dir(profile_env_var(profile)), f"${profile_env_var(profile)}"),
        (env_ref, f"${reference_env_var(profile)}"),
        (_env_dir(ENV_BUNDLE_DIR), f"${ENV_BUNDLE_DIR}"),
    ]
    for where, reason in candidates:
        if isinstance(where, str):
            return Resolution(profile, install_dir, default_install, None, reason, reference=where)
        if where is not None:
            return Resolution(profile, install_dir, default_install, where, reason)
    out_root = layout.trusted_out_root() if default_install else None
    if out_root is not None:
        out = layout.default_bundle_dir(profile, out_root=out_root)
        if (out / layout.METADATA).exists():
            return Resolution(profile, install_dir, default_install, out, "source checkout")
    return Resolution(profile, install_dir, default_install, None, None)


def _same_path(a: Path, b: Path) -> bool:
    return os.path.abspath(a) == os.path.abspath(b)


def ensure_kernel_bundle(options: KernelBundleOptions | None = None) -> KernelBundle:
    """The validated, installed bundle for ``options`` (docs/selection.md). Raises one typed error otherwise."""
    options = options or KernelBundleOptions()
    res = resolve(options)
    def checked(load: Callable[..., KernelBundle], where: Path, *args: Path) -> KernelBundle:
        return load(where, *args, profile=res.profile, required_capabilities=options.required_capabilities,
                    require_exact_agent_version=options.require_exact_agent_version)

    if res.reference is not None:
        return checked(install_bundle, bundle_dir_for(res.reference, res.install_dir), res.install_dir)
    if res.source is not None:
        return checked(install_bundle, res.source, res.install_dir)
    if (res.install_dir / layout.METADATA).exists() or res.install_dir.is_symlink():
        return checked(load_installed, res.install_dir)
    if res.profile is KernelProfile.developer and res.default_install:
        legacy = layout.default_install_root()
        if (legacy / layout.METADATA).exists():
            return checked(load_installed, legacy)
    if res.install_dir.exists():
        return checked(load_installed, res.install_dir)  # reports what is wrong with it
    env = profile_env_var(res.profile)
    raise MissingArtifactsError(
        f"no {res.profile.value} kernel bundle installed in {res.install_dir} and none to install",
        hint=f"build one (vz-linux build --profile {res.profile.value}), or set ${env} / pass a bundle dir",
    )


def ensure_kernel_profile(profile: KernelProfile | str) -> KernelBundle:
    return ensure_kernel_bundle(KernelBundleOptions(profile=KernelProfile.parse(str(profile))))


def ensure_kernel() -> KernelBundle:
    """The default (developer) bundle."""
    return ensure_kernel_bundle(KernelBundleOptions())


def install_hint(profile: KernelProfile) -> str:
    """How to get a profile's bundle installed (shown when it is missing)."""
    out = layout.default_bundle_dir(profile)
    with contextlib.suppress(ValueError):
        out = out.relative_to(Path.cwd())
    return f"install it with: vz-linux build --profile {profile.value} && vz-linux install {out}"


def ensure_installed_profile(profile: KernelProfile | None) -> KernelBundle:
    """The validated, installed bundle of ``profile`` (None: the default), or a MissingArtifactsError
    that says how to install it: what the OCI path and ``vz vm linux init`` boot."""
    chosen = profile or KernelProfile.developer
    try:
        return ensure_kernel_profile(profile) if profile is not None else ensure_kernel()
    except MissingArtifactsError as e:
        raise MissingArtifactsError(
            f"the {chosen.value} kernel profile is not installed: {e}", hint=install_hint(chosen)
        ) from e
