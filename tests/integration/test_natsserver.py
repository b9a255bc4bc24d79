"""The embedded nats-server: room for an inference request carrying an 8 MiB image."""

from __future__ import annotations

from digits.inference import MAX_IMAGE_BYTES
from digits.natsserver import MAX_PAYLOAD


async def test_a_request_with_the_largest_image_fits(nc):
    assert nc.max_payload == MAX_PAYLOAD > MAX_IMAGE_BYTES

    async def echo_size(msg) -> None:
        await msg.respond(str(len(msg.data)).encode())

    sub = await nc.subscribe("echo.size", cb=echo_size)
    try:
        reply = await nc.request("echo.size", b"x" * (MAX_IMAGE_BYTES + 4096), timeout=10)
    finally:
        await sub.unsubscribe()
    assert int(reply.data) == MAX_IMAGE_BYTES + 4096
