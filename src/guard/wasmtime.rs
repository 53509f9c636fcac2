//! Wasmtime integration of the host-function guard (feature `wasmtime`).
