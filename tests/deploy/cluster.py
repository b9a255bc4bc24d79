"""A real 3-node JetStream cluster on loopback, each node with its own store."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

from digits.natsserver import NatsServer, free_port
from tests.deploy.natsconf import node_config


class Cluster:
    """Three nats-server processes with routes to each other and deploy/nats/accounts.conf."""

    def __init__(self, root: Path, size: int = 3) -> None:
        cluster_ports = tuple(free_port() for _ in range(size))
        self.nodes: list[NatsServer] = []
        for i, port in enumerate(cluster_ports):
            config = node_config(root / "conf", f"node{i}", port, cluster_ports)
            server = NatsServer(
                root / f"node{i}",
                extra_args=("-c", str(config)),
                log_file=root / f"node{i}.log",
            )
            self.nodes.append(server)

    @property
    def urls(self) -> list[str]:
        """Client URLs of every node, dead or alive."""
        return [node.url for node in self.nodes]

    def start(self) -> Cluster:
        """Start every node; each answers its health check once JetStream is on."""
        for node in self.nodes:
            node.start(timeout=30)
        return self

    def stop(self) -> None:
        """Stop every node that still runs."""
        for node in self.nodes:
            node.stop()

    def by_name(self, name: str) -> NatsServer:
        """The node whose server name is ``name``."""
        for node in self.nodes:
            if f"digits-{node.port}" == name:
                return node
        raise KeyError(f"no node called {name!r} in {[f'digits-{n.port}' for n in self.nodes]}")

    def meta_leader(self) -> str | None:
        """The JetStream meta leader as the first live node sees it, or None."""
        for node in self.nodes:
            if node.proc is None or node.proc.poll() is not None:
                continue
            url = f"http://127.0.0.1:{node.monitor_port}/jsz"
            try:
                with urllib.request.urlopen(url, timeout=2) as resp:
                    doc = json.load(resp)
            except OSError:
                continue
            return (doc.get("meta_cluster") or {}).get("leader") or None
        return None

    def log(self) -> str:
        """Every node's log, for failure messages."""
        parts = []
        for node in self.nodes:
            if node.log_file and node.log_file.exists():
                parts.append(f"--- {node.log_file.name}\n{node.log_file.read_text()[-4000:]}")
        return "\n".join(parts)
