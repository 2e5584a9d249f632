MB_bytes = 1_000_000
MiB_bytes = 1 << 20
GB_bytes = 1_000_000_000
GiB_bytes = 1 << 30
