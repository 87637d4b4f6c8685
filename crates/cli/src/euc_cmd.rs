//! `ringfence euc`: end-user context tickets (transaction tokens). `mint` asks the control
//! plane's token service over `--server` for a token for the person in the certificate; on the
//! control-plane host, without `--server`, it signs with the token key in the data directory
//! (for tests and operators). `keys` prints the JWKS mesh proxies verify tokens with.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use ringfence_api::pb;
use ringfence_api::pb::tokens_client::TokensClient;
use ringfence_core::{Clock, SpiffeId, SystemClock};
use ringfence_identity::txn::{MintRequest, TokenService};

use crate::client::{call_error, channel};
use crate::config::Settings;
use crate::exit;

#[derive(Debug, Subcommand)]
pub enum EucCommand {
    /// Mint a transaction token (prints it; send it as the `txn-token` header)
    Mint {
        /// The user (with --server: must be the person in the certificate, the default)
        #[arg(long)]
        user: Option<String>,
        /// The workload the token is handed to, where its call chain starts
        #[arg(long = "for", value_name = "SPIFFE_ID")]
        for_workload: String,
        /// Why (`purp`)
        #[arg(long)]
        purpose: Option<String>,
        /// Lifetime (at most 5m)
        #[arg(long, default_value = "2m", value_parser = humantime::parse_duration)]
        ttl: Duration,
        /// Transaction context entries (`tctx`), KEY=VALUE, repeatable
        #[arg(long = "context", value_name = "KEY=VALUE")]
        context: Vec<String>,
    },
    /// Print the token service's keys (JWKS), for `[tokens] jwks` in a mesh config
    Keys,
}

fn local_service(settings: &Settings) -> Result<TokenService> {
    let td = crate::bab_cmd::trust_domain(settings)?;
    ringfence_controlplane::server::token_service(&settings.data_dir.join("identity"), &td)
        .map_err(anyhow::Error::msg)
        .context("the token key (run on the control-plane host, or pass --server)")
}

pub async fn run(cmd: EucCommand, settings: &Settings) -> Result<u8> {
    let remote = channel(settings)?.map(TokensClient::new);
    match cmd {
        EucCommand::Mint {
            user,
            for_workload,
            purpose,
            ttl,
            context,
        } => {
            let mut ctx = BTreeMap::new();
            for kv in &context {
                let Some((k, v)) = kv.split_once('=') else {
                    bail!("--context {kv:?}: expected KEY=VALUE");
                };
                ctx.insert(k.to_owned(), v.to_owned());
            }
            let token = match remote {
                Some(mut api) => {
                    if user.is_some() {
                        eprintln!(
                            "note: with --server the user is the person in the certificate; --user is checked by the server"
                        );
                    }
                    let ttl_seconds = u32::try_from(ttl.as_secs()).unwrap_or(u32::MAX);
                    api.mint(pb::MintTokenRequest {
                        for_workload,
                        purpose: purpose.unwrap_or_default(),
                        ttl_seconds,
                        context: ctx.into_iter().collect(),
                    })
                    .await
                    .map_err(|s| call_error("mint a transaction token", s))?
                    .into_inner()
                    .token
                }
                None => {
                    let user = user.context("--user is required without --server")?;
                    let for_workload = SpiffeId::parse(&for_workload)
                        .with_context(|| format!("--for {for_workload:?}"))?;
                    local_service(settings)?
                        .mint(
                            &MintRequest {
                                subject: user,
                                for_workload,
                                purpose,
                                context: ctx,
                                ttl,
                            },
                            SystemClock.now(),
                        )
                        .map_err(anyhow::Error::msg)?
                }
            };
            println!("{token}");
        }
        EucCommand::Keys => {
            let jwks = match remote {
                Some(mut api) => {
                    api.keys(pb::TokenKeysRequest {})
                        .await
                        .map_err(|s| call_error("token keys", s))?
                        .into_inner()
                        .jwks
                }
                None => local_service(settings)?.jwks(),
            };
            println!("{jwks}");
        }
    }
    Ok(exit::SUCCESS)
}
