//! Process selectors (`--process-metrics 'comm=postgres'`): which processes get their own
//! series on /metrics.
//!
//! A selector is one or more `KEY=PATTERN` terms joined by `,` (all must match); the flag can
//! be repeated (any selector may match). KEY is `comm`, `exe`, `pid` or `cgroup`; PATTERN is
//! matched whole, `*` standing for any run of characters.

use std::{fmt, str::FromStr};

use super::Process;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Key {
    Comm,
    Exe,
    Pid,
    Cgroup,
}

/// One `--process-metrics` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ProcessSelector {
    terms: Vec<(Key, String)>,
    text: String,
}

/// Why a selector is not valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SelectorError(String);

impl fmt::Display for SelectorError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SelectorError {}

impl FromStr for ProcessSelector {
    type Err = SelectorError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = |why: &str| {
            SelectorError(format!(
                "invalid process selector '{text}': {why}; write KEY=PATTERN[,KEY=PATTERN...] with KEY one of comm, exe, pid, cgroup (e.g. comm=postgres or exe=/usr/bin/*)"
            ))
        };
        let mut terms = Vec::new();
        for term in text.split(',') {
            let (key, pattern) = term
                .split_once('=')
                .ok_or_else(|| invalid(&format!("'{term}' has no '='")))?;
            let key = match key.trim() {
                "comm" => Key::Comm,
                "exe" => Key::Exe,
                "pid" => Key::Pid,
                "cgroup" => Key::Cgroup,
                other => return Err(invalid(&format!("unknown key '{other}'"))),
            };
            if pattern.is_empty() {
                return Err(invalid("empty pattern"));
            }
            if key == Key::Pid && pattern.parse::<u32>().is_err() {
                return Err(invalid(&format!("pid '{pattern}' is not a number")));
            }
            terms.push((key, pattern.to_string()));
        }
        Ok(ProcessSelector {
            terms,
            text: text.to_string(),
        })
    }
}

/// Whole-string match with `*` for any run of characters.
fn glob(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

impl ProcessSelector {
    /// Whether `process` matches every term.
    pub(crate) fn matches(&self, process: &Process) -> bool {
        self.terms.iter().all(|(key, pattern)| match key {
            Key::Comm => glob(pattern, &process.comm),
            Key::Exe => process.exe.as_deref().is_some_and(|exe| glob(pattern, exe)),
            Key::Pid => pattern.parse::<u32>() == Ok(process.pid),
            Key::Cgroup => process
                .cgroup_path
                .as_deref()
                .is_some_and(|path| glob(pattern, path)),
        })
    }
}

impl fmt::Display for ProcessSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob("postgres", "postgres"));
        assert!(!glob("postgres", "postgres2"));
        assert!(glob("post*", "postgres"));
        assert!(glob("*gres", "postgres"));
        assert!(glob("p*t*s", "postgres"));
        assert!(!glob("p*x*s", "postgres"));
        assert!(glob("*", ""));
        assert!(!glob("ab*ba", "aba"));
    }

    #[test]
    fn parses_and_rejects() {
        assert!("comm=postgres".parse::<ProcessSelector>().is_ok());
        assert!("exe=/usr/bin/*,cgroup=/system.slice/*"
            .parse::<ProcessSelector>()
            .is_ok());
        assert!("pid=42".parse::<ProcessSelector>().is_ok());
        let err = "name=postgres".parse::<ProcessSelector>().unwrap_err();
        assert!(err.to_string().contains("unknown key 'name'"), "{err}");
        assert!("comm"
            .parse::<ProcessSelector>()
            .unwrap_err()
            .to_string()
            .contains("has no '='"));
        assert!("pid=abc"
            .parse::<ProcessSelector>()
            .unwrap_err()
            .to_string()
            .contains("not a number"));
        assert!("comm="
            .parse::<ProcessSelector>()
            .unwrap_err()
            .to_string()
            .contains("empty pattern"));
    }
}
