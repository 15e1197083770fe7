//! How a process ended, from the kernel's `wait(2)`-style exit status.

use serde::Serialize;

/// Decoded exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(crate) enum ExitStatus {
    /// `exit(code)` or a return from main.
    Exited { code: i32 },
    /// Killed by a signal.
    Signaled {
        signal: i32,
        signal_name: &'static str,
        core_dumped: bool,
    },
    /// The agent saw the process vanish without an exit event (it was lost).
    Unknown,
}

impl ExitStatus {
    /// Decodes `task_struct.exit_code` (`code << 8`, or the signal with 0x80 for a core dump).
    pub(crate) fn from_raw(raw: u32) -> Self {
        let signal = (raw & 0x7f) as i32;
        if signal == 0 {
            ExitStatus::Exited {
                code: ((raw >> 8) & 0xff) as i32,
            }
        } else {
            ExitStatus::Signaled {
                signal,
                signal_name: signal_name(signal),
                core_dumped: raw & 0x80 != 0,
            }
        }
    }

    /// A non-zero exit or a fatal signal.
    pub(crate) fn is_failure(&self) -> bool {
        !matches!(self, ExitStatus::Exited { code: 0 })
    }
}

/// The conventional name of a Linux signal number.
pub(crate) fn signal_name(signal: i32) -> &'static str {
    const NAMES: [&str; 32] = [
        "",
        "SIGHUP",
        "SIGINT",
        "SIGQUIT",
        "SIGILL",
        "SIGTRAP",
        "SIGABRT",
        "SIGBUS",
        "SIGFPE",
        "SIGKILL",
        "SIGUSR1",
        "SIGSEGV",
        "SIGUSR2",
        "SIGPIPE",
        "SIGALRM",
        "SIGTERM",
        "SIGSTKFLT",
        "SIGCHLD",
        "SIGCONT",
        "SIGSTOP",
        "SIGTSTP",
        "SIGTTIN",
        "SIGTTOU",
        "SIGURG",
        "SIGXCPU",
        "SIGXFSZ",
        "SIGVTALRM",
        "SIGPROF",
        "SIGWINCH",
        "SIGIO",
        "SIGPWR",
        "SIGSYS",
    ];
    usize::try_from(signal)
        .ok()
        .and_then(|s| NAMES.get(s).copied())
        .filter(|n| !n.is_empty())
        .unwrap_or("SIGRT")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_wait_statuses() {
        assert_eq!(ExitStatus::from_raw(0), ExitStatus::Exited { code: 0 });
        assert_eq!(ExitStatus::from_raw(3 << 8), ExitStatus::Exited { code: 3 });
        assert_eq!(
            ExitStatus::from_raw(15),
            ExitStatus::Signaled {
                signal: 15,
                signal_name: "SIGTERM",
                core_dumped: false
            }
        );
        assert_eq!(
            ExitStatus::from_raw(0x80 | 11),
            ExitStatus::Signaled {
                signal: 11,
                signal_name: "SIGSEGV",
                core_dumped: true
            }
        );
        assert!(!ExitStatus::from_raw(0).is_failure());
        assert!(ExitStatus::from_raw(1 << 8).is_failure());
        assert_eq!(signal_name(40), "SIGRT");
        assert_eq!(signal_name(-1), "SIGRT");
    }
}
