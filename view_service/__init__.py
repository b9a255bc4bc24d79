"""Inference and visualization over NATS request/reply, served by a queue group."""
