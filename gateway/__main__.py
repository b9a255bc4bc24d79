"""``python -m gateway``: serve the gateway with waitress until SIGTERM/SIGINT."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time

from digits.config import Settings
from digits.service import configure
from gateway.app import create_app, make_server, stop_server
from gateway.context import bus_of


def main() -> int:
    """Run the gateway; exit 0 on a clean stop."""
    settings = configure("gateway")
    if settings is None:
        return 2
    host = os.environ.get("DIGITS_GATEWAY_HOST", "127.0.0.1")
    port = int(os.environ.get("DIGITS_PORT", "5000"))
    app = create_app({"SETTINGS": settings})
    server = make_server(app, host, port)
    bus_client = bus_of(app)

    def stop(signum: int, frame: object) -> None:
        threading.Thread(target=stop_server, args=(server,), daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    heartbeat = threading.Thread(target=_heartbeat, args=(bus_client, settings), daemon=True)
    heartbeat.start()
    logging.getLogger("gateway").info("serving on http://%s:%s/", host, port)
    try:
        server.run()
    except OSError:
        pass  # the listening socket was closed by stop()
    finally:
        bus_client.close()
    return 0


def _heartbeat(bus_client, settings: Settings) -> None:
    """Publish the gateway's own heartbeat, so other gateways and tools see it."""
    from digits import events

    started = time.time()
    instance = f"{os.uname().nodename}-{os.getpid()}"
    while True:
        beat = events.Heartbeat(
            service="gateway",
            instance=instance,
            host=os.uname().nodename,
            pid=os.getpid(),
            started_at=started,
            interval_s=settings.heartbeat_s,
        )
        nc = bus_client.nc
        if nc is not None and nc.is_connected:
            try:
                bus_client.call(nc.publish(events.subject_for(beat), events.encode(beat)), 5)
            except Exception:  # noqa: BLE001 - liveness is best effort
                pass
        time.sleep(settings.heartbeat_s)


if __name__ == "__main__":
    sys.exit(main())
