//! Upgrades in our own HTTP/1.1 server: what a 101 is spliced with, and the splice.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::Response;
use tokio_util::task::TaskTracker;

use super::request_body::{Shared, Upgraded};
use super::respond::write_all;
use super::server_codec::{encode_response_head, Persistence, ResponseFraming};
use crate::http::Body;
use crate::mux::MuxStream;

/// Where a 101's connection goes: the handler puts it in the response's extensions (which
/// hold only `Clone` values: hence the shared slot).
#[derive(Clone)]
pub(crate) struct UpgradeTo(Arc<Mutex<Option<Upgrade>>>);

enum Upgrade {
    Hyper(hyper::upgrade::OnUpgrade),
    Stream {
        stream: MuxStream,
        pending: Bytes,
        guard: Box<dyn Send + Sync>,
    },
}

impl UpgradeTo {
    /// An upgraded hyper client connection (the agent's, to its upstream).
    pub(crate) fn hyper(upgraded: hyper::upgrade::OnUpgrade) -> Self {
        Self(Arc::new(Mutex::new(Some(Upgrade::Hyper(upgraded)))))
    }

    /// A tunnel stream the agent answered 101 on (the server's relay): `pending` followed
    /// that head; `guard` is held until the splice ends.
    pub(crate) fn stream(stream: MuxStream, pending: Bytes, guard: Box<dyn Send + Sync>) -> Self {
        let upgrade = Upgrade::Stream {
            stream,
            pending,
            guard,
        };
        Self(Arc::new(Mutex::new(Some(upgrade))))
    }

    fn take(&self) -> Option<Upgrade> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take()
    }
}

/// Writes the 101 and splices the connection with `to`; what each side sent after its head
/// goes to the other first. Spawned: a splice outlives the exchange (an exec session).
pub(super) async fn splice(
    conn: Shared,
    response: Response<Body>,
    to: UpgradeTo,
    splices: Option<TaskTracker>,
) {
    let mut head = Vec::with_capacity(256);
    let (parts, _) = response.into_parts();
    encode_response_head(
        parts.status,
        &parts.headers,
        ResponseFraming::NoBody,
        Persistence::Unsaid,
        &mut head,
    );
    if write_all(&conn, &head).await.is_err() {
        return;
    }
    let Some(to) = to.take() else {
        return;
    };
    let mut ours = Upgraded(conn);
    let splice = async move {
        let result = match to {
            Upgrade::Hyper(upgraded) => match upgraded.await {
                Ok(upgraded) => {
                    let mut theirs = hyper_util::rt::TokioIo::new(upgraded);
                    tokio::io::copy_bidirectional(&mut ours, &mut theirs).await
                }
                Err(error) => return tracing::debug!(%error, "upgrade did not complete"),
            },
            Upgrade::Stream {
                mut stream,
                pending,
                guard,
            } => {
                let result = async {
                    tokio::io::AsyncWriteExt::write_all(&mut ours, &pending).await?;
                    tokio::io::copy_bidirectional(&mut ours, &mut stream).await
                }
                .await;
                drop(guard);
                result
            }
        };
        if let Err(error) = result {
            tracing::debug!(%error, "upgraded connection ended with an error");
        }
    };
    match splices {
        Some(tracker) => drop(tracker.spawn(splice)),
        None => drop(tokio::spawn(splice)),
    }
}
