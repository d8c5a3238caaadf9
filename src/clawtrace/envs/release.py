"""An agent release: one role's manifest plus every file it references, addressed by content.

Built from a directory holding ``clawtrace.agent.toml``. The id is the
sha256 of the canonical JSON of the manifest and the (LF-normalised) text of
every referenced file, so the same directory always gives the same id and
any changed byte gives another. Secrets are references (``env:NAME``,
``vault:path#key``, ``file:/path``) resolved on the node at run time: a
release may be copied to every environment, so it must never hold a value.

The gateway re-checks a release it is sent with ``verify_release``: a
release is only as trustworthy as the content its id was computed from.
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from pathlib import Path, PurePosixPath
from typing import Annotated

import msgspec

from clawtrace.policy import BundleSettings, PolicyBundle, PolicyError, compile_bundle
from clawtrace.protocol.messages import ROLE_PATTERN

MANIFEST_FILE = "clawtrace.agent.toml"
MAX_FILE_BYTES = 1 << 20
# Bounds what the gateway is asked to hold (and send to every node) per release.
MAX_RELEASE_BYTES = 16 << 20
SHORT_ID = 12
MIN_PREFIX = 6
# Part of the hashed document: a change in what is hashed must never collide with old ids.
FORMAT = 1
POLICY_SETTINGS_FILE = "bundle.toml"

ROLE_NAME = re.compile(ROLE_PATTERN)
_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_HEX = re.compile(r"^[0-9a-f]+$")
# Words that make an env var name a secret; matched against its '_'-separated parts,
# so MAX_TOKENS or MONKEY_MODE stay plain settings.
_SECRET_WORDS = frozenset(
    {"KEY", "APIKEY", "TOKEN", "SECRET", "PASSWORD", "PASSWD", "PASS", "CREDENTIAL", "CREDENTIALS"}
)
# The shapes of common credentials: a value like this is a secret whatever its name.
_LITERAL_SECRET = re.compile(
    r"^(sk-|sk_live_|rk_live_|ghp_|gho_|ghs_|github_pat_|glpat-|xox[abprs]-|AKIA[0-9A-Z]{12}|AIza|"
    r"eyJ[A-Za-z0-9_-]{10,}\.|-----BEGIN)"
)
SECRET_SCHEMES = {
    "env": "env:NAME (read from the node agent's environment)",
    "vault": "vault:secret/path#key",
    "file": "file:/absolute/path/on/the/node",
}
_SECRET_REF = {
    "env": re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$"),
    "vault": re.compile(r"^[^#\s]+#[^#\s]+$"),
    "file": re.compile(r"^/\S+$"),
}


class ReleaseError(Exception):
    """A release that cannot be built or accepted; ``problems`` are one line each, saying what to do."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class ReleaseIdMismatch(ReleaseError):
    """The content is fine but does not hash to the id it came with."""


class ModelSettings(
    msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True, omit_defaults=True
):
    provider: str
    name: str
    temperature: Annotated[float, msgspec.Meta(ge=0, le=2)] | None = None
    max_tokens: Annotated[int, msgspec.Meta(gt=0)] | None = None
    top_p: Annotated[float, msgspec.Meta(ge=0, le=1)] | None = None
    # Provider-specific knobs (seed, reasoning effort, ...), passed on as written.
    options: dict[str, str | int | float | bool] = {}


# omit_defaults: a field added later with a default leaves the ids of existing releases unchanged.
class Manifest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True, omit_defaults=True):
    role: str
    version: str
    command: list[str]
    model: ModelSettings
    prompts: list[str] = []
    tool_hooks: list[str] = []
    policy: str | None = None
    env: dict[str, str] = {}
    secrets: dict[str, str] = {}


class Release(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """What the gateway stores and node agents will fetch: ``files`` maps manifest paths to text."""

    id: str
    manifest: Manifest
    files: dict[str, str]

    @property
    def role(self) -> str:
        return self.manifest.role

    @property
    def version(self) -> str:
        return self.manifest.version

    @property
    def short_id(self) -> str:
        return self.id[:SHORT_ID]

    @property
    def ref(self) -> str:
        return f"{self.manifest.role}@{self.manifest.version}"


def canonical_json(manifest: Manifest, files: dict[str, str]) -> bytes:
    return msgspec.json.encode({"format": FORMAT, "manifest": manifest, "files": files}, order="sorted")


def release_id(manifest: Manifest, files: dict[str, str]) -> str:
    return hashlib.sha256(canonical_json(manifest, files)).hexdigest()


def normalise_text(text: str) -> str:
    # A checkout on Windows must not be a different release.
    return text.replace("\r\n", "\n").replace("\r", "\n")


# --- building from a directory -------------------------------------------------------------------


def build_release(directory: Path) -> Release:
    """Read, check and hash a release directory; ReleaseError lists every problem found."""
    manifest = load_manifest(directory)
    label = str(directory)
    root = directory.resolve()
    files: dict[str, str] = {}
    problems: list[str] = []
    for field_name, paths in (("prompts", manifest.prompts), ("tool_hooks", manifest.tool_hooks)):
        for index, rel in enumerate(paths):
            _read_into(files, problems, root, rel, f"{label}/{MANIFEST_FILE}: {field_name}[{index}]")
    if manifest.policy is not None:
        _read_policy(files, problems, root, manifest.policy, f"{label}/{MANIFEST_FILE}: policy")
    if problems:
        raise ReleaseError(problems)
    problems = _content_problems(manifest, files)
    if problems:
        raise ReleaseError([f"{label}: {p}" for p in problems])
    return Release(id=release_id(manifest, files), manifest=manifest, files=files)


def load_manifest(directory: Path) -> Manifest:
    path = directory / MANIFEST_FILE
    if not directory.is_dir():
        raise ReleaseError(
            [f"{directory}: not a directory (a release is built from a directory with {MANIFEST_FILE})"]
        )
    if not path.is_file():
        raise ReleaseError(
            [
                f"{path}: no manifest: a release directory needs a {MANIFEST_FILE}"
                " (see examples/agents/researcher)"
            ]
        )
    try:
        text = path.read_text(encoding="utf-8")
        data = tomllib.loads(text)
    except (OSError, UnicodeDecodeError) as exc:
        raise ReleaseError([f"{path}: cannot read it: {exc}"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ReleaseError([f"{path}: not valid TOML: {exc}"]) from None
    return parse_manifest(data, str(path), text)


def parse_manifest(data: object, label: str = "manifest", text: str | None = None) -> Manifest:
    """``data`` (a decoded TOML or JSON object) as a checked Manifest; ``text`` finds line numbers."""
    try:
        manifest = msgspec.convert(data, Manifest)
    except msgspec.ValidationError as exc:
        raise ReleaseError([_structure_problem(label, text, str(exc))]) from None
    problems = [_where(label, text, path, message) for path, message in manifest_problems(manifest)]
    if problems:
        raise ReleaseError(problems)
    return manifest


FieldPath = tuple[str | int, ...]


def manifest_problems(manifest: Manifest) -> list[tuple[FieldPath, str]]:
    """What is wrong with a manifest that has the right shape (names, paths, secrets)."""
    problems: list[tuple[FieldPath, str]] = []
    if not ROLE_NAME.match(manifest.role):
        problems.append(
            (
                ("role",),
                f"{manifest.role!r} is not a role identifier: lower-case letters, digits, '-' and '_',"
                ' starting with a letter (e.g. "researcher")',
            )
        )
    if not _VERSION.match(manifest.version):
        problems.append(
            (
                ("version",),
                f"{manifest.version!r} is not a version label:"
                ' use letters, digits, ".", "-", "_" (e.g. "1.4.0")',
            )
        )
    if not manifest.command or not all(part.strip() for part in manifest.command):
        problems.append(
            (
                ("command",),
                'must name the program to start, one string per argument (e.g. ["python", "agent.py"])',
            )
        )
    for name in ("provider", "name"):
        if not getattr(manifest.model, name).strip():
            problems.append((("model", name), "must not be empty"))
    for field_name, paths in (("prompts", manifest.prompts), ("tool_hooks", manifest.tool_hooks)):
        seen: set[str] = set()
        for index, rel in enumerate(paths):
            problem = path_problem(rel)
            if problem is None and rel in seen:
                problem = f"{rel!r} is listed twice"
            seen.add(rel)
            if problem is not None:
                problems.append(((field_name, index), problem))
    if manifest.policy is not None:
        problem = path_problem(manifest.policy)
        if problem is not None:
            problems.append((("policy",), problem))
    for name, value in manifest.env.items():
        problem = _env_problem(name, value)
        if problem is not None:
            problems.append((("env", name), problem))
    for name, ref in manifest.secrets.items():
        problem = _secret_problem(name, ref)
        if problem is None and name in manifest.env:
            problem = f"{name} is also in [env]: keep it in one of the two"
        if problem is not None:
            problems.append((("secrets", name), problem))
    return problems


def path_problem(rel: str) -> str | None:
    """Why ``rel`` cannot name a file of the release, or None."""
    if not rel.strip():
        return "is empty: name a file relative to the release directory"
    if "\\" in rel:
        return f"{rel!r}: separate directories with '/', not '\\'"
    pure = PurePosixPath(rel)
    if pure.is_absolute() or rel.startswith("~"):
        return f"{rel!r} is not inside the release: use a path relative to the release directory"
    if ".." in pure.parts:
        return f"{rel!r} leaves the release directory: copy the file into it and name it from there"
    if str(pure) != rel:
        return f"{rel!r}: write it as {str(pure)!r}"
    if rel == MANIFEST_FILE:
        return f"{rel!r} is the manifest itself"
    return None


def is_secret_name(name: str) -> bool:
    return any(part in _SECRET_WORDS for part in name.upper().split("_"))


def _env_problem(name: str, value: str) -> str | None:
    if not _ENV_NAME.match(name):
        return (
            f"{name!r} is not an environment variable name (letters, digits, '_'; not starting with a digit)"
        )
    if is_secret_name(name):
        return (
            f"{name} looks like a secret: a release holds no secret values. Move it to [secrets] as a"
            f' reference, e.g. {name} = "env:{name}" or "vault:secret/path#key"'
        )
    if _LITERAL_SECRET.match(value):
        return (
            f"the value of {name} looks like a credential: a release holds no secret values."
            f' Move it to [secrets] as a reference, e.g. {name} = "env:{name}"'
        )
    return None


def _secret_problem(name: str, ref: str) -> str | None:
    if not _ENV_NAME.match(name):
        return (
            f"{name!r} is not an environment variable name (letters, digits, '_'; not starting with a digit)"
        )
    schemes = ", ".join(shape.split(" ")[0] for shape in SECRET_SCHEMES.values())
    if _LITERAL_SECRET.match(ref):
        return (
            "looks like a literal secret: never put the value in a release. Store it on the node or in"
            f' Vault and reference it, e.g. {name} = "env:{name}" ({schemes})'
        )
    scheme, colon, rest = ref.partition(":")
    if not colon or scheme not in SECRET_SCHEMES:
        return f"{_shown(ref)} is not a secret reference: write SCHEME:REF, one of {schemes}"
    if not _SECRET_REF[scheme].match(rest):
        return f"{_shown(ref)} is not a valid {scheme} reference: write {SECRET_SCHEMES[scheme]}"
    return None


def _shown(value: str) -> str:
    """A value in an error message; a long one may be a pasted secret, so only its start."""
    return repr(value) if len(value) <= 24 else repr(value[:8] + "...")


def _read_into(files: dict[str, str], problems: list[str], root: Path, rel: str, where: str) -> None:
    full = root / rel
    if not full.resolve().is_relative_to(root):
        problems.append(
            f"{where}: {rel!r} resolves outside the release directory (a symlink?): copy the file in"
        )
        return
    if full.is_dir():
        problems.append(f"{where}: {rel!r} is a directory: list the files in it")
        return
    if not full.is_file():
        problems.append(f"{where}: {rel!r}: no such file in {root}")
        return
    text = _file_text(full.read_bytes(), rel)
    if isinstance(text, ReleaseError):
        problems.append(f"{where}: {text}")
    else:
        files[rel] = text


def _file_text(data: bytes, rel: str) -> str | ReleaseError:
    if len(data) > MAX_FILE_BYTES:
        return ReleaseError(
            [f"{rel!r} is {len(data)} bytes; a release file may be at most {MAX_FILE_BYTES} (1 MiB)"]
        )
    try:
        if b"\0" in data:
            raise UnicodeDecodeError("utf-8", data, data.index(b"\0"), data.index(b"\0") + 1, "NUL byte")
        return normalise_text(data.decode("utf-8"))
    except UnicodeDecodeError:
        return ReleaseError([f"{rel!r} is not UTF-8 text (a binary file?): a release holds text files only"])


def _read_policy(files: dict[str, str], problems: list[str], root: Path, rel: str, where: str) -> None:
    full = root / rel
    if full.is_dir() and full.resolve().is_relative_to(root):
        members = sorted(
            p.name for p in full.iterdir() if p.name.endswith(".cedar") or p.name == POLICY_SETTINGS_FILE
        )
        if not any(name.endswith(".cedar") for name in members):
            problems.append(f"{where}: {rel!r} is a directory with no .cedar files")
        for name in members:
            _read_into(files, problems, root, f"{rel}/{name}", where)
    elif not rel.endswith(".cedar"):
        problems.append(f"{where}: {rel!r} must be a .cedar file or a directory of them (a policy bundle)")
    else:
        _read_into(files, problems, root, rel, where)


# --- checking what was sent ------------------------------------------------------------------------


def policy_files(manifest: Manifest, files: dict[str, str]) -> dict[str, str]:
    """The files of ``manifest.policy`` (one .cedar file, or a bundle directory's files)."""
    policy = manifest.policy
    if policy is None:
        return {}
    if policy in files:
        return {policy: files[policy]}
    prefix = policy + "/"
    return {k: v for k, v in files.items() if k.startswith(prefix) and "/" not in k[len(prefix) :]}


def _content_problems(manifest: Manifest, files: dict[str, str]) -> list[str]:
    """Problems of the files as a whole: the policy must compile (Cedar skips a broken policy)."""
    if manifest.policy is None:
        return []
    members = policy_files(manifest, files)
    cedar = {PurePosixPath(k).name: v for k, v in members.items() if k.endswith(".cedar")}
    if not cedar:
        return [f"policy: {manifest.policy!r} has no .cedar files"]
    settings = BundleSettings()
    settings_path = f"{manifest.policy}/{POLICY_SETTINGS_FILE}"
    if settings_path in members:
        try:
            settings = msgspec.convert(tomllib.loads(members[settings_path]), BundleSettings)
        except (tomllib.TOMLDecodeError, msgspec.ValidationError) as exc:
            return [f"{settings_path}: {exc}"]
    try:
        compile_bundle(PolicyBundle(env=manifest.role, files=cedar, settings=settings))
    except PolicyError as exc:
        base = manifest.policy if manifest.policy not in files else str(PurePosixPath(manifest.policy).parent)
        prefix = "" if base == "." else base + "/"
        return [f"policy does not validate: {prefix}{p}" for p in exc.problems]
    return []


def verify_release(release: Release) -> None:
    """Check a release received whole (not built here): what ``build_release`` guarantees, and its id.

    Raises ReleaseError listing every problem, or ReleaseIdMismatch when only the id is wrong.
    """
    manifest = release.manifest
    problems = [_where("manifest", None, path, message) for path, message in manifest_problems(manifest)]
    if problems:
        raise ReleaseError(problems)
    expected = {*manifest.prompts, *manifest.tool_hooks}
    for field_name, paths in (("prompts", manifest.prompts), ("tool_hooks", manifest.tool_hooks)):
        for index, rel in enumerate(paths):
            if rel not in release.files:
                problems.append(f"files: {rel!r} (manifest {field_name}[{index}]) is missing")
    policy = policy_files(manifest, release.files)
    if manifest.policy is not None and not policy:
        problems.append(f"files: the policy {manifest.policy!r} is missing")
    expected.update(policy)
    total = 0
    for rel, text in release.files.items():
        if rel not in expected:
            problems.append(f"files: {rel!r} is not referenced by the manifest: remove it or reference it")
            continue
        data = text.encode("utf-8", "surrogatepass")
        total += len(data)
        checked = _file_text(data, rel)
        if isinstance(checked, ReleaseError):
            problems.append(f"files: {checked}")
        elif checked != text:
            problems.append(
                f"files: {rel!r} has CR line endings: send the text with LF (as build_release does)"
            )
    if total > MAX_RELEASE_BYTES:
        problems.append(f"files: {total} bytes in all; a release may hold at most {MAX_RELEASE_BYTES}")
    if problems:
        raise ReleaseError(problems)
    problems = _content_problems(manifest, release.files)
    if problems:
        raise ReleaseError(problems)
    actual = release_id(manifest, release.files)
    if release.id != actual:
        raise ReleaseIdMismatch(
            [
                f"the release says its id is {release.id[:SHORT_ID]!r} but its content hashes to"
                f" {actual[:SHORT_ID]!r}: it was changed after it was built;"
                " build it again from its directory"
            ]
        )


def parse_ref(ref: str) -> str:
    """Check a release reference (full id, id prefix of >= 6 hex digits, or ROLE@VERSION); ``ref`` back."""
    role, at, version = ref.partition("@")
    if at:
        if ROLE_NAME.match(role) and _VERSION.match(version):
            return ref
    elif len(ref) >= MIN_PREFIX and len(ref) <= 64 and _HEX.match(ref):
        return ref
    raise ReleaseError(
        [
            f"{ref!r} names no release: give its id, at least {MIN_PREFIX} leading hex digits of it,"
            " or ROLE@VERSION (e.g. researcher@1.4.0)"
        ]
    )


# --- where a problem is ------------------------------------------------------------------------------

_KNOWN = {
    "": ", ".join(Manifest.__struct_fields__),
    "model": ", ".join(ModelSettings.__struct_fields__),
}
_AT = re.compile(r" - at `\$(.*)`$")
_HEADER = re.compile(r"^\[\s*\"?([^\]\"]+?)\"?\s*\]")
_KEY = re.compile(r"^\"?([A-Za-z0-9_.-]+)\"?\s*=")


def _structure_problem(label: str, text: str | None, message: str) -> str:
    """msgspec's message with the field path as written in TOML, a line, and what would fix it."""
    found = _AT.search(message)
    dotted = found.group(1).lstrip(".") if found else ""
    message = message[: found.start()] if found else message
    path: FieldPath = tuple(
        int(part) if part.isdigit() else part for part in re.split(r"\.|\[|\]", dotted) if part != ""
    )
    unknown = re.match(r"Object contains unknown field `(.+)`", message)
    if unknown:
        known = _KNOWN.get(dotted, "")
        where = (*path, unknown.group(1))
        hint = f"; known fields: {known}" if known else ""
        return _where(label, text, where, f"unknown field (a typo?){hint}")
    missing = re.match(r"Object missing required field `(.+)`", message)
    if missing:
        return _where(label, text, (*path, missing.group(1)), "is required but missing: add it")
    return _where(label, text, path, message[0].lower() + message[1:] if message else "is invalid")


def _where(label: str, text: str | None, path: FieldPath, message: str) -> str:
    dotted = ""
    for part in path:
        dotted += f"[{part}]" if isinstance(part, int) else (f".{part}" if dotted else part)
    line = _line_of(text, path) if text is not None else None
    location = f"{label}:{line}" if line is not None else label
    return f"{location}: {dotted}: {message}" if dotted else f"{location}: {message}"


def _line_of(text: str, path: FieldPath) -> int | None:
    """The line that sets ``path`` (cheap: top-level keys and keys of [tables]), or None."""
    if not path or not isinstance(path[0], str):
        return None
    top = path[0]
    key = path[1] if len(path) > 1 and isinstance(path[1], str) else None
    table: str | None = None
    header_line: int | None = None
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        header = _HEADER.match(line)
        if header:
            table = header.group(1).strip()
            if table == top:
                header_line = number
            continue
        found = _KEY.match(line)
        if found is None:
            continue
        name = found.group(1)
        if table is None and name == top:
            return number
        if table == top and (key is None or name == key):
            return number
    return header_line
