//! Full verification of a stored log: recompute the whole tree from the entries and check it
//! against every stored node hash, the head, and every signed checkpoint in the store (plus,
//! optionally, a checkpoint obtained elsewhere, such as from a witness).
//!
//! The first problem found is reported with the entry index or tree size where it is.

use std::collections::BTreeMap;
use std::sync::Arc;

use ringfence_store::{PageRequest, Store};

use crate::checkpoint::Checkpoint;
use crate::event::Event;
use crate::log::{AuditError, Layout, decode_head, decode_record};
use crate::note::Verifier;
use crate::rfc9162::{self, Frontier, Hash};

/// Why a log failed verification; every variant says where.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// An entry, or a run of entries, is damaged or does not match its stored hashes.
    #[error("{}: {problem}", where_(*first, *index))]
    Entry {
        /// First entry of the damaged run.
        first: u64,
        /// Last entry of the damaged run.
        index: u64,
        /// What.
        problem: String,
    },
    /// Entries are missing.
    #[error("entry {index} is missing (the log claims {size} entries)")]
    Missing {
        /// First missing index.
        index: u64,
        /// The size the head or a checkpoint claims.
        size: u64,
    },
    /// The tree at some size does not hash to what a signed statement says.
    #[error("the first {size} entries do not hash to the root in {what}: history was rewritten")]
    Root {
        /// Tree size.
        size: u64,
        /// Which statement (`the head`, `the checkpoint of size N`, ...).
        what: String,
    },
    /// A signed checkpoint is bad.
    #[error("checkpoint {what}: {problem}")]
    Checkpoint {
        /// Which.
        what: String,
        /// Why.
        problem: String,
    },
    /// The log is shorter than a checkpoint says.
    #[error(
        "the log has {entries} entries but {what} covers {size}: entries were removed (truncation or rollback)"
    )]
    Truncated {
        /// Entries present.
        entries: u64,
        /// The checkpoint size.
        size: u64,
        /// Which checkpoint.
        what: String,
    },
    /// Reading failed.
    #[error(transparent)]
    Audit(#[from] AuditError),
}

/// What a successful verification covered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// Entries verified.
    pub size: u64,
    /// Root of the whole log.
    pub root: Hash,
    /// Signed checkpoints checked against the tree.
    pub checkpoints: usize,
}

/// Verifies the log under `prefix` with the log's public key and origin. `trusted` is an
/// extra signed checkpoint from elsewhere that the log must be consistent with. `progress` is
/// called with `(entries verified, total)` every 10,000 entries.
pub async fn verify_log(
    store: &Arc<dyn Store>,
    prefix: &str,
    verifier: &Verifier,
    origin: &str,
    trusted: Option<&[u8]>,
    mut progress: impl FnMut(u64, u64),
) -> Result<VerifyReport, VerifyError> {
    let layout = Layout::new(prefix);
    let store_err = |e: ringfence_store::StoreError| VerifyError::Audit(AuditError::Store(e));

    // Every signed statement of a size and root: the checkpoints in the store, a trusted one.
    let mut claims: BTreeMap<u64, Vec<(Hash, String)>> = BTreeMap::new();
    let mut request = PageRequest::first(0);
    let mut checkpoints = 0;
    loop {
        let page = store
            .range(&layout.checkpoints().map_err(store_err)?, request.clone())
            .await
            .map_err(store_err)?;
        for item in &page.items {
            let what = format!("stored at {}", item.key);
            let cp = open_checkpoint(&item.value, verifier, origin, &what)?;
            claims
                .entry(cp.size)
                .or_default()
                .push((cp.root, format!("the checkpoint of size {}", cp.size)));
            checkpoints += 1;
        }
        match page.next {
            Some(next) => request.after = Some(next),
            None => break,
        }
    }
    if let Some(v) = store
        .get(&layout.checkpoint_latest().map_err(store_err)?)
        .await
        .map_err(store_err)?
    {
        let cp = open_checkpoint(&v.value, verifier, origin, "latest")?;
        claims
            .entry(cp.size)
            .or_default()
            .push((cp.root, "the latest checkpoint".into()));
        checkpoints += 1;
    }
    if let Some(bytes) = trusted {
        let cp = open_checkpoint(bytes, verifier, origin, "given with --trusted-checkpoint")?;
        claims
            .entry(cp.size)
            .or_default()
            .push((cp.root, "the trusted checkpoint".into()));
        checkpoints += 1;
    }
    let head = store
        .get(&layout.head().map_err(store_err)?)
        .await
        .map_err(store_err)?;
    let (size, head_root) = match head {
        Some(h) => decode_head(&h.value).ok_or_else(|| VerifyError::Checkpoint {
            what: "head".into(),
            problem: "the head record is malformed".into(),
        })?,
        None => (0, rfc9162::empty_root()),
    };
    claims
        .entry(size)
        .or_default()
        .push((head_root, "the head".into()));
    if let Some((&largest, statements)) = claims.iter().next_back()
        && largest > size
    {
        let what = statements
            .first()
            .map(|(_, w)| w.clone())
            .unwrap_or_default();
        return Err(VerifyError::Truncated {
            entries: size,
            size: largest,
            what,
        });
    }

    let mut frontier = Frontier::default();
    check_claims(&claims, &frontier)?;
    let mut request = PageRequest::first(0);
    'pages: loop {
        let page = store
            .range(&layout.entries().map_err(store_err)?, request.clone())
            .await
            .map_err(store_err)?;
        for item in &page.items {
            let index = frontier.size();
            if index == size {
                // Records past the head belong to an interrupted append: not part of the log.
                break 'pages;
            }
            let found = layout
                .index_of(&item.key)
                .ok_or_else(|| VerifyError::Entry {
                    first: index,
                    index,
                    problem: format!("unexpected key {} among the entries", item.key),
                })?;
            if found != index {
                return Err(VerifyError::Missing { index, size });
            }
            let (stored, bytes) = decode_record(&item.value).ok_or_else(|| VerifyError::Entry {
                first: index,
                index,
                problem: "the record is malformed".into(),
            })?;
            Event::decode(bytes).map_err(|e| VerifyError::Entry {
                first: index,
                index,
                problem: e.to_string(),
            })?;
            let completed = frontier.push(rfc9162::leaf_hash(bytes));
            if let Some(level) = first_difference(&completed, &stored) {
                // The lowest node that disagrees names the smallest run of entries that
                // contains the damage.
                let first = (index + 1).saturating_sub(1u64 << level.min(63));
                let problem = if level == 0 {
                    "its contents do not match its stored leaf hash (the entry or its hash was altered)".to_owned()
                } else {
                    format!(
                        "they do not hash to the stored tree node over them (level {level}): entries were altered, reordered or replaced"
                    )
                };
                return Err(VerifyError::Entry {
                    first,
                    index,
                    problem,
                });
            }
            check_claims(&claims, &frontier)?;
            if frontier.size() % 10_000 == 0 {
                progress(frontier.size(), size);
            }
        }
        match page.next {
            Some(next) => request.after = Some(next),
            None => break,
        }
    }
    if frontier.size() < size {
        return Err(VerifyError::Missing {
            index: frontier.size(),
            size,
        });
    }
    progress(size, size);
    Ok(VerifyReport {
        size,
        root: frontier.root(),
        checkpoints,
    })
}

fn where_(first: u64, last: u64) -> String {
    if first == last {
        format!("entry {last}")
    } else {
        format!("entries {first} to {last}")
    }
}

fn open_checkpoint(
    bytes: &[u8],
    verifier: &Verifier,
    origin: &str,
    what: &str,
) -> Result<Checkpoint, VerifyError> {
    Checkpoint::open(bytes, verifier, origin)
        .map(|(cp, _)| cp)
        .map_err(|e| VerifyError::Checkpoint {
            what: what.to_owned(),
            problem: e.to_string(),
        })
}

/// The level of the first node hash that differs, if any.
fn first_difference(computed: &[Hash], stored: &[Hash]) -> Option<usize> {
    let common = computed.len().min(stored.len());
    (0..common)
        .find(|&i| computed.get(i) != stored.get(i))
        .or_else(|| (computed.len() != stored.len()).then_some(common))
}

fn check_claims(
    claims: &BTreeMap<u64, Vec<(Hash, String)>>,
    frontier: &Frontier,
) -> Result<(), VerifyError> {
    if let Some(statements) = claims.get(&frontier.size()) {
        let root = frontier.root();
        if let Some((_, what)) = statements.iter().find(|(r, _)| *r != root) {
            return Err(VerifyError::Root {
                size: frontier.size(),
                what: what.clone(),
            });
        }
    }
    Ok(())
}
