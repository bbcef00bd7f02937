"""One-off studies built on the benchmark library and the app: reliability, UI streaming cost, KV-cache quality,
and the GPU machine's session script (device/). Shared helpers: common.py."""
