//! Watches on the redb backend: replay retained history from the requested revision, then
//! follow the live events the writer publishes after each durable commit.
//!
//! INVARIANT: the watcher subscribes to live events *before* it reads the current revision,
//! and the writer updates the revision *before* it publishes. So every commit is either in the
//! history read or in the live channel (or both; `next` drops the duplicates), never in
//! neither.

use std::sync::Arc;

use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::Shared;
use crate::WatchStream;
use crate::error::StoreError;
use crate::key::Prefix;
use crate::model::{Revision, WatchEvent};

/// Revisions of history read per step while catching up, to bound memory.
const CATCH_UP_STEP: u64 = 1024;
/// Events buffered per watcher before the watcher task waits for its consumer.
const WATCH_BUFFER: usize = 1024;

pub(super) fn start(shared: Arc<Shared>, prefix: Prefix, from: Revision) -> WatchStream {
    let (tx, rx) = mpsc::channel(WATCH_BUFFER);
    tokio::spawn(async move {
        if let Err(e) = follow(&shared, &prefix, from, &tx).await {
            let _ = tx.send(Err(e)).await;
        }
    });
    Box::pin(ReceiverStream::new(rx))
}

type Sink = mpsc::Sender<Result<WatchEvent, StoreError>>;

/// Runs until the consumer drops the stream (`Ok`) or something fails (`Err`, sent to it).
async fn follow(
    shared: &Arc<Shared>,
    prefix: &Prefix,
    from: Revision,
    tx: &Sink,
) -> Result<(), StoreError> {
    let mut live = shared.subscribe();
    let mut next = if from == 0 {
        shared.current_revision() + 1
    } else {
        from
    };
    loop {
        if !catch_up(shared, prefix, &mut next, tx).await? {
            return Ok(());
        }
        loop {
            let batch = tokio::select! {
                () = tx.closed() => return Ok(()),
                batch = live.recv() => batch,
            };
            match batch {
                Ok(events) => {
                    for ev in events.iter() {
                        if ev.revision >= next
                            && prefix.matches(ev.key.as_str())
                            && tx.send(Ok(ev.clone())).await.is_err()
                        {
                            return Ok(());
                        }
                    }
                    if let Some(last) = events.last() {
                        next = next.max(last.revision + 1);
                    }
                }
                // Fell behind the live channel: go back to reading history from `next`.
                Err(RecvError::Lagged(_)) => break,
                Err(RecvError::Closed) => return Err(StoreError::Closed),
            }
        }
    }
}

/// Sends retained history from `next` up to the current revision. Returns false when the
/// consumer has gone.
async fn catch_up(
    shared: &Arc<Shared>,
    prefix: &Prefix,
    next: &mut Revision,
    tx: &Sink,
) -> Result<bool, StoreError> {
    loop {
        let current = shared.current_revision();
        if *next > current {
            return Ok(true);
        }
        let (reader, p, from) = (Arc::clone(shared), prefix.clone(), *next);
        let (events, after) = tokio::task::spawn_blocking(move || {
            reader.read_history(&p, from, current, CATCH_UP_STEP)
        })
        .await
        .map_err(|e| StoreError::Backend {
            backend: "redb",
            reason: format!("history read failed: {e}"),
        })??;
        for ev in events {
            if tx.send(Ok(ev)).await.is_err() {
                return Ok(false);
            }
        }
        *next = after;
    }
}
