//! The connections of one listening address across route versions: a reload hands them to the
//! new version, each request taken by the version taking requests at that moment; paused and
//! closing answers.

use super::*;

/// An address's open connections and who takes their requests. Kept across versions with the
/// listener ([`Listeners::kept`]); closed when no version wants the address any more (the
/// route removed or moved, the engine stopping): then each connection finishes the request in
/// hand and closes.
pub struct Connections {
    pub(super) taker: watch::Sender<Taker>,
    pub(super) closed: CancellationToken,
}

impl Default for Connections {
    fn default() -> Self {
        Connections {
            taker: watch::Sender::new(Taker::Swapping),
            closed: CancellationToken::new(),
        }
    }
}

impl crate::listeners::Kept for Connections {
    fn close(&self) {
        self.closed.cancel();
    }
}

/// What a request on a kept connection gets.
pub(super) enum Take {
    /// This version, and a token that holds its stop until the request is answered.
    Version(Arc<Handler>, TaskTrackerToken),
    Paused,
    Closing,
}

impl Connections {
    /// The version to take a request, waiting (up to [`SWAP_WAIT`]) while versions swap.
    pub(super) async fn take(&self) -> Take {
        let mut rx = self.taker.subscribe();
        let wait = async {
            loop {
                {
                    // The token is taken under the watch's lock, so a version that stops
                    // after this (it swaps the taker first) waits for this request.
                    let taker = rx.borrow_and_update();
                    match &*taker {
                        Taker::Version(h) => return Take::Version(h.clone(), h.in_flight.token()),
                        Taker::Paused => return Take::Paused,
                        Taker::Swapping => {}
                    }
                }
                if rx.changed().await.is_err() {
                    return Take::Closing;
                }
            }
        };
        tokio::select! {
            t = wait => t,
            _ = self.closed.cancelled() => Take::Closing,
            _ = tokio::time::sleep(SWAP_WAIT) => Take::Closing,
        }
    }

    /// Hands the connections to `next` (a version, or a pause).
    pub(super) fn hand_to(&self, next: Taker) {
        self.taker.send_replace(next);
    }

    /// Stops handing requests to `version` when it still takes them.
    pub(super) fn stop(&self, version: &Arc<Handler>) {
        self.taker.send_if_modified(|t| match t {
            Taker::Version(h) if Arc::ptr_eq(h, version) => {
                *t = Taker::Swapping;
                true
            }
            _ => false,
        });
    }

    /// Stops answering "paused" when that is still the answer.
    pub(super) fn unpause(&self) {
        self.taker.send_if_modified(|t| match t {
            Taker::Paused => {
                *t = Taker::Swapping;
                true
            }
            _ => false,
        });
    }
}

pub(super) fn paused_answer() -> Answer {
    let mut r = json(
        StatusCode::SERVICE_UNAVAILABLE,
        serde_json::json!({"error": "the route is paused; nothing was stored, send it again later"}),
    );
    r.headers_mut()
        .insert("retry-after", HeaderValue::from_static("5"));
    r
}

pub(super) fn closing_answer() -> Answer {
    let mut r = problem(
        StatusCode::SERVICE_UNAVAILABLE,
        "the route is stopping; nothing was stored, send it again",
    );
    r.headers_mut()
        .insert(hyper::header::CONNECTION, HeaderValue::from_static("close"));
    r
}
