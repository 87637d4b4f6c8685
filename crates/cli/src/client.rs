//! The client side of `--server`: a person's calls to the control plane's Admin API over
//! mTLS with their user certificate, the server checked to be
//! `spiffe://<td>/ringfence/controlplane`.

use std::sync::Arc;

use anyhow::{Context, Result};
use ringfence_api::pb::admin_client::AdminClient;
use ringfence_core::SystemClock;
use ringfence_identity::files;
use tonic::transport::Channel;

use crate::config::Settings;

/// The Admin API of `settings.server`, if one is set.
pub fn admin(settings: &Settings) -> Result<Option<AdminClient<Channel>>> {
    Ok(channel(settings)?.map(|c| {
        AdminClient::new(c)
            .max_decoding_message_size(ringfence_api::MAX_MESSAGE)
            .max_encoding_message_size(ringfence_api::MAX_MESSAGE)
    }))
}

/// A channel to `settings.server` with the person's certificate, if a server is set.
pub fn channel(settings: &Settings) -> Result<Option<Channel>> {
    let Some(server) = settings.server else {
        return Ok(None);
    };
    let dir = settings
        .credentials
        .clone()
        .unwrap_or_else(|| settings.data_dir.join("admin"));
    let material = files::load(&dir).map_err(anyhow::Error::msg).with_context(|| {
        format!(
            "no user certificate in {} (--credentials DIR; `ringfence server` writes the bootstrap admin's to <data-dir>/admin)",
            dir.display()
        )
    })?;
    let (_, rx) = tokio::sync::watch::channel(Some(material));
    Ok(Some(
        ringfence_api::transport::control_plane_channel(server, rx, Arc::new(SystemClock))
            .map_err(anyhow::Error::msg)?,
    ))
}

/// A failed call, as the user reads it; its gRPC code picks the exit code.
#[derive(Debug)]
pub struct ApiError {
    /// What was being done.
    pub what: String,
    /// The server's status code.
    pub code: tonic::Code,
    /// The server's message.
    pub message: String,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.code {
            tonic::Code::Unavailable => write!(
                f,
                "{}: the control plane is unreachable or could not do it: {}",
                self.what, self.message
            ),
            tonic::Code::PermissionDenied | tonic::Code::Unauthenticated => {
                write!(f, "{}: refused: {}", self.what, self.message)
            }
            _ => write!(f, "{}: {}", self.what, self.message),
        }
    }
}

impl std::error::Error for ApiError {}

/// `s` as an [`ApiError`] while doing `what`.
pub fn call_error(what: &str, s: tonic::Status) -> anyhow::Error {
    anyhow::Error::new(ApiError {
        what: what.to_owned(),
        code: s.code(),
        message: s.message().to_owned(),
    })
}
