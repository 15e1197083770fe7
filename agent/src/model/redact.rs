//! Secrets out of command lines before they are stored: what the model keeps is what every
//! output (spans, the JSON API, logs) shows, so redacting here covers them all.

use regex::Regex;

/// What a redacted value is replaced with.
pub(crate) const REDACTED: &str = "[REDACTED]";

/// Flags whose next argument is a secret (`--password hunter2`).
const SECRET_FLAGS: &str = r"(?i)^--?[a-z0-9_.-]*(password|passwd|pwd|secret|token|api[_-]?key|apikey|access[_-]?key|private[_-]?key|credentials?)$";

/// Patterns whose capture group `value` is a secret; the rest of the match stays.
const BUILT_IN: [&str; 8] = [
    // --password=..., PASSWORD=..., ?token=..., client_secret=..., X-Api-Key: ..., password: ...
    r"(?i)[a-z0-9_.-]*(password|passwd|pwd|secret|token|api[_-]?key|apikey|access[_-]?key|private[_-]?key|credentials?)[a-z0-9_.-]*[=:]\s*(?P<value>[^&\s]+)",
    // JSON bodies: "password": "...", "api_key":"..."
    r#"(?i)"[a-z0-9_.-]*(password|passwd|pwd|secret|token|api[_-]?key|apikey|access[_-]?key|private[_-]?key|credentials?)[a-z0-9_.-]*"\s*:\s*"(?P<value>[^"]*)""#,
    // openssl's -pass/-passin/-passout pass:...
    r"^pass:(?P<value>.+)$",
    // A token alone as a URL's userinfo: https://ghp_xxx@host (a short user name such as git@
    // stays).
    r"[a-z][a-z0-9+.-]*://(?P<value>[A-Za-z0-9_~.%-]{16,})@",
    // Authorization: Bearer ..., Authorization: Basic ...
    r"(?i)authorization:\s*(?P<value>.+)",
    r"(?i)\b(bearer|basic)\s+(?P<value>[a-z0-9._~+/=-]+)",
    // AWS access key ids.
    r"\b(?P<value>(AKIA|ASIA)[A-Z0-9]{16})\b",
    // Credentials in URLs: scheme://user:password@host
    r"[a-z][a-z0-9+.-]*://[^/\s:@]+:(?P<value>[^@\s/]+)@",
];

/// How a program-specific flag carries its secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FlagSecret {
    /// The next argument is the secret (`sshpass -p x`, `redis-cli -a x`).
    Next,
    /// The next argument is `user:secret` (`curl -u bob:x`); also `-ubob:x`, `--user=bob:x`.
    AfterColon,
    /// Written onto the flag (`mysql -px`); the flag alone asks for it.
    Attached,
}

/// Flags of particular programs (by executable name) whose value is a secret though the flag's
/// name does not say so.
const PROGRAM_FLAGS: &[(&[&str], &str, FlagSecret)] = &[
    (&["curl"], "-u", FlagSecret::AfterColon),
    (&["curl"], "--user", FlagSecret::AfterColon),
    (&["curl"], "-U", FlagSecret::AfterColon),
    (&["curl"], "--proxy-user", FlagSecret::AfterColon),
    (&["sshpass"], "-p", FlagSecret::Next),
    (&["redis-cli", "valkey-cli"], "-a", FlagSecret::Next),
    (&["redis-cli", "valkey-cli"], "--pass", FlagSecret::Next),
    (
        &[
            "mysql",
            "mysqldump",
            "mysqladmin",
            "mysqlimport",
            "mysqlshow",
            "mysqlcheck",
            "mariadb",
            "mariadb-dump",
            "mariadb-admin",
        ],
        "-p",
        FlagSecret::Attached,
    ),
];

/// `user:secret` with the secret redacted (unchanged without a colon).
fn redact_after_colon(value: &str) -> String {
    match value.split_once(':') {
        Some((user, _)) => format!("{user}:{REDACTED}"),
        None => value.to_string(),
    }
}

/// `url` with any userinfo (`user:password@`, or a token alone) replaced by [`REDACTED`], for
/// logs and the configuration view: a collector's URL may carry credentials.
pub(crate) fn redact_url_userinfo(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://{REDACTED}{}", &rest[at..]),
        None => url.to_string(),
    }
}

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
        let program = args
            .first()
            .map(|a| a.rsplit('/').next().unwrap_or(a).to_string())
            .unwrap_or_default();
        let flags: Vec<(&str, FlagSecret)> = PROGRAM_FLAGS
            .iter()
            .filter(|(programs, _, _)| programs.contains(&program.as_str()))
            .map(|(_, flag, how)| (*flag, *how))
            .collect();
        let mut out = Vec::with_capacity(args.len());
        let mut next: Option<FlagSecret> = None;
        for (index, arg) in args.into_iter().enumerate() {
            if let Some(how) = next.take() {
                // What a flag took may be a secret flag itself (`curl -u --secret X`): the
                // argument after it is then a secret too (found by fuzzing).
                if self.secret_flags.as_ref().is_some_and(|r| r.is_match(&arg)) {
                    next = Some(FlagSecret::Next);
                }
                out.push(match how {
                    // What is left (a user name, or no colon at all) still goes through the
                    // patterns: `curl -u --password=...` must not hide a secret from them.
                    FlagSecret::AfterColon => self.redact_one(&redact_after_colon(&arg)),
                    _ => REDACTED.to_string(),
                });
                continue;
            }
            // A program's own flag decides for itself (`mysql -psecret` is not a flag named
            // "psecret" whose value follows).
            if index > 0 {
                if let Some(redacted) = Self::program_flag(&flags, &arg, &mut next) {
                    out.push(self.redact_one(&redacted));
                    continue;
                }
            }
            if self.secret_flags.as_ref().is_some_and(|r| r.is_match(&arg)) {
                next = Some(FlagSecret::Next);
            }
            out.push(self.redact_one(&arg));
        }
        out
    }

    /// `arg` redacted by one of this program's `flags`, or `None`; sets `next` when the
    /// secret is the next argument.
    fn program_flag(
        flags: &[(&str, FlagSecret)],
        arg: &str,
        next: &mut Option<FlagSecret>,
    ) -> Option<String> {
        for &(flag, how) in flags {
            if arg == flag {
                if how != FlagSecret::Attached {
                    *next = Some(how);
                }
                return Some(arg.to_string());
            }
            // --user=VALUE for a long flag; -uVALUE, -pVALUE for a short one.
            let value = if flag.starts_with("--") {
                arg.strip_prefix(flag)
                    .and_then(|rest| rest.strip_prefix('='))
            } else {
                arg.strip_prefix(flag)
            };
            let Some(value) = value.filter(|v| !v.is_empty()) else {
                continue;
            };
            let shown = &arg[..arg.len() - value.len()];
            return Some(match how {
                FlagSecret::AfterColon => format!("{shown}{}", redact_after_colon(value)),
                FlagSecret::Next | FlagSecret::Attached => format!("{shown}{REDACTED}"),
            });
        }
        None
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
    fn each_common_form_of_a_secret_is_redacted() {
        let cases: &[(&[&str], &[&str])] = &[
            (
                &["curl", "-u", "bob:s3cret", "https://x"],
                &["curl", "-u", "bob:[REDACTED]", "https://x"],
            ),
            (
                &["/usr/bin/curl", "--user=bob:s3cret", "-ualice:pw"],
                &[
                    "/usr/bin/curl",
                    "--user=bob:[REDACTED]",
                    "-ualice:[REDACTED]",
                ],
            ),
            // Found by fuzzing: the argument a program flag takes still meets the patterns.
            (
                &["curl", "-u", "--password=s3cret", "x"],
                &["curl", "-u", "--password=[REDACTED]", "x"],
            ),
            (
                &["curl", "-u", "--secret", "s3cret", "x"],
                &["curl", "-u", "--secret", "[REDACTED]", "x"],
            ),
            (
                &["mysql", "-psecret", "-h", "db", "-p"],
                &["mysql", "-p[REDACTED]", "-h", "db", "-p"],
            ),
            (
                &["sshpass", "-p", "hunter2", "ssh", "host"],
                &["sshpass", "-p", "[REDACTED]", "ssh", "host"],
            ),
            (
                &["redis-cli", "-a", "hunter2", "-p", "6379"],
                &["redis-cli", "-a", "[REDACTED]", "-p", "6379"],
            ),
            (
                &["curl", "-H", "X-Api-Key: abc123"],
                &["curl", "-H", "X-Api-Key: [REDACTED]"],
            ),
            (
                &["app", "password: hunter2"],
                &["app", "password: [REDACTED]"],
            ),
            (
                &["curl", "-d", r#"{"user":"bob","password":"hunter2"}"#],
                &["curl", "-d", r#"{"user":"bob","password":"[REDACTED]"}"#],
            ),
            (
                &[
                    "git",
                    "clone",
                    "https://ghp_abcdefghijklmnop1234@github.com/o/r",
                ],
                &["git", "clone", "https://[REDACTED]@github.com/o/r"],
            ),
            (
                &["openssl", "enc", "-pass", "pass:hunter2", "-in", "f"],
                &["openssl", "enc", "-pass", "pass:[REDACTED]", "-in", "f"],
            ),
        ];
        for (args, expected) in cases {
            let got = redact(args);
            println!("{args:?} -> {got:?}");
            assert_eq!(&got, expected);
            assert!(
                !got.iter()
                    .any(|a| a.contains("hunter2") || a.contains("s3cret")),
                "{got:?}"
            );
        }
        // What only looks like those stays.
        assert_eq!(redact(&["ps", "-u", "root:x"]), ["ps", "-u", "root:x"]);
        assert_eq!(
            redact(&["git", "clone", "ssh://git@github.com/o/r"]),
            ["git", "clone", "ssh://git@github.com/o/r"]
        );
        assert_eq!(redact(&["mysql", "-P", "3306"]), ["mysql", "-P", "3306"]);
    }

    #[test]
    fn a_urls_userinfo_is_redacted_and_the_rest_kept() {
        assert_eq!(
            redact_url_userinfo("https://bob:s3cret@collector:4318/v1"),
            "https://[REDACTED]@collector:4318/v1"
        );
        assert_eq!(
            redact_url_userinfo("http://tok3n@collector"),
            "http://[REDACTED]@collector"
        );
        assert_eq!(
            redact_url_userinfo("http://collector:4318/path@x"),
            "http://collector:4318/path@x"
        );
        assert_eq!(redact_url_userinfo("collector:4317"), "collector:4317");
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
