//! Crash-test writer for the audit log: appends from 16 tasks as fast as it can with a
//! checkpoint publisher running, printing `ACK <index> <target>` per acknowledged append and
//! `CP <size> <root hex>` per published checkpoint. The kill -9 test kills it at random.
//!
//! Usage: `ringfence-audit-writer <data-dir> <log key file> <cycle>`

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use ringfence_audit::checkpoint::Checkpoint;
use ringfence_audit::note::Signer;
use ringfence_audit::rfc9162::hex;
use ringfence_audit::{AuditLog, Decision, Event, LogOptions};
use ringfence_core::{Clock, SpiffeId, SystemClock};
use ringfence_store::{RedbOptions, RedbStore, Store};
use tokio::sync::mpsc;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(
        args.next()
            .context("usage: <data-dir> <key file> <cycle>")?,
    );
    let signer = Signer::parse(&std::fs::read_to_string(
        args.next().context("missing key file")?,
    )?)?;
    let cycle: u64 = args.next().context("missing cycle")?.parse()?;
    let store: Arc<dyn Store> = Arc::new(RedbStore::open_in(&dir, RedbOptions::default())?);
    let options = LogOptions {
        origin: signer.name().to_owned(),
        checkpoint_interval: Duration::from_millis(100),
        ..LogOptions::default()
    };
    let log = AuditLog::open(store, signer, options).await?;
    let _publisher = log.spawn_publisher();
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    let mut checkpoints = log.subscribe_checkpoints();
    let cp_tx = tx.clone();
    let (verifier, origin) = (log.verifier(), log.origin().to_owned());
    tokio::spawn(async move {
        while checkpoints.changed().await.is_ok() {
            let text = checkpoints
                .borrow_and_update()
                .as_ref()
                .map(|p| p.text.clone());
            let Some(text) = text else { continue };
            let Ok((cp, _)) = Checkpoint::open(text.as_bytes(), &verifier, &origin) else {
                continue;
            };
            if cp_tx
                .send(format!("CP {} {}", cp.size, hex(&cp.root)))
                .is_err()
            {
                return;
            }
        }
    });
    let actor = SpiffeId::parse("spiffe://crash.test/ringfence/writer")?;
    for task in 0..16u64 {
        let (log, tx, actor) = (log.clone(), tx.clone(), actor.clone());
        tokio::spawn(async move {
            for i in 0u64.. {
                let target = format!("c{cycle}-{task}-{i}");
                let event = Event::new(
                    SystemClock.now(),
                    actor.clone(),
                    "crash.append",
                    &target,
                    Decision::Info,
                    "",
                );
                let index = log.append(&event).await?;
                if tx.send(format!("ACK {index} {target}")).is_err() {
                    break;
                }
            }
            Ok::<(), anyhow::Error>(())
        });
    }
    drop(tx);
    let mut out = std::io::stdout().lock();
    writeln!(out, "READY")?;
    out.flush()?;
    while let Some(line) = rx.recv().await {
        writeln!(out, "{line}")?;
        out.flush()?;
    }
    Ok(())
}
