//! Dashboard sessions and per-client rate limits.
//!
//! A browser cannot put an `Authorization` header on a WebSocket, so the dashboard logs in
//! once with the API token and gets a session cookie (`HttpOnly`, `SameSite=Strict`): a random
//! id the agent keeps, never the token itself. Sessions are bounded in number and age.
//!
//! Each client (by IP address) has a token bucket for dashboard requests and a smaller one for
//! failed logins, in a bounded table: a flood from many addresses evicts the idlest entries
//! rather than growing it.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::Mutex,
    time::{Duration, Instant},
};

use ring::rand::{SecureRandom, SystemRandom};
use subtle::ConstantTimeEq;

/// The session cookie's name.
pub(crate) const COOKIE: &str = "taskscope_session";

/// How long a session lasts after its login.
pub(crate) const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);

/// Sessions kept at once; a new login past it ends the oldest.
pub(crate) const MAX_SESSIONS: usize = 256;

/// Clients whose rates are tracked at once.
pub(crate) const MAX_CLIENTS: usize = 1024;

/// Dashboard requests (pages, assets, feed connections) a client may make: a burst of this
/// many, refilled at [`REQUESTS_PER_SECOND`].
pub(crate) const REQUEST_BURST: f64 = 60.0;
pub(crate) const REQUESTS_PER_SECOND: f64 = 20.0;

/// Failed logins a client may make: a burst of this many, then one every
/// [`LOGIN_RETRY`].
pub(crate) const LOGIN_BURST: f64 = 5.0;
pub(crate) const LOGIN_RETRY: Duration = Duration::from_secs(12);

/// The live sessions: id -> when it ends.
#[derive(Debug, Default)]
pub(crate) struct Sessions {
    ends: Mutex<HashMap<String, Instant>>,
}

impl Sessions {
    /// A new session's id (32 random bytes, hex), or `None` when the system has no randomness.
    pub(crate) fn start(&self) -> Option<String> {
        let mut bytes = [0u8; 32];
        SystemRandom::new().fill(&mut bytes).ok()?;
        let id: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let now = Instant::now();
        let mut ends = self.lock();
        ends.retain(|_, end| *end > now);
        if ends.len() >= MAX_SESSIONS {
            if let Some(oldest) = ends
                .iter()
                .min_by_key(|(_, end)| **end)
                .map(|(id, _)| id.clone())
            {
                ends.remove(&oldest);
            }
        }
        ends.insert(id.clone(), now + SESSION_TTL);
        Some(id)
    }

    /// Whether `id` is a live session (compared in constant time).
    pub(crate) fn is_valid(&self, id: &str) -> bool {
        let now = Instant::now();
        let ends = self.lock();
        let mut valid = false;
        for (known, end) in ends.iter() {
            if bool::from(known.as_bytes().ct_eq(id.as_bytes())) && *end > now {
                valid = true;
            }
        }
        valid
    }

    /// Ends the session `id`.
    pub(crate) fn end(&self, id: &str) {
        self.lock().remove(id);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instant>> {
        self.ends
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The session id in a `Cookie` header, if there is one.
pub(crate) fn session_cookie(cookie_header: &str) -> Option<&str> {
    cookie_header
        .split(';')
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value)
}

/// One client's buckets.
#[derive(Debug, Clone, Copy)]
struct Buckets {
    requests: f64,
    logins: f64,
    updated: Instant,
}

/// Which bucket a request takes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Spend {
    Request,
    FailedLogin,
}

/// Per-client token buckets.
#[derive(Debug, Default)]
pub(crate) struct RateLimits {
    clients: Mutex<HashMap<IpAddr, Buckets>>,
}

impl RateLimits {
    /// Takes one from `client`'s bucket: `Ok` when it had one, else how long until it has.
    pub(crate) fn spend(&self, client: IpAddr, spend: Spend) -> Result<(), Duration> {
        self.spend_at(client, spend, Instant::now())
    }

    fn spend_at(&self, client: IpAddr, spend: Spend, now: Instant) -> Result<(), Duration> {
        let mut clients = self
            .clients
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !clients.contains_key(&client) && clients.len() >= MAX_CLIENTS {
            // The idlest client's buckets are forgotten (they were refilling anyway).
            if let Some(idlest) = clients
                .iter()
                .min_by_key(|(_, b)| b.updated)
                .map(|(ip, _)| *ip)
            {
                clients.remove(&idlest);
            }
        }
        let buckets = clients.entry(client).or_insert(Buckets {
            requests: REQUEST_BURST,
            logins: LOGIN_BURST,
            updated: now,
        });
        let elapsed = now.saturating_duration_since(buckets.updated).as_secs_f64();
        buckets.updated = now;
        buckets.requests = (buckets.requests + elapsed * REQUESTS_PER_SECOND).min(REQUEST_BURST);
        buckets.logins = (buckets.logins + elapsed / LOGIN_RETRY.as_secs_f64()).min(LOGIN_BURST);
        let (tokens, per_second) = match spend {
            Spend::Request => (&mut buckets.requests, REQUESTS_PER_SECOND),
            Spend::FailedLogin => (&mut buckets.logins, 1.0 / LOGIN_RETRY.as_secs_f64()),
        };
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - *tokens) / per_second))
        }
    }

    /// Clients tracked now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.clients.lock().map(|c| c.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_is_valid_until_it_ends() {
        let sessions = Sessions::default();
        let id = sessions.start().unwrap();
        assert_eq!(id.len(), 64);
        assert!(sessions.is_valid(&id));
        assert!(!sessions.is_valid("0"));
        assert!(!sessions.is_valid(""));
        sessions.end(&id);
        assert!(!sessions.is_valid(&id));
    }

    #[test]
    fn sessions_are_bounded_and_the_oldest_goes_first() {
        let sessions = Sessions::default();
        let first = sessions.start().unwrap();
        for _ in 0..MAX_SESSIONS {
            sessions.start().unwrap();
        }
        assert_eq!(sessions.lock().len(), MAX_SESSIONS);
        assert!(!sessions.is_valid(&first));
    }

    #[test]
    fn the_cookie_is_found_among_others() {
        assert_eq!(
            session_cookie("a=1; taskscope_session=abc; b=2"),
            Some("abc")
        );
        assert_eq!(session_cookie("taskscope_sessionx=abc"), None);
        assert_eq!(session_cookie(""), None);
    }

    #[test]
    fn a_client_gets_its_burst_then_the_refill_rate() {
        let limits = RateLimits::default();
        let ip: IpAddr = [10, 0, 0, 1].into();
        let start = Instant::now();
        for _ in 0..REQUEST_BURST as usize {
            assert!(limits.spend_at(ip, Spend::Request, start).is_ok());
        }
        let wait = limits.spend_at(ip, Spend::Request, start).unwrap_err();
        assert!(wait <= Duration::from_millis(60), "{wait:?}");
        // Another client is not held up by this one.
        assert!(limits
            .spend_at([10, 0, 0, 2].into(), Spend::Request, start)
            .is_ok());
        let later = start + Duration::from_millis(100);
        assert!(limits.spend_at(ip, Spend::Request, later).is_ok());
    }

    #[test]
    fn failed_logins_are_limited_on_their_own() {
        let limits = RateLimits::default();
        let ip: IpAddr = [10, 0, 0, 1].into();
        let start = Instant::now();
        for _ in 0..LOGIN_BURST as usize {
            assert!(limits.spend_at(ip, Spend::FailedLogin, start).is_ok());
        }
        let wait = limits.spend_at(ip, Spend::FailedLogin, start).unwrap_err();
        assert!(wait > Duration::from_secs(10), "{wait:?}");
        assert!(limits.spend_at(ip, Spend::Request, start).is_ok());
    }

    #[test]
    fn the_client_table_is_bounded() {
        let limits = RateLimits::default();
        let start = Instant::now();
        for i in 0..(MAX_CLIENTS as u32 + 10) {
            let ip: IpAddr = std::net::Ipv4Addr::from(i).into();
            let _ = limits.spend_at(ip, Spend::Request, start + Duration::from_millis(i.into()));
        }
        assert_eq!(limits.len(), MAX_CLIENTS);
    }
}
