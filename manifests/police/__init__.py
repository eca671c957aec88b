"""Stand-in programs of the police monitoring example (manifests/police.yaml):
small programs that do real work over Zenoh in place of the seed's CARLA,
Kuksa and camera containers. See docs/police.md."""
