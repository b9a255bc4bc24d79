"""Ports for nats-server and the services: free, and out of the way of outgoing connections."""

from __future__ import annotations

from digits.natsserver import _ephemeral_low, free_port, port_free


def test_free_ports_come_from_below_the_ephemeral_range():
    # An outgoing connection or a port-0 bind cannot take such a port before it is bound.
    ports = [free_port() for _ in range(50)]
    assert len(set(ports)) == 50 and all(10000 <= p < _ephemeral_low() for p in ports)
    assert all(port_free(p) for p in ports)
