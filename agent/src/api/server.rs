//! The HTTP server under the router: a bounded number of connections, each closed when a
//! request's header does not arrive in time (idle keep-alive connections included).
//!
//! hyper serves each connection; this loop only accepts, counts and refuses. Request-level
//! limits (time, concurrency of the heavy endpoints) are tower layers in [`super::router`].

use std::{io, sync::Arc, time::Duration};

use axum::Router;
use hyper_util::{
    rt::{TokioIo, TokioTimer},
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

/// The socket of the connection a request came on (valid while its handler runs).
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConnectionSocket(std::os::fd::RawFd);

impl ConnectionSocket {
    /// Caps what the kernel buffers for sending on this connection (it doubles `bytes` for
    /// its own bookkeeping), instead of letting it grow to megabytes for a client that reads
    /// slowly.
    pub(crate) fn cap_send_buffer(self, bytes: usize) -> io::Result<()> {
        let size = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
        // SAFETY: the descriptor is the connection's, open while its request is handled;
        // the option value is a c_int of the size given.
        let rc = unsafe {
            libc::setsockopt(
                self.0,
                libc::SOL_SOCKET,
                libc::SO_SNDBUF,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
}

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
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.wait_for(|stop| *stop) => break,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
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
        // The client's address, for the dashboard's per-client rate limits.
        let socket = ConnectionSocket(std::os::fd::AsRawFd::as_raw_fd(&stream));
        let service = tower::ServiceExt::map_request(
            router.clone(),
            move |mut request: hyper::Request<hyper::body::Incoming>| {
                let extensions = request.extensions_mut();
                extensions.insert(axum::extract::ConnectInfo(peer));
                extensions.insert(socket);
                request
            },
        );
        let connection = http
            .serve_connection(TokioIo::new(stream), TowerToHyperService::new(service))
            // The live feed is a WebSocket: an upgraded connection.
            .with_upgrades();
        let mut stop = shutdown.clone();
        tokio::spawn(async move {
            let mut connection = std::pin::pin!(connection);
            // A client that goes away mid-request is its own business.
            let stopping = tokio::select! {
                _ = connection.as_mut() => false,
                stopped = stop.wait_for(|stop| *stop) => stopped.is_ok(),
            };
            if stopping {
                connection.as_mut().graceful_shutdown();
                let _ = connection.await;
            }
            drop(slot);
        });
    }
    drop(listener);
    // Every slot back: every connection has finished (an upgraded one, a live-feed client,
    // has handed its slot back already).
    let all = u32::try_from(max_connections).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, slots.acquire_many(all)).await;
    Ok(())
}
