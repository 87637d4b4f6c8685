//! The shared vocabulary of Ringfence: workload identities (SPIFFE IDs and trust domains),
//! the `Clock` that every expiry decision reads, and the small ids the other crates pass around.
//!
//! Everything here is pure: no I/O, no async. Untrusted strings become these types at the
//! boundary ("parse, don't validate"); deeper code only accepts the typed values.

mod clock;
mod ids;
mod spiffe;

pub use clock::{Clock, ManualClock, SystemClock, UnixTime};
pub use ids::{IdError, MachineId, Name};
pub use spiffe::{SpiffeId, SpiffeIdError, TrustDomain};
