"""Ankaios's Control Interface for workloads (FIFOs carrying length-delimited
protobuf): `core` holds the access rules and the request → bus translation
(pure), `shell` the FIFOs and the bus calls."""
