//! Ringfence Binary Authorization service (shell): the admission gate over the Store and the
//! audit log, and notifications with a durable outbox. The decisions themselves are the pure
//! functions of `ringfence-admission`.

pub mod artifacts;
pub mod gate;
pub mod manifest;
pub mod notify;

pub use gate::{Applied, Gate, GateError};
pub use notify::{NotifyConfig, Outbox, SinkConfig};
