"""Programs written against Ankaios's Python SDK (ankaios-sdk 1.0.1), run
unchanged as process workloads by tests/test_control_interface_sdk.py."""
