//! The HTTP server under the router: a bounded number of connections, each closed when a
//! request's header does not arrive in time (idle keep-alive connections included).
//!
//! hyper serves each connection; this loop only accepts, counts and refuses. Request-level
//! limits (time, concurrency of the heavy endpoints) are tower layers in [`super::router`].

use std::{io, sync::Arc, time::Duration};

use axum::Router;
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    server::graceful::GracefulShutdown,
    service::TowerToHyperService,
};
use tokio::{net::TcpListener, sync::watch, sync::Semaphore};
use tracing::warn;

use crate::exporters::HttpRefusals;

/// How long a client has to send a request's whole header, from the moment the connection
/// waits for one (so also how long an idle keep-alive connection is kept).
pub(crate) const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest request header accepted (431 beyond).
const MAX_HEADER_BYTES: usize = 16 * 1024;

/// How long open connections get to finish at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Serves `router` on `listener` with at most `max_connections` open at once (more are
/// accepted and closed at once, and counted) until `shutdown` says stop.
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    max_connections: usize,
    refusals: Arc<HttpRefusals>,
    mut shutdown: watch::Receiver<bool>,
) -> io::Result<()> {
    let slots = Arc::new(Semaphore::new(max_connections));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_header_size(MAX_HEADER_BYTES);
    let graceful = GracefulShutdown::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.wait_for(|stop| *stop) => break,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(err) => {
                // Out of descriptors or memory: the connection was not taken; try again soon
                // rather than spin.
                warn!(%err, "cannot accept an HTTP connection");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            refusals.count(HttpRefusals::CONNECTIONS);
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let connection = http.serve_connection(
            TokioIo::new(stream),
            TowerToHyperService::new(router.clone()),
        );
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            // A client that goes away mid-request is its own business.
            let _ = connection.await;
            drop(slot);
        });
    }
    drop(listener);
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown()).await;
    Ok(())
}
