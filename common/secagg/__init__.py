"""Secure aggregation's building blocks (docs/secure-aggregation.md): Shamir sharing, key agreement and authenticated
encryption, mask expansion, fixed-point encoding, the neighbour graph. Pure functions; the protocol is in
server/secagg/ and client/secagg.py."""
