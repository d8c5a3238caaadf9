"""The NATS bus and the JetStream event stream, against real nats-server processes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest
from nats.js import JetStreamContext

from clawtrace.bus import BusError, open_bus
from clawtrace.bus.layout import StreamLayout, ensure_stream, shard_of
from clawtrace.bus.nats import NatsBus, check_nats_url
from clawtrace.bus.publisher import MSG_ID_HEADER, FramePublisher
from nats_server import PrivateNats, free_port, require_shared_nats, unique_name


@pytest.fixture
async def bus() -> AsyncIterator[NatsBus]:
    nats_bus = NatsBus(require_shared_nats(), name="test_bus_nats")
    await nats_bus.start()
    try:
        yield nats_bus
    finally:
        await nats_bus.close()


@pytest.fixture
async def layout(bus: NatsBus) -> AsyncIterator[StreamLayout]:
    """A stream of this test's own on the shared server, deleted afterwards."""
    name = unique_name("T")
    wanted = StreamLayout(name=name.upper(), prefix=f"{name}.events", shards=4, max_age_seconds=600)
    js = bus.jetstream()
    created = await ensure_stream(js, wanted)
    try:
        yield created
    finally:
        await js.delete_stream(created.name)


def events(agent: str, seqs: range, pad: int = 20) -> tuple[list[bytes], list[int]]:
    lines = [msgspec.json.encode({"kind": "log", "agent": agent, "seq": s, "line": "x" * pad}) for s in seqs]
    return lines, list(seqs)


async def stored(js: JetStreamContext, layout: StreamLayout) -> list[tuple[str, str, list[int]]]:
    """(subject, message id, seqs) of every message in the stream, in stream order."""
    info = await js.stream_info(layout.name)
    out = []
    for sequence in range(info.state.first_seq, info.state.last_seq + 1):
        msg = await js.get_msg(layout.name, sequence)
        seqs = [event["seq"] for event in msgspec.json.decode(msg.data or b"[]")]
        out.append((msg.subject or "", (msg.headers or {}).get(MSG_ID_HEADER, ""), seqs))
    return out


# --- core NATS through the Bus interface ---------------------------------------------------


async def test_publish_reaches_wildcard_subscribers(bus: NatsBus) -> None:
    prefix = unique_name()
    got: dict[str, list[tuple[str, bytes]]] = {"one": [], "rest": [], "exact": []}
    done = asyncio.Event()

    async def rest(subject: str, data: bytes) -> None:
        got["rest"].append((subject, data))
        if len(got["rest"]) == 3:
            done.set()

    subs = [
        await bus.subscribe(f"{prefix}.*.a", lambda s, d: got["one"].append((s, d))),
        await bus.subscribe(f"{prefix}.>", rest),
        await bus.subscribe(f"{prefix}.x.a", lambda s, d: got["exact"].append((s, d))),
    ]
    await bus.publish(f"{prefix}.x.a", b"1")
    await bus.publish(f"{prefix}.y.a", b"2")
    await bus.publish(f"{prefix}.y.b.c", b"3")
    await asyncio.wait_for(done.wait(), 5)
    await bus.client.flush()
    assert got["one"] == [(f"{prefix}.x.a", b"1"), (f"{prefix}.y.a", b"2")]
    assert got["exact"] == [(f"{prefix}.x.a", b"1")]
    assert [d for _, d in got["rest"]] == [b"1", b"2", b"3"]
    for sub in subs:
        await sub.unsubscribe()
    await bus.publish(f"{prefix}.x.a", b"after")
    await bus.client.flush()
    await asyncio.sleep(0.05)
    assert len(got["exact"]) == 1


async def test_a_failing_handler_does_not_end_its_subscription(bus: NatsBus) -> None:
    prefix = unique_name()
    seen: list[bytes] = []

    def handler(_subject: str, data: bytes) -> None:
        seen.append(data)
        if data == b"bad":
            raise RuntimeError("boom")

    await bus.subscribe(f"{prefix}.>", handler)
    for data in (b"bad", b"good"):
        await bus.publish(f"{prefix}.s", data)
    await bus.client.flush()
    for _ in range(100):
        if len(seen) == 2:
            break
        await asyncio.sleep(0.01)
    assert seen == [b"bad", b"good"]


# --- errors that say what to do ----------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    ["nats://", "http://127.0.0.1:4222", "nats://127.0.0.1:notaport", "nats://127.0.0.1:4222/path"],
)
def test_bad_urls_say_what_a_good_one_looks_like(url: str) -> None:
    with pytest.raises(BusError, match="nats://HOST:PORT"):
        check_nats_url(url)


def test_open_bus_names_the_supported_schemes() -> None:
    with pytest.raises(BusError, match=r"memory:// .* nats://HOST:PORT"):
        open_bus("kafka://127.0.0.1:9092")
    assert isinstance(open_bus("nats://127.0.0.1"), NatsBus)
    assert check_nats_url("nats://127.0.0.1") == "nats://127.0.0.1:4222"


async def test_unreachable_nats_is_a_clear_error() -> None:
    url = f"nats://127.0.0.1:{free_port()}"
    unreachable = NatsBus(url, startup_attempts=2)
    with pytest.raises(BusError, match=rf"cannot reach NATS at {url}.*nats-server running"):
        await unreachable.start()


async def test_jetstream_disabled_is_a_clear_error(tmp_path: Path) -> None:
    server = PrivateNats(tmp_path / "nats", jetstream=False)
    server.start()
    plain = NatsBus(server.url)
    try:
        await plain.start()
        with pytest.raises(BusError, match=r"JetStream disabled: start nats-server with -js"):
            await plain.require_jetstream()
    finally:
        await plain.close()
        server.stop()


# --- the event stream ------------------------------------------------------------------------


async def test_stream_keeps_its_shard_count_and_refuses_foreign_streams(
    bus: NatsBus, layout: StreamLayout
) -> None:
    js = bus.jetstream()
    await bus.require_jetstream()
    assert layout.shards == 4
    # A process configured for another count adopts the stream's.
    again = await ensure_stream(js, StreamLayout(name=layout.name, prefix=layout.prefix, shards=32))
    assert again.shards == 4
    # A stream of that name with other subjects is not ours.
    foreign = unique_name("F").upper()
    await js.add_stream(name=foreign, subjects=[f"{foreign.lower()}.other"])
    try:
        with pytest.raises(BusError, match="another program uses that name"):
            await ensure_stream(js, StreamLayout(name=foreign, prefix=f"{foreign.lower()}.events"))
    finally:
        await js.delete_stream(foreign)


def test_subjects_carry_shard_env_region_and_agent() -> None:
    layout = StreamLayout(prefix="ct.events", shards=16)
    subject = layout.subject("prod", "eu-west-1", "a-0417")
    assert subject == f"ct.events.{shard_of('a-0417', 16)}.prod.eu-west-1.a-0417"
    parsed = layout.parse(subject)
    assert (parsed.shard, parsed.env, parsed.region, parsed.agent) == (
        shard_of("a-0417", 16),
        "prod",
        "eu-west-1",
        "a-0417",
    )
    # Regions are free text: whatever cannot be a subject token is replaced; none is "_".
    assert layout.subject("dev", "", "a").split(".")[4] == "_"
    assert layout.subject("dev", "eu west.1*", "a").split(".")[4] == "eu_west_1_"
    # The hash is CRC-32 (IEEE) of the id: stable across processes, versions and languages.
    assert shard_of("a-0417", 16) == 3868361145 % 16 == 9
    assert len({shard_of(f"a-{i}", 16) for i in range(200)}) == 16


async def test_frames_resolve_once_jetstream_has_every_event(bus: NatsBus, layout: StreamLayout) -> None:
    js = bus.jetstream(max_in_flight=16)
    publisher = FramePublisher(js, layout, bus.client.max_payload)
    publisher.start()
    try:
        frames = []
        for first in range(1, 2001, 10):
            lines, seqs = events("a-1", range(first, first + 10))
            frames.append(publisher.publish("dev", "eu-west-1", "a-1", lines, seqs))
        await asyncio.wait_for(asyncio.gather(*frames), 30)
        messages = await stored(js, layout)
        assert len(messages) == 200
        # In the order accepted, one message per frame, ids <agent>:<first>-<last>.
        assert [seq for _, _, seqs in messages for seq in seqs] == list(range(1, 2001))
        assert messages[0][1] == "a-1:1-10"
        assert {subject for subject, _, _ in messages} == {layout.subject("dev", "eu-west-1", "a-1")}
    finally:
        await publisher.close()


async def test_a_frame_republished_in_the_window_is_stored_once(bus: NatsBus, layout: StreamLayout) -> None:
    js = bus.jetstream()
    publisher = FramePublisher(js, layout, bus.client.max_payload)
    publisher.start()
    try:
        lines, seqs = events("a-2", range(1, 6))
        await publisher.publish("dev", "r", "a-2", lines, seqs)
        await publisher.publish("dev", "r", "a-2", lines, seqs)  # a resend of the same frame
        lines, seqs = events("a-2", range(3, 9))
        await publisher.publish("dev", "r", "a-2", lines, seqs)  # a resend cut differently
        assert [(msg_id, seqs) for _, msg_id, seqs in await stored(js, layout)] == [
            ("a-2:1-5", [1, 2, 3, 4, 5]),
            ("a-2:3-8", [3, 4, 5, 6, 7, 8]),  # left for the workers' (agent, seq) dedupe
        ]
    finally:
        await publisher.close()


async def test_big_frames_are_split_below_the_max_payload(bus: NatsBus, layout: StreamLayout) -> None:
    js = bus.jetstream()
    publisher = FramePublisher(js, layout, max_payload=4096)
    publisher.start()
    try:
        lines, seqs = events("a-3", range(1, 101), pad=200)
        await publisher.publish("dev", "r", "a-3", lines, seqs)
        messages = await stored(js, layout)
        assert len(messages) > 5
        assert [seq for _, _, seqs in messages for seq in seqs] == list(range(1, 101))
        assert all(msg_id == f"a-3:{s[0]}-{s[-1]}" for _, msg_id, s in messages)
        huge, huge_seqs = events("a-3", range(101, 102), pad=5000)
        with pytest.raises(BusError, match=r"event seq 101 of agent 'a-3' is \d+ bytes.*max_payload"):
            await publisher.publish("dev", "r", "a-3", huge, huge_seqs)
    finally:
        await publisher.close()


async def test_a_subject_no_stream_takes_fails_the_frame(bus: NatsBus, layout: StreamLayout) -> None:
    js = bus.jetstream()
    elsewhere = StreamLayout(name=layout.name, prefix=unique_name("nostream"), shards=4)
    publisher = FramePublisher(js, elsewhere, bus.client.max_payload)
    publisher.start()
    try:
        lines, seqs = events("a-4", range(1, 3))
        with pytest.raises(BusError, match="JetStream refused events"):
            await publisher.publish("dev", "r", "a-4", lines, seqs)
    finally:
        await publisher.close()


async def test_a_hung_server_fails_frames_after_the_ack_timeout_then_recovers(tmp_path: Path) -> None:
    server = PrivateNats(tmp_path / "nats")
    server.start()
    nats_bus = NatsBus(server.url)
    await nats_bus.start()
    js = nats_bus.jetstream(max_in_flight=4)
    layout = await ensure_stream(js, StreamLayout(name="HUNG", prefix="hung.events", shards=2))
    publisher = FramePublisher(js, layout, nats_bus.client.max_payload, ack_timeout=0.5)
    publisher.start()
    try:
        lines, seqs = events("a-5", range(1, 3))
        await publisher.publish("dev", "r", "a-5", lines, seqs)
        server.pause()
        # More frames than the in-flight window: the timeouts must free its slots.
        hung = []
        for first in range(3, 30, 2):
            lines, seqs = events("a-5", range(first, first + 2))
            hung.append(publisher.publish("dev", "r", "a-5", lines, seqs))
        results = await asyncio.wait_for(asyncio.gather(*hung, return_exceptions=True), 20)
        # A busy machine may let the server take a frame or two before SIGSTOP lands.
        failed = [r for r in results if r is not None]
        assert len(failed) >= len(hung) - 2, results
        assert all(isinstance(r, BusError) and "within 0.5 s" in str(r) for r in failed), results
        server.resume()
        lines, seqs = events("a-5", range(100, 102))
        await asyncio.wait_for(publisher.publish("dev", "r", "a-5", lines, seqs), 10)
        assert publisher.stats.failed_frames == len(failed)
    finally:
        server.resume()
        await publisher.close()
        await nats_bus.close()
        server.stop()


async def test_publishing_resumes_after_a_nats_restart(tmp_path: Path) -> None:
    server = PrivateNats(tmp_path / "nats")
    server.start()
    nats_bus = NatsBus(server.url)
    await nats_bus.start()
    js = nats_bus.jetstream()
    layout = await ensure_stream(js, StreamLayout(name="RESTART", prefix="restart.events", shards=2))
    publisher = FramePublisher(js, layout, nats_bus.client.max_payload, ack_timeout=1.0)
    publisher.start()
    try:
        lines, seqs = events("a-6", range(1, 3))
        await publisher.publish("dev", "r", "a-6", lines, seqs)
        server.stop()
        lines, seqs = events("a-6", range(3, 5))
        with pytest.raises(BusError):
            await publisher.publish("dev", "r", "a-6", lines, seqs)
        server.start()
        # The connection comes back by itself; the stream was kept on disk.
        for _ in range(100):
            if nats_bus.connected:
                break
            await asyncio.sleep(0.1)
        lines, seqs = events("a-6", range(3, 5))
        await asyncio.wait_for(publisher.publish("dev", "r", "a-6", lines, seqs), 10)
        assert [s for _, _, s in await stored(js, layout)] == [[1, 2], [3, 4]]
    finally:
        await publisher.close()
        await nats_bus.close()
        server.stop()
