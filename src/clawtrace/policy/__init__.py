"""Infrastructure-level tool policy: Cedar bundles, shell command normalisation, decisions.

See docs/policies.md. The node agent, the gateway and ``clawtrace policy`` all
decide with ``PolicyEngine``; bundles are validated against the schema on
every load (``compile_bundle``) and refused whole if any policy is invalid.
"""

from clawtrace.policy.bundle import (
    BundleSettings,
    CompiledBundle,
    PolicyBundle,
    PolicyError,
    compile_bundle,
    load_bundle,
)
from clawtrace.policy.engine import AgentIdentity, Decision, PolicyEngine, Verdict
from clawtrace.policy.shell import CommandFact, ShellFacts, normalise

__all__ = [
    "AgentIdentity",
    "BundleSettings",
    "CommandFact",
    "CompiledBundle",
    "Decision",
    "PolicyBundle",
    "PolicyEngine",
    "PolicyError",
    "ShellFacts",
    "Verdict",
    "compile_bundle",
    "load_bundle",
    "normalise",
]
