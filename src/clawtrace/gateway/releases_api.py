"""Agent releases over HTTP: ``/api/v1/releases``.

Who may do what: a release belongs to no environment until it is promoted
(and promotion checks the target environment's roles), so creating one
needs the operator role in *some* environment and reading them the viewer
role in some environment. Creating is not per environment on purpose: the
same immutable release must be able to move from dev to prod unchanged.

The gateway never trusts the id it is sent: it re-checks the manifest and
files and re-computes the id from them (``verify_release``).
"""

from __future__ import annotations

import time
from typing import Any

import msgspec
from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from clawtrace.alerts.model import AuditEntry
from clawtrace.envs.release import (
    MAX_RELEASE_BYTES,
    SHORT_ID,
    Release,
    ReleaseError,
    ReleaseIdMismatch,
    parse_ref,
    verify_release,
)
from clawtrace.gateway.api import AnyCredential, ApiError, Viewer_, json_response, read_body, require
from clawtrace.store import Store
from clawtrace.store.base import AmbiguousRelease, ReleaseConflict, ReleaseRecord

router = APIRouter()

# JSON escaping can roughly double the text; anything beyond is not a release we would accept.
MAX_BODY_BYTES = 2 * MAX_RELEASE_BYTES + (1 << 20)


def _store(request: Request) -> Store:
    store: Store = request.app.state.store
    return store


def summary(record: ReleaseRecord) -> dict[str, Any]:
    files: dict[str, str] = msgspec.json.decode(record.content, type=dict[str, str])
    manifest: dict[str, Any] = msgspec.json.decode(record.manifest)
    model = manifest.get("model", {})
    return {
        "id": record.id,
        "short_id": record.id[:SHORT_ID],
        "role": record.role,
        "version": record.version,
        "created": record.created,
        "created_by": record.created_by,
        "model": f"{model.get('provider', '')}/{model.get('name', '')}",
        "files": {path: len(text.encode()) for path, text in sorted(files.items())},
    }


def full_view(record: ReleaseRecord) -> dict[str, Any]:
    """The summary plus the manifest and files: what ``Release`` decodes from (id, manifest, files)."""
    view = summary(record)
    view["sizes"] = view.pop("files")
    view["manifest"] = msgspec.json.decode(record.manifest)
    view["files"] = msgspec.json.decode(record.content)
    return view


@router.post("/api/v1/releases")
async def create_release(request: Request, credential: AnyCredential) -> Response:
    """Store a release built by ``clawtrace release create`` (idempotent: 201 new, 200 already there)."""
    require(credential, "operator")
    release = await read_body(
        request,
        Release,
        'a release {"id": ..., "manifest": {...}, "files": {"PATH": "text"}}'
        " as `clawtrace release create` sends it",
        MAX_BODY_BYTES,
    )
    try:
        await run_in_threadpool(verify_release, release)
    except ReleaseIdMismatch as exc:
        raise ApiError(400, "id_mismatch", str(exc)) from None
    except ReleaseError as exc:
        raise ApiError(400, "invalid_release", str(exc)) from None
    actor = credential.actor
    record = ReleaseRecord(
        id=release.id,
        role=release.role,
        version=release.version,
        manifest=msgspec.json.encode(release.manifest, order="sorted").decode(),
        content=msgspec.json.encode(release.files, order="sorted"),
        created=time.time(),
        created_by=actor,
    )
    writer = request.app.state.writer
    try:
        created: bool = await writer.call(lambda s: s.add_release(record))
    except ReleaseConflict as exc:
        raise ApiError(409, "conflict", str(exc)) from None
    stored = await run_in_threadpool(_store(request).get_release, release.id)
    assert stored is not None  # just written, and never deleted
    if created:
        entry = AuditEntry(
            ts=record.created,
            # Releases belong to no environment until promoted: "*" like other fleet-wide things.
            env="*",
            actor=actor,
            action="create_release",
            target=release.ref,
            reason="",
            result="ok",
            detail={"id": release.id, "files": sorted(release.files)},
        )
        await writer.call(lambda s: s.add_audit([entry]))
    return json_response({"created": created, "release": summary(stored)}, 201 if created else 200)


@router.get("/api/v1/releases")
async def list_releases(request: Request, credential: Viewer_, role: str | None = None) -> Response:
    records = await run_in_threadpool(_store(request).list_releases, role or None)
    return json_response({"releases": [summary(r) for r in records]})


@router.get("/api/v1/releases/{ref}")
async def get_release(request: Request, ref: str, credential: Viewer_) -> Response:
    """``ref``: the id, at least 6 leading hex digits of it, or ROLE@VERSION."""
    try:
        parse_ref(ref)
    except ReleaseError as exc:
        raise ApiError(400, "invalid_parameter", str(exc)) from None
    try:
        record = await run_in_threadpool(_store(request).get_release, ref)
    except AmbiguousRelease as exc:
        raise ApiError(409, "ambiguous", str(exc)) from None
    if record is None:
        raise ApiError(
            404,
            "not_found",
            f"no release {ref!r}: list them with `clawtrace release list` (GET /api/v1/releases)",
        )
    return json_response(full_view(record))
