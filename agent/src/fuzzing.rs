//! Entry points for the fuzz targets (`agent/fuzz`, `cargo xtask fuzz`): each takes arbitrary
//! bytes, runs one parser or encoder the agent feeds with what others control, and panics only
//! when an oracle is broken (a planted secret survives, a label value does not round-trip). A
//! crash's input is kept in `agent/fuzz/regressions/<target>/` and replayed by the unit tests
//! below, so it stays fixed.
//!
//! Not part of the agent's interface: public only so that the fuzz crate can reach the
//! crate's internals.

use crate::{
    cli::HistogramBuckets,
    config::RunConfig,
    exporters::{families::Exposition, families::ExpositionConfig, otlp_metrics, otlp_target},
    model::{
        aggregate::WorkloadTotals, redact::Redactor, snapshot::MetricsSnapshot,
        snapshot::SelectedProcess, workload::Workload,
    },
    probes::{btf::Btf, offsets::KernelOffsets},
    procfs,
};

/// One fuzz target: arbitrary bytes in, a panic only when an oracle is broken.
pub type Target = fn(&[u8]);

/// The fuzz targets by name (the files of `agent/fuzz/fuzz_targets`).
pub const TARGETS: &[(&str, Target)] = &[
    ("ringbuf_decoder", ringbuf_decoder),
    ("proc_files", proc_files),
    ("cgroup_workload", cgroup_workload),
    ("redaction", redaction),
    ("btf", btf),
    ("config", config),
    ("otlp_header", otlp_header),
    ("exposition", exposition),
];

/// One ring-buffer record as the kernel programs write it.
pub fn ringbuf_decoder(data: &[u8]) {
    let _ = taskscope_common::decode::decode(data);
}

/// The /proc and cgroupfs files the agent parses; the first byte picks one.
pub fn proc_files(data: &[u8]) {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    match which % 9 {
        0 => drop(procfs::parse_stat(&text)),
        1 => drop(procfs::parse_status_uid(&text)),
        2 => drop(procfs::parse_cgroup_v2(&text)),
        3 => drop(procfs::parse_traceparent(rest)),
        4 => drop(procfs::find_traceparent(rest, procfs::ENVIRON_SCAN_BYTES)),
        5 => drop(procfs::parse_buddyinfo(&text)),
        6 => drop(procfs::parse_pressure(&text)),
        7 => {
            let _ = procfs::mount_point(&text, "cgroup2");
            let _ = procfs::cgroup_v1_mount(&text, "memory");
        }
        _ => {
            let _ = procfs::parse_kernel_version(&text);
            let _ = procfs::parse_lockdown(&text);
        }
    }
}

/// A cgroup path as a workload (container id, pod uid, runtime, systemd unit).
pub fn cgroup_workload(data: &[u8]) {
    let path = String::from_utf8_lossy(data);
    let workload = Workload::from_cgroup(&path);
    // Parsing is a function of the path alone.
    assert_eq!(
        format!("{workload:?}"),
        format!("{:?}", Workload::from_cgroup(&path))
    );
}

/// A secret the redaction oracle plants (letters and digits, long enough for every form).
const PLANTED: &str = "PlantedS3cretValue0123456789xyz";

/// A command line made of arbitrary arguments around a secret in one of the forms the
/// built-in patterns promise to redact; the secret must be gone.
pub fn redaction(data: &[u8]) {
    let Some((&form, rest)) = data.split_first() else {
        return;
    };
    let mut args: Vec<String> = rest
        .split(|&b| b == 0)
        .take(32)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    // Arguments that contain the secret already (in any case: the AWS form is upper case)
    // would make the oracle about the fuzzer's text rather than the forms.
    let upper = PLANTED.to_uppercase();
    args.retain(|a| !a.contains(PLANTED) && !a.to_uppercase().contains(&upper[..16]));
    let s = PLANTED;
    let planted: Vec<String> = match form % 14 {
        0 => vec![format!("--password={s}")],
        1 => vec!["--token".into(), s.into()],
        2 => vec![format!("PASSWORD={s}")],
        3 => vec![format!("api_key={s}")],
        4 => vec!["-H".into(), format!("Authorization: Bearer {s}")],
        5 => vec!["-H".into(), format!("X-Api-Key: {s}")],
        6 => vec![format!("https://user:{s}@example.com/")],
        7 => vec![format!("https://{s}@example.com/")],
        8 => vec![format!("{{\"password\":\"{s}\"}}")],
        9 => vec!["-pass".into(), format!("pass:{s}")],
        10 => vec![format!("password: {s}")],
        11 => vec!["--secret".into(), s.into()],
        12 => vec![format!("AKIA{}", &s[..16].to_uppercase())],
        _ => vec![format!("token={s}")],
    };
    let at = usize::from(form / 14) % (args.len() + 1);
    let program = args.first().cloned();
    let mut line: Vec<String> = Vec::with_capacity(args.len() + planted.len());
    line.extend(args.drain(..at));
    line.extend(planted.iter().cloned());
    line.extend(args);
    // Compiling the patterns takes far longer than redacting: once per process.
    static REDACTOR: std::sync::OnceLock<Redactor> = std::sync::OnceLock::new();
    let redacted = REDACTOR.get_or_init(Redactor::default).redact(line.clone());
    let joined = redacted.join(" ");
    let key = if form % 14 == 12 {
        format!("AKIA{}", &s[..16].to_uppercase())
    } else {
        s.to_string()
    };
    assert!(
        !joined.contains(&key),
        "planted secret survived (program {program:?}): {line:?} -> {redacted:?}"
    );
}

/// A BTF blob, and the struct offsets the agent looks for in it.
pub fn btf(data: &[u8]) {
    if let Ok(btf) = Btf::parse(data) {
        let _ = KernelOffsets::from_btf(&btf);
    }
}

/// A config file's text, through the same validation as `--config` and a reload.
pub fn config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let Ok(crate::config::Parsed::Run(base)) =
        crate::config::parse(vec!["taskscope".into(), "run".into()])
    else {
        return;
    };
    let base: RunConfig = *base;
    if let Err(err) = base.with_text(&text, std::path::Path::new("fuzz.toml")) {
        let _ = err.to_string();
    }
}

/// The fixed words of the header errors (`otlp_target::parse_header`).
const HEADER_ERROR_TEXTS: &[&str] = &[
    "the text before '=' is not a valid header name (letters, digits and !#$%&'*+-.^_`|~ only; it is not shown: it may hold a secret)",
    "a header is not NAME=VALUE (it is not shown: it may hold a secret)",
    "the value of header '' has control characters",
];

/// `--otlp-header` and `OTEL_EXPORTER_OTLP_HEADERS` values: an error never shows the value.
pub fn otlp_header(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Err(message) = otlp_target::parse_header(&text) {
        if let Some((name, value)) = text.split_once('=') {
            let value = value.trim();
            // The message names the header; what it says of a value is fixed text, which a
            // fuzzer learns and feeds back: only the rest would be the value shown.
            let shown = HEADER_ERROR_TEXTS
                .iter()
                .fold(message.clone(), |rest, fixed| {
                    rest.replace(fixed, "")
                        .replace(&fixed.replace("''", &format!("'{}'", name.trim())), "")
                });
            assert!(
                value.len() < 8 || !shown.contains(value),
                "the error shows the header's value: {message}"
            );
        }
    }
    let _ = otlp_target::parse_header_list(&text);
}

/// A label value (a comm, a cgroup path) through the Prometheus text and OTLP metrics: it
/// must come back exactly, as the text format's grammar reads it.
pub fn exposition(data: &[u8]) {
    let value = String::from_utf8_lossy(data).into_owned();
    let cgroup = format!("/{value}");
    let workload = Workload::from_cgroup(&cgroup);
    let snapshot = || MetricsSnapshot {
        workloads: vec![(workload.clone(), WorkloadTotals::default())],
        processes: vec![SelectedProcess {
            workload: workload.clone(),
            pid: 7,
            comm: value.clone(),
            totals: WorkloadTotals::default(),
        }],
        ..MetricsSnapshot::default()
    };
    let config = ExpositionConfig {
        max_series: 10_000,
        top_syscalls: 10,
        histogram_buckets: HistogramBuckets::Log2,
    };
    let mut exposition = Exposition::default();
    let text = exposition.encode(snapshot(), config);
    let line = text
        .lines()
        .find(|l| l.starts_with("taskscope_process_cpu_seconds_total{"))
        .unwrap_or_else(|| panic!("no process series in:\n{text}"));
    let labels = parse_labels(line).unwrap_or_else(|| panic!("unparsable: {line:?}"));
    assert_eq!(labels.get("comm"), Some(&value), "{line:?}");
    assert_eq!(labels.get("cgroup"), Some(&cgroup), "{line:?}");
    // OTLP: the same scrape, as attributes.
    let scrape = Exposition::default().scrape(snapshot(), config);
    let metrics = otlp_metrics::to_otlp(&scrape, 1, 2);
    let found = format!("{metrics:?}").contains(&format!("{:?}", value));
    assert!(found, "the comm is not an OTLP attribute value");
}

/// The labels of one sample line, read by the text format's grammar: `name{k="v",...} value`
/// where a value escapes `\`, `"` and newline as `\\`, `\"`, `\n`. Written here from the
/// format's description, not shared with the encoder.
fn parse_labels(line: &str) -> Option<std::collections::BTreeMap<String, String>> {
    let mut labels = std::collections::BTreeMap::new();
    let mut rest = line.split_once('{')?.1;
    loop {
        if let Some(after) = rest.strip_prefix('}') {
            return after.starts_with(' ').then_some(labels);
        }
        let (name, after) = rest.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            let (i, c) = chars.next()?;
            match c {
                '"' => break i,
                '\n' => return None,
                '\\' => match chars.next()?.1 {
                    '\\' => value.push('\\'),
                    '"' => value.push('"'),
                    'n' => value.push('\n'),
                    _ => return None,
                },
                c => value.push(c),
            }
        };
        labels.insert(name.trim_start_matches(',').to_string(), value);
        rest = after.get(end + 1..)?;
        rest = rest.strip_prefix(',').unwrap_or(rest);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every input kept under agent/fuzz/regressions (crashes found by fuzzing, and seeds).
    #[test]
    fn kept_inputs_pass_every_target() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions");
        let mut replayed = 0;
        for (name, target) in TARGETS {
            let Ok(dir) = std::fs::read_dir(root.join(name)) else {
                continue;
            };
            for file in dir.flatten() {
                let data = std::fs::read(file.path()).unwrap_or_default();
                target(&data);
                replayed += 1;
            }
        }
        println!("{replayed} kept inputs replayed");
    }

    /// The config target's dictionary names every key, so the fuzzer reaches each key's own
    /// parser rather than the unknown-key error.
    #[test]
    fn the_config_dictionary_has_every_key() {
        let dict = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/config.dict"),
        )
        .unwrap_or_default();
        let missing: Vec<String> = crate::config::keys()
            .into_iter()
            .filter(|k| !dict.contains(&format!("\"{k}\"")))
            .collect();
        assert!(
            missing.is_empty(),
            "not in agent/fuzz/config.dict: {missing:?}"
        );
    }

    #[test]
    fn the_oracles_hold_on_plain_inputs() {
        for (_, target) in TARGETS {
            target(b"");
            target(b"\x01hello\x00world");
        }
        exposition(b"a\"b\\c\nd\xff");
        for form in 0..=255u8 {
            redaction(&[form, b'x', 0, b'y']);
        }
    }
}
