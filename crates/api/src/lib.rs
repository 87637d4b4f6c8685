//! The Ringfence control-plane API: the gRPC services agents (`Node`) and people (`Admin`)
//! call, generated from `proto/ringfence/v1/controlplane.proto`, and the mTLS transport both
//! ends use ([`transport`]): TLS 1.3 with SVIDs, the caller's verified SPIFFE ID attached to
//! every request.

pub mod transport;

#[allow(
    missing_docs,
    clippy::all,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
pub mod pb {
    //! Generated from `proto/ringfence/v1/controlplane.proto` by build.rs.
    tonic::include_proto!("ringfence.v1");
}

/// The largest message either side accepts (an image layer arrives in chunks well below it).
pub const MAX_MESSAGE: usize = 4 << 20;

/// The size of the chunks an image is streamed in.
pub const IMAGE_CHUNK: usize = 1 << 20;
