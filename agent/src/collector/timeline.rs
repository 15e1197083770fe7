//! The switch recorder of the dashboard's timeline: every context switch goes to userspace
//! only while someone watches the timeline (a request at least every [`WATCH_FOR`]), and the
//! collector keeps the latest ones, bounded, for the timeline's window.

use std::{
    collections::{HashMap, VecDeque},
    time::{Duration, Instant},
};

use taskscope_common::SwitchEvent;

/// How long the recorder stays on after a timeline request.
pub(crate) const WATCH_FOR: Duration = Duration::from_secs(10);

/// The longest window a timeline shows (seconds).
pub(crate) const MAX_SECONDS: u64 = 30;

/// Switches kept at most (32 bytes each: 8 MiB). A busy node switches more often than this in
/// [`MAX_SECONDS`]: the oldest go first (counted), and the window the timeline can show
/// shrinks.
pub(crate) const MAX_SWITCHES: usize = 256 * 1024;

/// The latest switches, while the recorder is on.
#[derive(Debug)]
pub(crate) struct SwitchWindow {
    switches: VecDeque<SwitchEvent>,
    /// Switches let go to stay under [`MAX_SWITCHES`].
    pub(crate) evicted: u64,
    /// CLOCK_MONOTONIC of the first switch the recorder saw.
    pub(crate) since_ns: Option<u64>,
    watched_until: Instant,
}

impl SwitchWindow {
    pub(crate) fn new(now: Instant) -> Self {
        Self {
            switches: VecDeque::new(),
            evicted: 0,
            since_ns: None,
            watched_until: now + WATCH_FOR,
        }
    }

    /// Someone looked: keep recording for [`WATCH_FOR`] more.
    pub(crate) fn watched(&mut self, now: Instant) {
        self.watched_until = now + WATCH_FOR;
    }

    /// Nobody has looked for [`WATCH_FOR`].
    pub(crate) fn unwatched(&self, now: Instant) -> bool {
        now >= self.watched_until
    }

    pub(crate) fn push(&mut self, switch: SwitchEvent) {
        self.since_ns.get_or_insert(switch.header.ts_ns);
        if self.switches.len() == MAX_SWITCHES {
            self.switches.pop_front();
            self.evicted += 1;
        }
        self.switches.push_back(switch);
        // Older than the longest window: of no use.
        let horizon = switch
            .header
            .ts_ns
            .saturating_sub(MAX_SECONDS * 1_000_000_000);
        while self
            .switches
            .front()
            .is_some_and(|s| s.header.ts_ns < horizon)
        {
            self.switches.pop_front();
        }
    }

    /// The switches from `from_ns` (CLOCK_MONOTONIC) on, and the last one before it on each
    /// CPU (what was running when the window starts).
    pub(crate) fn since(&self, from_ns: u64) -> Vec<SwitchEvent> {
        let mut before: HashMap<u32, SwitchEvent> = HashMap::new();
        let mut after = Vec::new();
        for switch in &self.switches {
            if switch.header.ts_ns < from_ns {
                before.insert(switch.header.cpu, *switch);
            } else {
                after.push(*switch);
            }
        }
        let mut switches: Vec<SwitchEvent> = before.into_values().collect();
        switches.append(&mut after);
        switches
    }
}

/// The answer to a timeline query.
#[derive(Debug, Default)]
pub(crate) struct TimelineRead {
    /// The window: CLOCK_MONOTONIC ns of its start and end.
    pub(crate) from_ns: u64,
    pub(crate) to_ns: u64,
    /// Every switch in it (per CPU, each starts a run of the task switched in).
    pub(crate) switches: Vec<SwitchEvent>,
    /// The command names of the processes in it, by tgid.
    pub(crate) names: HashMap<u32, String>,
    /// When the recorder started (`None`: it just did, no switch yet).
    pub(crate) recording_since_ns: Option<u64>,
    /// Switches the recorder let go (its bound) since it started.
    pub(crate) evicted: u64,
    /// Switches the ring buffer could not take, since the agent started.
    pub(crate) ring_lost: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use taskscope_common::{event_kind, EventHeader};

    fn switch(ts_ns: u64) -> SwitchEvent {
        SwitchEvent {
            header: EventHeader {
                kind: event_kind::SWITCH,
                cpu: 0,
                ts_ns,
                pid: 1,
                tgid: 1,
            },
            next_pid: 2,
            next_tgid: 2,
        }
    }

    #[test]
    fn the_window_keeps_the_latest_switches_and_forgets_the_old() {
        let mut window = SwitchWindow::new(Instant::now());
        window.push(switch(1));
        window.push(switch(2_000_000_000));
        window.push(switch((MAX_SECONDS + 3) * 1_000_000_000));
        assert_eq!(window.since(0).len(), 1, "older than the longest window");
        window.push(switch((MAX_SECONDS + 5) * 1_000_000_000));
        let from = (MAX_SECONDS + 4) * 1_000_000_000;
        let since = window.since(from);
        assert_eq!(
            since.len(),
            2,
            "the one before the window on this CPU, then the one in it"
        );
        assert!(since[0].header.ts_ns < from && since[1].header.ts_ns >= from);
        assert_eq!(window.since_ns, Some(1));
        assert_eq!(window.evicted, 0);
    }

    #[test]
    fn the_recorder_stops_when_nobody_watches() {
        let start = Instant::now();
        let mut window = SwitchWindow::new(start);
        assert!(!window.unwatched(start + WATCH_FOR / 2));
        window.watched(start + WATCH_FOR / 2);
        assert!(!window.unwatched(start + WATCH_FOR));
        assert!(window.unwatched(start + WATCH_FOR * 2));
    }
}
