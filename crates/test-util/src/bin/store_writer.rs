//! Crash-test writer: opens a redb store and writes as fast as it can from 16 concurrent
//! tasks, single puts and 3-key transactions alternately, printing one `ACK` line per
//! acknowledged write. The kill -9 test kills it at random moments and then checks that every
//! acknowledged write survived and that no transaction is half applied.
//!
//! Usage: `ringfence-store-writer <store-file> <cycle>`

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use ringfence_store::{Expect, Key, RedbOptions, RedbStore, Store, Txn};
use tokio::sync::mpsc;

const TASKS: usize = 16;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let path = PathBuf::from(
        args.next()
            .context("usage: ringfence-store-writer <store-file> <cycle>")?,
    );
    let cycle: u64 = args.next().context("missing cycle")?.parse()?;
    let store = RedbStore::open(&path, RedbOptions::default())?;
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    for task in 0..TASKS {
        let (store, tx) = (store.clone(), tx.clone());
        tokio::spawn(async move {
            for i in 0u64.. {
                let value = format!("c{cycle}-{task}-{i}");
                let line = if i % 2 == 0 {
                    let key = Key::new(format!("/w/c{cycle}/p/{task}/{i}"))?;
                    let rev = store.put(&key, value.into_bytes(), Expect::Absent).await?;
                    format!("ACK put {task} {i} {rev}")
                } else {
                    let mut txn = Txn::new();
                    for part in ["a", "b", "c"] {
                        txn = txn.put(
                            Key::new(format!("/w/c{cycle}/t/{task}/{i}/{part}"))?,
                            value.clone().into_bytes(),
                        );
                    }
                    let rev = store.txn(txn).await?.revision;
                    format!("ACK txn {task} {i} {rev}")
                };
                if tx.send(line).is_err() {
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
        // One line per write, flushed at once: a line the parent read is a write that was
        // acknowledged before the kill.
        writeln!(out, "{line}")?;
        out.flush()?;
    }
    Ok(())
}
