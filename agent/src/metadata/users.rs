//! User names for `process.owner`, from the passwd file (`/etc/passwd`; in a container, mount
//! the host's and point `--passwd-file` at it). Read directly rather than through NSS, which
//! may block on the network; re-read when the file changes, checked at most once a minute.

use std::{
    collections::HashMap,
    path::PathBuf,
    time::{Duration, Instant, SystemTime},
};

/// Users kept at most (a passwd file has tens; a directory service could expose many more).
const MAX_USERS: usize = 65_536;

/// How often the file's modification time is checked.
const RECHECK: Duration = Duration::from_secs(60);

/// uid -> user name, from a passwd file.
#[derive(Debug)]
pub(crate) struct UserNames {
    path: PathBuf,
    names: HashMap<u32, String>,
    modified: Option<SystemTime>,
    checked: Option<Instant>,
}

impl UserNames {
    /// Names from `path` (read on first use).
    pub(crate) fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            names: HashMap::new(),
            modified: None,
            checked: None,
        }
    }

    /// The name of `uid`, if the passwd file has it.
    pub(crate) fn name(&mut self, uid: u32) -> Option<&str> {
        self.refresh();
        self.names.get(&uid).map(String::as_str)
    }

    fn refresh(&mut self) {
        if self.checked.is_some_and(|at| at.elapsed() < RECHECK) {
            return;
        }
        self.checked = Some(Instant::now());
        let modified = std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .ok();
        if modified.is_some() && modified == self.modified {
            return;
        }
        self.modified = modified;
        self.names = std::fs::read_to_string(&self.path)
            .map(|text| parse_passwd(&text))
            .unwrap_or_default();
    }
}

/// `name:password:uid:...` lines; the first name of a uid wins, as getpwuid(3) returns it.
fn parse_passwd(text: &str) -> HashMap<u32, String> {
    let mut names = HashMap::new();
    for line in text.lines() {
        let mut fields = line.split(':');
        let (Some(name), Some(_), Some(uid)) = (fields.next(), fields.next(), fields.next()) else {
            continue;
        };
        let Ok(uid) = uid.parse::<u32>() else {
            continue;
        };
        if names.len() < MAX_USERS && !name.is_empty() && !name.starts_with('#') {
            names.entry(uid).or_insert_with(|| name.to_string());
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwd_lines_map_uids_to_first_names() {
        let names = parse_passwd(
            "root:x:0:0:root:/root:/bin/bash\n# comment\nbroken\ntoor:x:0:0::/:/bin/sh\nnobody:x:65534:65534::/:/usr/sbin/nologin\n",
        );
        assert_eq!(names.get(&0).map(String::as_str), Some("root"));
        assert_eq!(names.get(&65534).map(String::as_str), Some("nobody"));
        assert_eq!(names.len(), 2);
    }

    #[test]
    fn reads_this_hosts_passwd() {
        let mut users = UserNames::new("/etc/passwd");
        assert_eq!(users.name(0), Some("root"));
    }
}
