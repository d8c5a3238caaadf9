"""Environments and what moves through them: immutable, content-addressed agent releases.

Promotion (dev -> staging -> prod), rollout and environment diffs build on
``Release``; a release itself belongs to no environment until it is promoted.
"""

from clawtrace.envs.release import (
    MANIFEST_FILE,
    Manifest,
    ModelSettings,
    Release,
    ReleaseError,
    build_release,
    parse_ref,
    release_id,
    verify_release,
)

__all__ = [
    "MANIFEST_FILE",
    "Manifest",
    "ModelSettings",
    "Release",
    "ReleaseError",
    "build_release",
    "parse_ref",
    "release_id",
    "verify_release",
]
