"""Chaos tests: real masters and daemons killed, bytes flipped on the wire, lying volunteers."""
