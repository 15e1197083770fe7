//! The host's clocks (OS access): the programs stamp events with CLOCK_MONOTONIC, processes
//! start on CLOCK_BOOTTIME, and people read CLOCK_REALTIME.

/// CLOCK_MONOTONIC in nanoseconds: the clock of `bpf_ktime_get_ns()`.
pub(crate) fn monotonic_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

/// Reads a clock in nanoseconds.
pub(crate) fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec; the clocks used always exist on Linux.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The three clocks read at one instant: converts the kernel's timestamps to wall-clock time.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clocks {
    pub(crate) monotonic_ns: u64,
    pub(crate) realtime_ns: u64,
    pub(crate) boottime_ns: u64,
}

impl Clocks {
    /// Reads the clocks now.
    pub(crate) fn now() -> Self {
        Self {
            monotonic_ns: clock_ns(libc::CLOCK_MONOTONIC),
            realtime_ns: clock_ns(libc::CLOCK_REALTIME),
            boottime_ns: clock_ns(libc::CLOCK_BOOTTIME),
        }
    }

    /// The clocks as they read at CLOCK_MONOTONIC `ns` (earlier or later than these).
    pub(crate) fn at_monotonic(&self, ns: u64) -> Clocks {
        let shift = |clock: u64| {
            if ns >= self.monotonic_ns {
                clock.saturating_add(ns - self.monotonic_ns)
            } else {
                clock.saturating_sub(self.monotonic_ns - ns)
            }
        };
        Clocks {
            monotonic_ns: ns,
            realtime_ns: shift(self.realtime_ns),
            boottime_ns: shift(self.boottime_ns),
        }
    }

    /// Unix time of a CLOCK_MONOTONIC instant.
    pub(crate) fn monotonic_to_unix(&self, ns: u64) -> u64 {
        (self.realtime_ns + ns).saturating_sub(self.monotonic_ns)
    }

    /// Unix time of a CLOCK_BOOTTIME instant.
    pub(crate) fn boottime_to_unix(&self, ns: u64) -> u64 {
        (self.realtime_ns + ns).saturating_sub(self.boottime_ns)
    }
}
