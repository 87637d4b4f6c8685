//! Test fixtures shared by Ringfence's crates: real etcd members and clusters on loopback
//! ports in temporary directories (stopped by PID), the Store conformance suite that every
//! backend must pass, and helpers for crash tests.
//!
//! A test that needs an external program (etcd) fails loudly when it is missing; it never
//! passes by skipping. `scripts/test.sh` installs what is needed.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

pub mod conformance;
pub mod etcd;
pub mod probe;
pub mod process;

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> std::io::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}
