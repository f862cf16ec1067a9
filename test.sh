#!/usr/bin/env bash
# The project's test command: installs what the tests need, then runs every
# test (unit, integration with real server processes over UNIX sockets and
# TCP loopback).
set -euo pipefail
cd "$(dirname "$0")"
cargo test --workspace --release
