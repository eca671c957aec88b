"""ank-zenoh services: one package per process, plus the shared bus adapter."""
