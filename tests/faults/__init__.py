"""Faults proven continuously: random kills of services and NATS, a fuzz of every subject."""
