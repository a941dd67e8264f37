"""The local stack: broker and Redis processes, worker processes (supervised), settings <-> environment.

Imports `runtime` only (never `stages` or `cli`): workers are started as processes by module name."""
