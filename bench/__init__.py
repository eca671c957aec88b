"""make bench: every benchmark of ank-zenoh."""
