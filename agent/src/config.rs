//! The agent's configuration: command-line flags, environment variables and a config file
//! (TOML, `--config PATH`), in that order of precedence (a flag wins over its variable, a
//! variable over the file, the file over the default).
//!
//! The file's keys are the flags' own names in snake_case (`poll_interval = "1s"` for
//! `--poll-interval 1s`), and every value goes through the flag's own parser, so the file
//! accepts exactly what the command line accepts and one set of rules validates both.
//! Documented key by key in docs/configuration.md; a sample is deploy/taskscope.toml.

use std::{
    collections::{BTreeMap, BTreeSet},
    ffi::OsString,
    path::{Path, PathBuf},
};

use clap::{parser::ValueSource, ArgAction, ArgMatches, CommandFactory, FromArgMatches};
use serde::Serialize;

use crate::{
    cli::{Cli, Command, RunArgs},
    collector::custom::{CustomDefinition, CustomDefinitionText},
};
use taskscope_common::custom::MAX_METRICS;

/// The argument that names the file; it cannot be set from the file itself.
const CONFIG_KEY: &str = "config";

/// The array of tables that defines custom metrics (not a flag: see docs/custom-metrics.md).
pub(crate) const CUSTOM_METRICS_KEY: &str = "custom_metrics";

/// Keys whose values are secrets: shown by name only.
const SECRET_KEYS: &[&str] = &["otlp_headers"];

/// Why the configuration cannot be used. Exit code 2.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConfigError {
    #[error("config file {path}: cannot read it: {reason}; check the path given to --config (or TASKSCOPE_CONFIG)")]
    Unreadable { path: PathBuf, reason: String },
    #[error("config file {path}: not valid TOML: {reason}")]
    Syntax { path: PathBuf, reason: String },
    #[error("config file {path}: unknown key `{key}`{suggestion}; the keys are the flags of `taskscope run` in snake_case, listed in docs/configuration.md")]
    UnknownKey {
        path: PathBuf,
        key: String,
        suggestion: String,
    },
    #[error("config file {path}: key `{key}`: {reason}")]
    BadValue {
        path: PathBuf,
        key: String,
        reason: String,
    },
}

/// Where a setting's value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Source {
    Default,
    File,
    Environment,
    CommandLine,
}

/// One setting as the agent runs with it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Setting {
    /// The value(s) as given (secrets replaced by `[REDACTED]`).
    pub(crate) value: serde_json::Value,
    pub(crate) source: Source,
}

/// The `run` configuration with what is needed to read it again (reload) and to show it.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub args: RunArgs,
    /// Every setting by key, with its source.
    pub(crate) effective: BTreeMap<String, Setting>,
    /// The command line as given (flags keep winning over the file on reload).
    argv: Vec<OsString>,
    /// The config file, if any.
    pub(crate) file: Option<PathBuf>,
}

/// What the command line asked for.
#[derive(Debug)]
pub enum Parsed {
    Run(Box<RunConfig>),
    Other(Cli),
}

/// Parses the command line and, for `run`, the config file it names.
/// Errors of the command line itself are clap's (they exit 2 with usage).
pub fn parse(argv: Vec<OsString>) -> Result<Parsed, ParseFailure> {
    let matches = Cli::command()
        .try_get_matches_from(&argv)
        .map_err(ParseFailure::Cli)?;
    match matches.subcommand() {
        Some(("run", run)) => {
            let file = run.get_one::<PathBuf>(CONFIG_KEY).cloned();
            load(argv, file).map(|c| Parsed::Run(Box::new(c)))
        }
        _ => Cli::from_arg_matches(&matches)
            .map(Parsed::Other)
            .map_err(ParseFailure::Cli),
    }
}

/// A command line or config file the agent cannot start with.
#[derive(Debug, thiserror::Error)]
pub enum ParseFailure {
    #[error(transparent)]
    Cli(clap::Error),
    #[error(transparent)]
    Config(#[from] ConfigError),
}

impl RunConfig {
    /// Reads the config file again (for a reload): the command line and environment still
    /// win over it.
    pub(crate) fn reload(&self) -> Result<RunConfig, ParseFailure> {
        load(self.argv.clone(), self.file.clone())
    }

    /// The same command line with another file's text (PUT /api/v1/config): validated the
    /// same way; `origin` names it in errors.
    pub(crate) fn with_text(&self, text: &str, origin: &Path) -> Result<RunConfig, ParseFailure> {
        let table = parse_toml(text, origin)?;
        let mut config = merge(self.argv.clone(), origin, table)?;
        config.file = self.file.clone();
        Ok(config)
    }
}

fn load(argv: Vec<OsString>, file: Option<PathBuf>) -> Result<RunConfig, ParseFailure> {
    let table = match &file {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Unreadable {
                path: path.clone(),
                reason: e.to_string(),
            })?;
            parse_toml(&text, path)?
        }
        None => toml::Table::new(),
    };
    let origin = file.clone().unwrap_or_default();
    let mut config = merge(argv, &origin, table)?;
    config.file = file;
    Ok(config)
}

/// The file as a table. A syntax error names the line and column but never quotes the text:
/// the line may hold a secret (an OTLP header), and the error reaches the log and the answer
/// to `PUT /api/v1/config`.
fn parse_toml(text: &str, path: &Path) -> Result<toml::Table, ConfigError> {
    text.parse::<toml::Table>().map_err(|e| {
        let at = e.span().map_or_else(String::new, |span| {
            let before = text.get(..span.start).unwrap_or(text);
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!(" at line {line}, column {column}")
        });
        ConfigError::Syntax {
            path: path.to_path_buf(),
            reason: format!("{}{at}", e.message().trim().replace('\n', " ")),
        }
    })
}

/// The `run` subcommand's command definition.
fn run_command() -> clap::Command {
    use clap::Args;
    RunArgs::augment_args(clap::Command::new("run"))
}

/// Every key the file accepts (the run flags' ids).
pub(crate) fn keys() -> Vec<String> {
    run_command()
        .get_arguments()
        .filter(|a| a.get_long().is_some() && a.get_id() != CONFIG_KEY)
        .map(|a| a.get_id().to_string())
        .collect()
}

/// Merges the file's table under the command line and returns the parsed configuration.
fn merge(
    argv: Vec<OsString>,
    path: &Path,
    mut table: toml::Table,
) -> Result<RunConfig, ParseFailure> {
    let custom_metrics = take_custom_metrics(&mut table, path)?;
    let command = run_command();
    let given = Cli::command()
        .try_get_matches_from(&argv)
        .map_err(ParseFailure::Cli)?;
    let Some(("run", given)) = given.subcommand() else {
        return Err(not_run());
    };
    let mut from_file = Vec::new();
    let mut file_keys = BTreeSet::new();
    for (key, value) in &table {
        let arg = command
            .get_arguments()
            .find(|a| a.get_id() == key.as_str() && a.get_long().is_some() && key != CONFIG_KEY)
            .ok_or_else(|| ConfigError::UnknownKey {
                path: path.to_path_buf(),
                key: key.clone(),
                suggestion: suggest(key),
            })?;
        let long = format!("--{}", arg.get_long().unwrap_or_default());
        let bad = |reason: String| ConfigError::BadValue {
            path: path.to_path_buf(),
            key: key.clone(),
            // The value of a secret key is not quoted back, even when it is wrong.
            reason: if SECRET_KEYS.contains(&key.as_str()) {
                "not valid (the value is not shown: this key holds secrets); see docs/configuration.md for its form".to_string()
            } else {
                reason
            },
        };
        let args = to_args(&long, arg.get_action(), value).map_err(bad)?;
        // The flag's own parser, alone, so that the error is about this key only.
        let mut alone: Vec<OsString> = vec!["taskscope".into(), "run".into()];
        alone.extend(args.iter().map(OsString::from));
        if let Err(e) = Cli::command().try_get_matches_from(alone) {
            return Err(bad(clap_reason(&e)).into());
        }
        let overridden = matches!(
            given.value_source(key),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        );
        if !overridden {
            from_file.extend(args.into_iter().map(OsString::from));
            file_keys.insert(key.clone());
        }
    }
    // The file's flags first, then the command line as given (after `run`).
    let Some(run_at) = argv.iter().position(|a| a == "run") else {
        return Err(not_run());
    };
    let (head, tail) = argv.split_at(run_at + 1);
    let mut merged: Vec<OsString> = head.to_vec();
    merged.extend(from_file);
    merged.extend(tail.iter().cloned());
    let matches = Cli::command()
        .try_get_matches_from(&merged)
        .map_err(ParseFailure::Cli)?;
    let cli = Cli::from_arg_matches(&matches).map_err(ParseFailure::Cli)?;
    let (Command::Run(args), Some(("run", run))) = (cli.command, matches.subcommand()) else {
        return Err(not_run());
    };
    let mut args = *args;
    // Attaching uprobes takes CAP_SYS_ADMIN, kept for as long as the agent runs.
    args.uprobes |= !custom_metrics.is_empty();
    args.custom_metrics = custom_metrics;
    let mut effective = effective(&command, run, &file_keys);
    effective.insert(
        CUSTOM_METRICS_KEY.to_string(),
        custom_setting(&args.custom_metrics),
    );
    Ok(RunConfig {
        args,
        effective,
        argv,
        file: None,
    })
}

/// The `[[custom_metrics]]` tables of the file, each validated as the admin API validates one.
fn take_custom_metrics(
    table: &mut toml::Table,
    path: &Path,
) -> Result<Vec<CustomDefinition>, ConfigError> {
    let Some(value) = table.remove(CUSTOM_METRICS_KEY) else {
        return Ok(Vec::new());
    };
    let bad = |reason: String| ConfigError::BadValue {
        path: path.to_path_buf(),
        key: CUSTOM_METRICS_KEY.to_string(),
        reason,
    };
    let texts: Vec<CustomDefinitionText> = value.try_into().map_err(|e: toml::de::Error| {
        bad(format!(
            "{}; write one [[custom_metrics]] table per metric with name, kind, start, and end or selector where needed",
            e.message().trim()
        ))
    })?;
    if texts.len() > MAX_METRICS as usize {
        return Err(bad(format!(
            "{} definitions, more than the {MAX_METRICS} the agent keeps",
            texts.len()
        )));
    }
    let mut definitions: Vec<CustomDefinition> = Vec::with_capacity(texts.len());
    for (number, text) in texts.into_iter().enumerate() {
        let definition = CustomDefinition::try_from(text)
            .map_err(|e| bad(format!("table {} of {CUSTOM_METRICS_KEY}: {e}", number + 1)))?;
        if definitions
            .iter()
            .any(|d| d.text.name == definition.text.name)
        {
            return Err(bad(format!(
                "two definitions are named {}",
                definition.text.name
            )));
        }
        definitions.push(definition);
    }
    Ok(definitions)
}

/// The custom metrics as the effective configuration shows them.
fn custom_setting(definitions: &[CustomDefinition]) -> Setting {
    Setting {
        value: serde_json::to_value(definitions.iter().map(|d| &d.text).collect::<Vec<_>>())
            .unwrap_or_default(),
        source: if definitions.is_empty() {
            Source::Default
        } else {
            Source::File
        },
    }
}

fn not_run() -> ParseFailure {
    ParseFailure::Cli(clap::Error::raw(
        clap::error::ErrorKind::MissingSubcommand,
        "a config file is for `taskscope run`",
    ))
}

/// A TOML value as the flag's arguments.
fn to_args(long: &str, action: &ArgAction, value: &toml::Value) -> Result<Vec<String>, String> {
    let scalar = |v: &toml::Value| -> Result<String, String> {
        match v {
            toml::Value::String(s) => Ok(s.clone()),
            toml::Value::Integer(i) => Ok(i.to_string()),
            toml::Value::Float(f) => Ok(f.to_string()),
            toml::Value::Boolean(b) => Ok(b.to_string()),
            other => Err(format!(
                "expected a string, number or boolean, found {}",
                other.type_str()
            )),
        }
    };
    match (action, value) {
        (ArgAction::SetTrue, toml::Value::Boolean(true)) => Ok(vec![long.to_string()]),
        (ArgAction::SetTrue, toml::Value::Boolean(false)) => Ok(Vec::new()),
        (ArgAction::SetTrue, other) => Err(format!(
            "expected true or false, found {}",
            other.type_str()
        )),
        (ArgAction::Append, toml::Value::Array(items)) => items
            .iter()
            .map(|item| Ok(vec![long.to_string(), scalar(item)?]))
            .collect::<Result<Vec<_>, String>>()
            .map(|v| v.concat()),
        (ArgAction::Append, single) => Ok(vec![long.to_string(), scalar(single)?]),
        (_, toml::Value::Array(_)) => Err("expected one value, found a list".to_string()),
        (_, single) => Ok(vec![long.to_string(), scalar(single)?]),
    }
}

/// The first line of a clap error, without its `error: ` prefix.
fn clap_reason(err: &clap::Error) -> String {
    err.render()
        .to_string()
        .lines()
        .next()
        .unwrap_or_default()
        .trim_start_matches("error: ")
        .to_string()
}

fn suggest(key: &str) -> String {
    keys()
        .into_iter()
        .map(|k| (strsim::damerau_levenshtein(key, &k), k))
        .filter(|(distance, k)| *distance <= 3.max(k.len() / 4))
        .min()
        .map(|(_, k)| format!(" (did you mean `{k}`?)"))
        .unwrap_or_default()
}

fn effective(
    command: &clap::Command,
    run: &ArgMatches,
    file_keys: &BTreeSet<String>,
) -> BTreeMap<String, Setting> {
    let mut settings = BTreeMap::new();
    for arg in command.get_arguments() {
        let key = arg.get_id().as_str();
        if arg.get_long().is_none() || matches!(key, "help" | "version") {
            continue;
        }
        let source = match run.value_source(key) {
            Some(ValueSource::CommandLine) if file_keys.contains(key) => Source::File,
            Some(ValueSource::CommandLine) => Source::CommandLine,
            Some(ValueSource::EnvVariable) => Source::Environment,
            _ => Source::Default,
        };
        let raw: Vec<String> = run
            .get_raw(key)
            .into_iter()
            .flatten()
            .map(|v| v.to_string_lossy().into_owned())
            .collect();
        let raw: Vec<String> = if key == "otlp_endpoint" {
            raw.iter()
                .map(|url| crate::model::redact::redact_url_userinfo(url))
                .collect()
        } else if SECRET_KEYS.contains(&key) {
            raw.iter()
                .map(|v| match v.split_once('=') {
                    Some((name, _)) => format!("{name}=[REDACTED]"),
                    None => "[REDACTED]".to_string(),
                })
                .collect()
        } else {
            raw
        };
        let value = match (arg.get_action(), raw.as_slice()) {
            (ArgAction::Append, _) => serde_json::json!(raw),
            (ArgAction::SetTrue, _) => serde_json::json!(run.get_flag(key)),
            (_, []) => serde_json::Value::Null,
            (_, [one]) => serde_json::json!(one),
            _ => serde_json::json!(raw),
        };
        settings.insert(key.to_string(), Setting { value, source });
    }
    settings
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(args: &[&str]) -> Vec<OsString> {
        ["taskscope", "run"]
            .iter()
            .chain(args)
            .map(OsString::from)
            .collect()
    }

    fn with_file(text: &str, args: &[&str]) -> Result<RunConfig, ParseFailure> {
        let table = parse_toml(text, Path::new("t.toml"))?;
        merge(argv(args), Path::new("t.toml"), table)
    }

    fn config_error(text: &str) -> ConfigError {
        match with_file(text, &[]) {
            Err(ParseFailure::Config(e)) => e,
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    #[test]
    fn the_file_sets_what_the_command_line_does_not() {
        let config = with_file(
            "poll_interval = \"2s\"\nmax_series = 50\nkubernetes = true\nprocess_metrics = [\"comm=nginx\", \"pid=1\"]\nslow_syscall = \"1s\"\n",
            &["--slow-syscall", "5ms"],
        )
        .unwrap();
        assert_eq!(config.args.poll_interval, std::time::Duration::from_secs(2));
        assert_eq!(config.args.max_series, 50);
        assert!(config.args.kubernetes);
        assert_eq!(config.args.process_metrics.len(), 2);
        // The flag wins over the file.
        assert_eq!(
            config.args.slow_syscall,
            std::time::Duration::from_millis(5)
        );
        assert_eq!(config.effective["slow_syscall"].source, Source::CommandLine);
        assert_eq!(config.effective["poll_interval"].source, Source::File);
        assert_eq!(config.effective["poll_interval"].value, "2s");
        assert_eq!(config.effective["max_tasks"].source, Source::Default);
    }

    #[test]
    fn errors_never_quote_a_secret() {
        let token = "ghp_0123456789abcdefghijklmnopqrstuvwxyz";
        for text in [
            // An unclosed string on the line with the token.
            format!("poll_interval = \"1s\"\notlp_headers = [\"authorization=Bearer {token}]\n"),
            // A secret key of the wrong type.
            format!("otlp_headers = [{{ authorization = \"Bearer {token}\" }}]\n"),
            // A stray token where a key should be.
            format!("poll_interval = \"1s\"\n{token}\n"),
            format!("otlp_headers = \"x={token}\" trailing\n"),
        ] {
            let e = config_error(&text).to_string();
            println!("{e}");
            assert!(!e.contains(token) && !e.contains("ghp_"), "{e}");
            assert!(e.starts_with("config file t.toml: "), "{e}");
        }
        let e = config_error("poll_interval = \"1s\"\nmax_series = [1, \n").to_string();
        assert!(e.contains("at line 2"), "{e}");
    }

    #[test]
    fn mistakes_name_the_file_the_key_and_what_is_allowed() {
        let e = config_error("pol_interval = \"1s\"");
        assert_eq!(
            e.to_string(),
            "config file t.toml: unknown key `pol_interval` (did you mean `poll_interval`?); the keys are the flags of `taskscope run` in snake_case, listed in docs/configuration.md"
        );
        let e = config_error("poll_interval = \"5 parsecs\"");
        assert!(
            e.to_string()
                .starts_with("config file t.toml: key `poll_interval`: invalid value '5 parsecs'")
                && e.to_string().contains("use ns, us, ms, s, m or h"),
            "{e}"
        );
        let e = config_error("span_sample_ratio = 1.5");
        assert!(
            e.to_string().contains("key `span_sample_ratio`")
                && e.to_string().contains("from 0 to 1"),
            "{e}"
        );
        let e = config_error("process_metrics = [\"colour=blue\"]");
        assert!(e.to_string().contains("key `process_metrics`"), "{e}");
        let e = config_error("kubernetes = \"yes\"");
        assert!(
            e.to_string()
                .contains("expected true or false, found string"),
            "{e}"
        );
        let e = config_error("max_tasks = 10");
        assert!(
            e.to_string().contains("key `max_tasks`") && e.to_string().contains("1024"),
            "{e}"
        );
        let e = config_error("listen = [\"a\", \"b\"]");
        assert!(
            e.to_string().contains("expected one value, found a list"),
            "{e}"
        );
        assert!(matches!(
            parse_toml("poll_interval = ", Path::new("t.toml")),
            Err(ConfigError::Syntax { .. })
        ));
    }

    #[test]
    fn secrets_are_not_shown() {
        let config = with_file("otlp_headers = [\"authorization=Bearer x\"]", &[]).unwrap();
        assert_eq!(
            config.effective["otlp_headers"].value,
            serde_json::json!(["authorization=[REDACTED]"])
        );
    }

    #[test]
    fn credentials_in_the_collectors_url_are_not_shown() {
        let config =
            with_file("otlp_endpoint = \"https://bob:s3cret@collector:4318\"", &[]).unwrap();
        assert_eq!(
            config.effective["otlp_endpoint"].value,
            serde_json::json!("https://[REDACTED]@collector:4318")
        );
    }

    #[test]
    fn every_flag_is_a_key_and_the_sample_config_is_valid() {
        let keys = keys();
        assert!(keys.contains(&"poll_interval".to_string()));
        assert!(keys.contains(&"log_level".to_string()));
        assert!(!keys.contains(&"config".to_string()));
        for sample in ["deploy/taskscope.toml", "deploy/kubernetes/taskscope.toml"] {
            let path = format!("{}/../{sample}", env!("CARGO_MANIFEST_DIR"));
            let config = load(argv(&[]), Some(path.into())).unwrap_or_else(|e| panic!("{e}"));
            assert!(config.effective.values().any(|s| s.source == Source::File));
        }
    }
}
