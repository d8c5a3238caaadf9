"""Importing OpenClaw agent transcripts into ClawTrace (``clawtrace import openclaw``).

``transcripts`` finds and reads OpenClaw's transcript storage (the per-agent
SQLite database since OpenClaw 2026.7.2, JSONL files per session before),
incrementally; ``mapping`` turns transcript records into protocol events with
sequence numbers derived from the records themselves (so a re-run is a no-op);
``importer`` sends them to a gateway over NDJSON and follows new records.
"""
