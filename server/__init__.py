"""The gRPC server, its client, the CLI and the HTTP console.

gRPC's fork handlers are turned off before anything here imports grpc: a shard's snapshot part
is written by a child process forked from the serving process (engine/persist/forked_writer.py),
which never calls gRPC, and the handlers would only make that fork wait for gRPC's threads.
"""
import os

os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
