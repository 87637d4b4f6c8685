//! `ringfence machine`: the machines of a control plane (over `--server`): list them, put one
//! in a pool, make a one-time join token for a new one.

use std::time::Duration;

use anyhow::{Context, Result};
use clap::Subcommand;
use ringfence_api::pb;
use ringfence_controlplane::MachineRecord;

use crate::attest_cmd::Output;
use crate::client::{admin, call_error};
use crate::config::Settings;
use crate::exit;

#[derive(Debug, Subcommand)]
pub enum MachineCommand {
    /// The registered machines, their pools and when each was last heard from
    List {
        /// Output format
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// A one-time join token for a machine (shown once; only its hash is stored)
    Token {
        /// The machine id the token is for
        machine: String,
        /// How long it stays valid (at most 24h)
        #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
        ttl: Duration,
    },
    /// Put a machine in a pool (audited; takes effect at its next registration)
    Pool {
        /// The machine id
        machine: String,
        /// foundational, production or development
        pool: String,
    },
}

pub async fn run(cmd: MachineCommand, settings: &Settings) -> Result<u8> {
    let mut api = admin(settings)?.context(
        "machine commands talk to a control plane: pass --server ADDR (or set RINGFENCE_SERVER)",
    )?;
    match cmd {
        MachineCommand::List { output } => {
            let reply = api
                .list_machines(pb::ListRequest {})
                .await
                .map_err(|s| call_error("list machines", s))?
                .into_inner();
            let machines: Vec<MachineRecord> = reply
                .json
                .iter()
                .map(|j| serde_json::from_str(j))
                .collect::<Result<_, _>>()?;
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&machines)?),
                Output::Text => {
                    println!(
                        "{:<16} {:<13} {:<19} {:<16} LAST SEEN",
                        "MACHINE", "POOL", "TRUST", "ADDRESS"
                    );
                    for m in machines {
                        println!(
                            "{:<16} {:<13} {:<19} {:<16} {}",
                            m.id,
                            m.pool.to_string(),
                            serde_json::to_value(m.trust)?.as_str().unwrap_or_default(),
                            m.address,
                            humantime::format_rfc3339_seconds(
                                std::time::UNIX_EPOCH
                                    + Duration::from_millis(m.last_seen.as_millis())
                            )
                        );
                    }
                }
            }
        }
        MachineCommand::Token { machine, ttl } => {
            let reply = api
                .create_join_token(pb::CreateJoinTokenRequest {
                    machine: machine.clone(),
                    ttl_seconds: u32::try_from(ttl.as_secs()).unwrap_or(u32::MAX),
                })
                .await
                .map_err(|s| call_error("make a join token", s))?
                .into_inner();
            println!("{}", reply.token);
            eprintln!(
                "one-time join token for {machine}, valid until {} (pass it to `ringfence agent --join-token`)",
                humantime::format_rfc3339_seconds(
                    std::time::UNIX_EPOCH + Duration::from_millis(reply.expires_ms)
                )
            );
        }
        MachineCommand::Pool { machine, pool } => {
            api.assign_pool(pb::AssignPoolRequest {
                machine: machine.clone(),
                pool: pool.clone(),
            })
            .await
            .map_err(|s| call_error("assign the pool", s))?;
            println!("{machine} is in the {pool} pool from its next registration");
        }
    }
    Ok(exit::SUCCESS)
}
