//! `ringfence store ...`: direct access to durable state, for operators (like `etcdctl`).
//! It works the same on the embedded store and on etcd.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand, ValueEnum};
use futures::StreamExt;
use ringfence_store::{
    EventKind, Expect, Key, PageRequest, Prefix, Revision, Store, StoreUrl, Versioned, open_store,
};
use serde_json::json;

use crate::config::Settings;
use crate::exit;

/// Subcommands of `ringfence store`.
#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Open the store and print its backend, location and current revision
    Status(OutputArgs),
    /// Print one key's value (raw bytes; --output json adds its revisions)
    Get {
        /// The key, e.g. /jobs/prod/web
        key: String,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Write one key
    Put {
        /// The key
        key: String,
        /// The value; read from --file or standard input when omitted
        value: Option<String>,
        /// Read the value from this file (`-` for standard input)
        #[arg(long, conflicts_with = "value")]
        file: Option<PathBuf>,
        #[command(flatten)]
        expect: ExpectArgs,
    },
    /// Delete one key
    Delete {
        /// The key
        key: String,
        #[command(flatten)]
        expect: ExpectArgs,
    },
    /// List the keys under a prefix, in key order
    List {
        /// The prefix [default: / (everything)]
        #[arg(default_value = "/")]
        prefix: String,
        /// Stop after this many keys (0: no limit)
        #[arg(long, default_value_t = 0)]
        limit: usize,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Print changes under a prefix as they happen (one line each), until interrupted
    Watch {
        /// The prefix [default: / (everything)]
        #[arg(default_value = "/")]
        prefix: String,
        /// Start with the changes at this revision (default: only new changes)
        #[arg(long, default_value_t = 0)]
        from: Revision,
        /// Exit after this many events (0: never)
        #[arg(long, default_value_t = 0)]
        count: usize,
        #[command(flatten)]
        output: OutputArgs,
    },
}

/// `--output`.
#[derive(Debug, Args)]
pub struct OutputArgs {
    /// Output format
    #[arg(long, value_enum, default_value_t = Output::Text)]
    output: Output,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Text,
    Json,
}

/// Compare-and-swap flags shared by `put` and `delete`.
#[derive(Debug, Args)]
pub struct ExpectArgs {
    /// Only if the key does not exist yet
    #[arg(long, conflicts_with = "expect_revision")]
    expect_absent: bool,
    /// Only if the key was last modified at exactly this revision
    #[arg(long, value_name = "REV")]
    expect_revision: Option<Revision>,
}

impl ExpectArgs {
    fn expect(&self) -> Expect {
        match (self.expect_absent, self.expect_revision) {
            (true, _) => Expect::Absent,
            (false, Some(r)) => Expect::Revision(r),
            (false, None) => Expect::Any,
        }
    }
}

/// The key asked for does not exist (exit code 4).
#[derive(Debug, thiserror::Error)]
#[error("key {0} not found")]
pub struct NotFound(pub String);

/// Runs a `store` subcommand.
pub async fn run(cmd: StoreCommand, settings: &Settings) -> Result<u8> {
    let store = open(settings).await?;
    let mut out = std::io::stdout().lock();
    match cmd {
        StoreCommand::Status(o) => {
            let revision = store.revision().await?;
            if o.output == Output::Json {
                let v = json!({ "backend": store.describe(), "url": settings.store.to_string(), "revision": revision });
                writeln!(out, "{v}")?;
            } else {
                writeln!(out, "store:    {}", store.describe())?;
                writeln!(out, "revision: {revision}")?;
            }
        }
        StoreCommand::Get { key, output } => {
            let key = Key::new(key)?;
            let v = store
                .get(&key)
                .await?
                .ok_or_else(|| NotFound(key.to_string()))?;
            if output.output == Output::Json {
                writeln!(out, "{}", versioned_json(&v))?;
            } else {
                out.write_all(&v.value)?;
            }
        }
        StoreCommand::Put {
            key,
            value,
            file,
            expect,
        } => {
            let key = Key::new(key)?;
            let bytes = match (value, file) {
                (Some(v), _) => v.into_bytes(),
                (None, Some(path)) if path.as_os_str() != "-" => std::fs::read(&path)
                    .with_context(|| format!("cannot read {}", path.display()))?,
                (None, _) => read_stdin(store.limits().max_value_len)?,
            };
            let revision = store
                .put(&key, bytes, expect.expect())
                .await
                .with_context(|| format!("cannot put {key}"))?;
            writeln!(out, "{revision}")?;
        }
        StoreCommand::Delete { key, expect } => {
            let key = Key::new(key)?;
            match store
                .delete(&key, expect.expect())
                .await
                .with_context(|| format!("cannot delete {key}"))?
            {
                Some(revision) => writeln!(out, "{revision}")?,
                None => return Err(NotFound(key.to_string()).into()),
            }
        }
        StoreCommand::List {
            prefix,
            limit,
            output,
        } => {
            list(
                store.as_ref(),
                &Prefix::new(prefix)?,
                limit,
                output.output,
                &mut out,
            )
            .await?
        }
        StoreCommand::Watch {
            prefix,
            from,
            count,
            output,
        } => {
            let prefix = Prefix::new(prefix)?;
            let mut stream = store.watch(&prefix, from).await?;
            let mut seen = 0usize;
            while let Some(event) = stream.next().await {
                let event = event?;
                let kind = match &event.kind {
                    EventKind::Put { .. } => "put",
                    EventKind::Delete => "delete",
                };
                if output.output == Output::Json {
                    let v = match &event.kind {
                        EventKind::Put { value, version, .. } => json!({
                            "revision": event.revision, "kind": kind, "key": event.key.as_str(),
                            "version": version, "value": value_json(value),
                        }),
                        EventKind::Delete => json!({
                            "revision": event.revision, "kind": kind, "key": event.key.as_str(),
                        }),
                    };
                    writeln!(out, "{v}")?;
                } else {
                    writeln!(out, "{} {kind} {}", event.revision, event.key)?;
                }
                out.flush()?;
                seen += 1;
                if count != 0 && seen >= count {
                    break;
                }
            }
        }
    }
    out.flush()?;
    Ok(exit::SUCCESS)
}

async fn open(settings: &Settings) -> Result<Arc<dyn Store>> {
    let store = open_store(&settings.store, &settings.data_dir).await;
    store.with_context(|| match &settings.store {
        StoreUrl::Redb(_) => format!(
            "cannot open the store (data dir {})",
            settings.data_dir.display()
        ),
        other => format!("cannot open the store {other}"),
    })
}

async fn list(
    store: &dyn Store,
    prefix: &Prefix,
    limit: usize,
    output: Output,
    out: &mut impl Write,
) -> Result<()> {
    let mut request = PageRequest::first(0);
    let mut printed = 0usize;
    if output == Output::Text {
        writeln!(
            out,
            "{:<48} {:>10} {:>8} {:>9}",
            "KEY", "REVISION", "VERSION", "BYTES"
        )?;
    }
    loop {
        let page = store.range(prefix, request.clone()).await?;
        for v in &page.items {
            if limit != 0 && printed >= limit {
                return Ok(());
            }
            match output {
                Output::Json => writeln!(out, "{}", versioned_json(v))?,
                Output::Text => writeln!(
                    out,
                    "{:<48} {:>10} {:>8} {:>9}",
                    v.key.as_str(),
                    v.mod_revision,
                    v.version,
                    v.value.len()
                )?,
            }
            printed += 1;
        }
        match page.next {
            Some(next) => request.after = Some(next),
            None => return Ok(()),
        }
    }
}

fn versioned_json(v: &Versioned) -> serde_json::Value {
    json!({
        "key": v.key.as_str(),
        "create_revision": v.create_revision,
        "mod_revision": v.mod_revision,
        "version": v.version,
        "value": value_json(&v.value),
    })
}

/// A value as JSON: the UTF-8 text when it is text, else `{"hex": "..."}`.
fn value_json(bytes: &[u8]) -> serde_json::Value {
    match std::str::from_utf8(bytes) {
        Ok(s) => json!(s),
        Err(_) => {
            let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            json!({ "hex": hex })
        }
    }
}

fn read_stdin(max: usize) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    let limit = u64::try_from(max).unwrap_or(u64::MAX).saturating_add(1);
    std::io::stdin().take(limit).read_to_end(&mut buf)?;
    if buf.len() > max {
        bail!("the value on standard input is larger than the store accepts ({max} bytes)");
    }
    Ok(buf)
}
