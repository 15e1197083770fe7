//! Secrets out of command lines before they are stored: what the model keeps is what every
//! output (spans, the JSON API, logs) shows, so redacting here covers them all.

use regex::Regex;

/// What a redacted value is replaced with.
pub(crate) const REDACTED: &str = "[REDACTED]";

/// Flags whose next argument is a secret (`--password hunter2`).
const SECRET_FLAGS: &str = r"(?i)^--?[a-z0-9_.-]*(password|passwd|pwd|secret|token|api[_-]?key|apikey|access[_-]?key|private[_-]?key|credentials?)$";

/// Patterns whose capture group `value` is a secret; the rest of the match stays.
const BUILT_IN: [&str; 5] = [
    // --password=..., PASSWORD=..., ?token=..., client_secret=...
    r"(?i)[a-z0-9_.-]*(password|passwd|pwd|secret|token|api[_-]?key|apikey|access[_-]?key|private[_-]?key|credentials?)[a-z0-9_.-]*[=:](?P<value>[^&\s]+)",
    // Authorization: Bearer ..., Authorization: Basic ...
    r"(?i)authorization:\s*(?P<value>.+)",
    r"(?i)\b(bearer|basic)\s+(?P<value>[a-z0-9._~+/=-]+)",
    // AWS access key ids.
    r"\b(?P<value>(AKIA|ASIA)[A-Z0-9]{16})\b",
    // Credentials in URLs: scheme://user:password@host
    r"[a-z][a-z0-9+.-]*://[^/\s:@]+:(?P<value>[^@\s/]+)@",
];

/// Redacts command-line arguments.
#[derive(Debug, Clone)]
pub(crate) struct Redactor {
    /// `None` only if the built-in pattern did not compile (a unit test makes sure it does).
    secret_flags: Option<Regex>,
    patterns: Vec<Regex>,
}

impl Redactor {
    /// The built-in patterns plus `extra` (a match of an extra pattern is replaced whole, or
    /// only its `value` group if it has one).
    pub(crate) fn new(extra: &[Regex]) -> Self {
        let patterns = BUILT_IN
            .iter()
            .filter_map(|p| Regex::new(p).ok())
            .chain(extra.iter().cloned())
            .collect();
        Self {
            secret_flags: Regex::new(SECRET_FLAGS).ok(),
            patterns,
        }
    }

    /// The arguments with secrets replaced by [`REDACTED`].
    pub(crate) fn redact(&self, args: Vec<String>) -> Vec<String> {
        let mut out = Vec::with_capacity(args.len());
        let mut next_is_secret = false;
        for arg in args {
            if next_is_secret {
                next_is_secret = false;
                out.push(REDACTED.to_string());
                continue;
            }
            next_is_secret = self.secret_flags.as_ref().is_some_and(|r| r.is_match(&arg));
            out.push(self.redact_one(&arg));
        }
        out
    }

    fn redact_one(&self, arg: &str) -> String {
        let mut text = arg.to_string();
        for pattern in &self.patterns {
            if !pattern.is_match(&text) {
                continue;
            }
            let has_value = pattern.capture_names().any(|n| n == Some("value"));
            let mut result = String::with_capacity(text.len());
            let mut last = 0;
            for caps in pattern.captures_iter(&text) {
                let Some(whole) = caps.get(0) else { continue };
                let secret = if has_value {
                    caps.name("value")
                } else {
                    Some(whole)
                };
                let Some(secret) = secret else { continue };
                result.push_str(&text[last..secret.start()]);
                result.push_str(REDACTED);
                last = secret.end();
            }
            result.push_str(&text[last..]);
            text = result;
        }
        text
    }
}

impl Default for Redactor {
    fn default() -> Self {
        Self::new(&[])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redact(args: &[&str]) -> Vec<String> {
        Redactor::default().redact(args.iter().map(|a| a.to_string()).collect())
    }

    #[test]
    fn every_built_in_pattern_compiles() {
        assert!(Regex::new(SECRET_FLAGS).is_ok());
        assert_eq!(Redactor::default().patterns.len(), BUILT_IN.len());
    }

    #[test]
    fn secrets_are_redacted_and_the_rest_kept() {
        assert_eq!(
            redact(&["psql", "--password=hunter2", "-h", "db"]),
            ["psql", "--password=[REDACTED]", "-h", "db"]
        );
        assert_eq!(
            redact(&["mysql", "--password", "hunter2", "--user", "bob"]),
            ["mysql", "--password", "[REDACTED]", "--user", "bob"]
        );
        assert_eq!(
            redact(&[
                "curl",
                "-H",
                "Authorization: Bearer abc.def",
                "https://x/?token=t0k&x=1"
            ]),
            [
                "curl",
                "-H",
                "Authorization: [REDACTED]",
                "https://x/?token=[REDACTED]&x=1"
            ]
        );
        assert_eq!(
            redact(&["env", "AWS_SECRET_ACCESS_KEY=wJalr", "AKIAIOSFODNN7EXAMPLE"]),
            ["env", "AWS_SECRET_ACCESS_KEY=[REDACTED]", "[REDACTED]"]
        );
        assert_eq!(
            redact(&["git", "clone", "https://bob:s3cret@example.com/r.git"]),
            ["git", "clone", "https://bob:[REDACTED]@example.com/r.git"]
        );
        assert_eq!(redact(&["ls", "-l", "/tmp"]), ["ls", "-l", "/tmp"]);
    }

    #[test]
    fn extra_patterns_redact_their_match_or_its_value_group() {
        let extra = [
            Regex::new(r"sk-[A-Za-z0-9]{8,}").unwrap(),
            Regex::new(r"pin:(?P<value>\d+)").unwrap(),
        ];
        let r = Redactor::new(&extra);
        assert_eq!(
            r.redact(vec!["x".into(), "sk-abcdefgh123".into(), "pin:1234".into()]),
            ["x", "[REDACTED]", "pin:[REDACTED]"]
        );
    }
}
