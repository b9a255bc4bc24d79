"""Publishing dataset.create commands for any data extension, as any system would."""

from __future__ import annotations

import uuid

import msgpack
import nats

from digits import subjects


async def create_dataset(nats_url: str, name: str, extension: str, form: dict) -> str:
    """Publish a plain-msgpack dataset.create command for ``extension``; the command id."""
    nc = await nats.connect(nats_url)
    try:
        command_id = uuid.uuid4().hex
        payload = {
            "type": "dataset.create",
            "event_id": command_id,
            "name": name,
            "extension": extension,
            "form": form,
        }
        await nc.jetstream().publish(
            subjects.CMD_DATASET_CREATE,
            msgpack.packb(payload),
            headers={"Nats-Msg-Id": f"create:{command_id}"},
        )
        return command_id
    finally:
        await nc.close()
