//! Notifications: webhook and file sinks behind a durable outbox.
//!
//! A message is written to the outbox (one file, fsynced, renamed into place) before anything
//! tries to deliver it, so a crash or an unreachable receiver loses nothing: delivery retries
//! with exponential backoff (1 s doubling to 5 min) until the sink accepts it. A message can
//! wait (`not_before`): the owning team hears of a break-glass deploy after a configurable
//! delay, the central security team at once.
//!
//! Webhooks are HTTP/1.1 POSTs of the JSON message. With a `secret_file`, each request carries
//! `X-Ringfence-Signature: sha256=<hex HMAC-SHA256 of the body>` so the receiver can tell the
//! message came from Ringfence. Only `http://` URLs are supported in this release: terminate
//! TLS in front of the receiver, or use a file sink.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ringfence_core::{Clock, UnixTime};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Longest wait between delivery attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// How long one webhook request may take.
pub const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(5);
/// Attempts before a message is moved to `dead/` for an operator.
pub const MAX_ATTEMPTS: u32 = 200;

/// Why a notification could not be queued or delivered.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// The outbox directory failed.
    #[error("notification outbox {path}: {source}")]
    Outbox {
        /// Where.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A sink is misconfigured or unknown.
    #[error("notification sink {0}")]
    Config(String),
    /// Delivery failed (it will be retried).
    #[error("delivery to {sink} failed: {why}")]
    Delivery {
        /// The sink.
        sink: String,
        /// Why.
        why: String,
    },
}

/// One sink, as configured.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum SinkConfig {
    /// HTTP POST of the JSON message.
    Webhook {
        /// `http://host:port/path`.
        url: String,
        /// A file holding the HMAC secret (optional).
        #[serde(default)]
        secret_file: Option<PathBuf>,
    },
    /// One JSON line appended per message (fsynced).
    File {
        /// The file.
        path: PathBuf,
    },
}

/// Notification settings (`[notify]` in the daemon configuration).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub struct NotifyConfig {
    /// The central security team's sink name.
    #[serde(default = "security")]
    pub security: String,
    /// How long after a break-glass deploy the owning team's sink is told.
    #[serde(default = "hour", with = "ringfence_admission::policy::duration")]
    pub owners_delay: Duration,
    /// The sinks by name.
    #[serde(default)]
    pub sinks: BTreeMap<String, SinkConfig>,
    /// Where messages for a sink that is not configured go (`<dir>/<sink>.jsonl`, with a
    /// warning), so a misnamed or missing sink loses nothing. Unset: such messages are refused.
    #[serde(default)]
    pub fallback_dir: Option<PathBuf>,
}

fn security() -> String {
    "security".into()
}

fn hour() -> Duration {
    Duration::from_secs(3600)
}

impl Default for NotifyConfig {
    fn default() -> Self {
        Self {
            security: security(),
            owners_delay: hour(),
            sinks: BTreeMap::new(),
            fallback_dir: None,
        }
    }
}

/// A queued message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Message {
    /// Unique id (also the file name).
    pub id: String,
    /// The sink's name.
    pub sink: String,
    /// Not delivered before.
    pub not_before: UnixTime,
    /// Attempts so far.
    pub attempts: u32,
    /// The last failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// The event kind (`bab.break-glass`, `bab.flagged`, ...), also sent as a header.
    pub kind: String,
    /// The JSON body.
    pub body: serde_json::Value,
}

/// The durable outbox and the sinks it delivers to.
#[derive(Debug, Clone)]
pub struct Outbox {
    dir: PathBuf,
    config: NotifyConfig,
}

fn outbox_err(path: &Path) -> impl FnOnce(std::io::Error) -> NotifyError + '_ {
    move |source| NotifyError::Outbox {
        path: path.to_owned(),
        source,
    }
}

/// What one delivery pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pass {
    /// Delivered and removed.
    pub delivered: usize,
    /// Failed this time (kept, retried later).
    pub failed: usize,
    /// Not yet due.
    pub waiting: usize,
    /// Given up on (moved to `dead/`).
    pub dead: usize,
}

impl Outbox {
    /// Opens (creating) the outbox in `dir`. Every sink must be valid.
    pub fn open(dir: &Path, config: NotifyConfig) -> Result<Self, NotifyError> {
        for (name, sink) in &config.sinks {
            if let SinkConfig::Webhook { url, .. } = sink {
                parse_http_url(url).map_err(|e| NotifyError::Config(format!("{name:?}: {e}")))?;
            }
        }
        std::fs::create_dir_all(dir.join("dead")).map_err(outbox_err(dir))?;
        Ok(Self {
            dir: dir.to_owned(),
            config,
        })
    }

    /// The settings.
    pub fn config(&self) -> &NotifyConfig {
        &self.config
    }

    /// Queues a message durably. An unknown sink is an error (a misnamed sink in a policy must
    /// not silently drop alerts).
    pub fn enqueue(
        &self,
        sink: &str,
        kind: &str,
        body: serde_json::Value,
        not_before: UnixTime,
    ) -> Result<Message, NotifyError> {
        if !self.config.sinks.contains_key(sink) && self.config.fallback_dir.is_none() {
            return Err(NotifyError::Config(format!(
                "{sink:?} is not configured (configured: {})",
                self.config
                    .sinks
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        let msg = Message {
            id: ringfence_audit::event::new_event_id(),
            sink: sink.to_owned(),
            not_before,
            attempts: 0,
            last_error: None,
            kind: kind.to_owned(),
            body,
        };
        self.write(&msg)?;
        Ok(msg)
    }

    fn write(&self, msg: &Message) -> Result<(), NotifyError> {
        let path = self.dir.join(format!("{}.json", msg.id));
        let tmp = self.dir.join(format!(".{}.tmp", msg.id));
        let bytes = serde_json::to_vec(msg).unwrap_or_default();
        let mut f = std::fs::File::create(&tmp).map_err(outbox_err(&tmp))?;
        f.write_all(&bytes).map_err(outbox_err(&tmp))?;
        f.sync_all().map_err(outbox_err(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(outbox_err(&path))?;
        std::fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(outbox_err(&self.dir))?;
        Ok(())
    }

    /// Messages waiting, oldest first.
    pub fn pending(&self) -> Result<Vec<Message>, NotifyError> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.dir).map_err(outbox_err(&self.dir))? {
            let entry = entry.map_err(outbox_err(&self.dir))?;
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            let Ok(bytes) = std::fs::read(&path) else {
                continue;
            };
            match serde_json::from_slice::<Message>(&bytes) {
                Ok(m) => out.push(m),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "unreadable outbox message left in place")
                }
            }
        }
        out.sort_by(|a, b| (a.not_before, &a.id).cmp(&(b.not_before, &b.id)));
        Ok(out)
    }

    /// Delivers every message that is due; failures are kept with a later `not_before`.
    pub async fn deliver_due(&self, clock: &dyn Clock) -> Result<Pass, NotifyError> {
        let mut pass = Pass::default();
        for mut msg in self.pending()? {
            let now = clock.now();
            if msg.not_before > now {
                pass.waiting += 1;
                continue;
            }
            let path = self.dir.join(format!("{}.json", msg.id));
            match self.deliver(&msg).await {
                Ok(()) => {
                    std::fs::remove_file(&path).map_err(outbox_err(&path))?;
                    pass.delivered += 1;
                    tracing::info!(sink = %msg.sink, kind = %msg.kind, id = %msg.id, "notification delivered");
                }
                Err(e) => {
                    msg.attempts += 1;
                    msg.last_error = Some(e.to_string());
                    let backoff = Duration::from_secs(1u64 << msg.attempts.min(9)).min(MAX_BACKOFF);
                    msg.not_before = now.saturating_add(backoff);
                    tracing::warn!(sink = %msg.sink, attempts = msg.attempts, error = %e, "notification not delivered; will retry");
                    if msg.attempts >= MAX_ATTEMPTS {
                        let dead = self.dir.join("dead").join(format!("{}.json", msg.id));
                        std::fs::write(&dead, serde_json::to_vec(&msg).unwrap_or_default())
                            .map_err(outbox_err(&dead))?;
                        std::fs::remove_file(&path).map_err(outbox_err(&path))?;
                        pass.dead += 1;
                    } else {
                        self.write(&msg)?;
                        pass.failed += 1;
                    }
                }
            }
        }
        Ok(pass)
    }

    async fn deliver(&self, msg: &Message) -> Result<(), NotifyError> {
        let fail = |why: String| NotifyError::Delivery {
            sink: msg.sink.clone(),
            why,
        };
        let fallback;
        let sink = match (self.config.sinks.get(&msg.sink), &self.config.fallback_dir) {
            (Some(s), _) => s,
            (None, Some(dir)) => {
                tracing::warn!(sink = %msg.sink, dir = %dir.display(), "sink not configured: writing to a file in the fallback directory");
                fallback = SinkConfig::File {
                    path: dir.join(format!("{}.jsonl", msg.sink)),
                };
                &fallback
            }
            (None, None) => return Err(fail("the sink is no longer configured".into())),
        };
        let envelope = serde_json::json!({
            "id": msg.id, "kind": msg.kind, "sink": msg.sink, "message": msg.body,
        });
        match sink {
            SinkConfig::File { path } => {
                let mut line = serde_json::to_vec(&envelope).unwrap_or_default();
                line.push(b'\n');
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent)
                        .map_err(|e| fail(format!("{}: {e}", parent.display())))?;
                }
                let mut f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|e| fail(format!("{}: {e}", path.display())))?;
                f.write_all(&line)
                    .and_then(|()| f.sync_data())
                    .map_err(|e| fail(format!("{}: {e}", path.display())))
            }
            SinkConfig::Webhook { url, secret_file } => {
                let secret = match secret_file {
                    Some(p) => {
                        Some(std::fs::read(p).map_err(|e| fail(format!("{}: {e}", p.display())))?)
                    }
                    None => None,
                };
                let body = serde_json::to_vec(&envelope).unwrap_or_default();
                tokio::time::timeout(
                    WEBHOOK_TIMEOUT,
                    post(url, &msg.kind, &msg.id, &body, secret.as_deref()),
                )
                .await
                .map_err(|_| fail(format!("no answer within {WEBHOOK_TIMEOUT:?}")))?
                .map_err(fail)
            }
        }
    }
}

/// `http://host:port/path` → (host:port, path).
fn parse_http_url(url: &str) -> Result<(String, String), String> {
    let rest = url.strip_prefix("http://").ok_or_else(|| {
        format!(
            "webhook URL {url:?} must start with http:// (TLS: put a terminating proxy in front)"
        )
    })?;
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, "/"),
    };
    if authority.is_empty() || authority.contains('@') {
        return Err(format!("webhook URL {url:?} has no usable host"));
    }
    let authority = if authority.contains(':') {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    };
    if path.bytes().any(|b| b.is_ascii_control() || b == b' ') {
        return Err(format!(
            "webhook URL {url:?} has spaces or control characters"
        ));
    }
    Ok((authority, path.to_owned()))
}

/// The `X-Ringfence-Signature` value for a body.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret);
    let tag = aws_lc_rs::hmac::sign(&key, body);
    let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

async fn post(
    url: &str,
    kind: &str,
    id: &str,
    body: &[u8],
    secret: Option<&[u8]>,
) -> Result<(), String> {
    let (authority, path) = parse_http_url(url)?;
    let mut stream = tokio::net::TcpStream::connect(&authority)
        .await
        .map_err(|e| format!("connect {authority}: {e}"))?;
    let mut head = format!(
        "POST {path} HTTP/1.1\r\nHost: {authority}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nUser-Agent: ringfence/{}\r\nX-Ringfence-Event: {kind}\r\nX-Ringfence-Delivery: {id}\r\nConnection: close\r\n",
        body.len(),
        env!("CARGO_PKG_VERSION")
    );
    if let Some(secret) = secret {
        head.push_str(&format!(
            "X-Ringfence-Signature: {}\r\n",
            signature(secret, body)
        ));
    }
    head.push_str("\r\n");
    stream
        .write_all(head.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    stream.write_all(body).await.map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 1024];
    let mut got = 0;
    while got < 12 {
        let slot = buf.get_mut(got..).unwrap_or_default();
        let n = stream.read(slot).await.map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        got += n;
    }
    let status = std::str::from_utf8(buf.get(..got).unwrap_or_default())
        .ok()
        .and_then(|s| s.split_whitespace().nth(1))
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or_else(|| "the receiver's answer is not HTTP".to_owned())?;
    if (200..300).contains(&status) {
        Ok(())
    } else {
        Err(format!("the receiver answered HTTP {status}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhook_urls_are_checked() {
        assert_eq!(
            parse_http_url("http://127.0.0.1:9000/hook").ok(),
            Some(("127.0.0.1:9000".into(), "/hook".into()))
        );
        assert_eq!(
            parse_http_url("http://sec.acme.test").ok(),
            Some(("sec.acme.test:80".into(), "/".into()))
        );
        for bad in [
            "https://x/y",
            "ftp://x",
            "http:///x",
            "http://u@h/x",
            "http://h/a b",
        ] {
            assert!(parse_http_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn signatures_are_hmac_sha256_hex() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
