//! Where and how the OTLP exporters send, resolved once at start from the flags and the
//! standard `OTEL_EXPORTER_OTLP_*` environment variables, so that spans and metrics agree and
//! a mistake is reported before anything runs.
//!
//! Precedence, for each signal (traces, metrics): a flag, then the signal's own variable
//! (`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, ...), then the general one
//! (`OTEL_EXPORTER_OTLP_ENDPOINT`, ...). Headers are merged in that order, a later source
//! replacing an earlier one's value for the same name.

use std::{path::PathBuf, time::Duration};

use crate::cli::OtlpProtocol;

/// What a request to the collector may take before it counts as failed.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The two signals taskscope exports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Signal {
    Traces,
    Metrics,
}

impl Signal {
    /// The signal's part of the variable names (`TRACES`) and of the HTTP path (`traces`).
    fn names(self) -> (&'static str, &'static str) {
        match self {
            Signal::Traces => ("TRACES", "traces"),
            Signal::Metrics => ("METRICS", "metrics"),
        }
    }
}

/// The OTLP flags, as given on the command line (or in the config file).
#[derive(Debug, Clone, Default)]
pub(crate) struct OtlpFlags {
    /// Base URL of the collector (`http://collector:4318`).
    pub(crate) endpoint: Option<String>,
    pub(crate) protocol: Option<OtlpProtocol>,
    /// `--otlp-header NAME=VALUE`, repeatable.
    pub(crate) headers: Vec<(String, String)>,
    /// PEM file of the CA that signed the collector's certificate.
    pub(crate) ca_file: Option<PathBuf>,
    /// PEM files of a client certificate and its key, for collectors that ask for one (mTLS).
    pub(crate) client_certificate: Option<PathBuf>,
    pub(crate) client_key: Option<PathBuf>,
}

/// Where one signal goes, ready for the exporter.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SignalTarget {
    /// For HTTP the full URL (`.../v1/traces`); for gRPC the collector's base URL.
    pub(crate) url: String,
    pub(crate) protocol: OtlpProtocol,
    /// Sent with every request (HTTP headers or gRPC metadata). Names are lower case.
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) tls: TlsFiles,
}

/// TLS material, read at start (PEM).
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct TlsFiles {
    /// CA certificates trusted on top of the system's.
    pub(crate) ca_pem: Option<Vec<u8>>,
    /// Client certificate and key (PEM) for mutual TLS.
    pub(crate) client_identity: Option<(Vec<u8>, Vec<u8>)>,
}

/// A flag or variable that cannot be used: names it and says what is allowed.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("{source_name}: {message}")]
pub(crate) struct TargetError {
    /// The flag or environment variable at fault.
    pub(crate) source_name: String,
    pub(crate) message: String,
}

fn error(source_name: &str, message: impl Into<String>) -> TargetError {
    TargetError {
        source_name: source_name.to_string(),
        message: message.into(),
    }
}

/// Resolves one signal's target; `Ok(None)` when no endpoint is configured for it.
/// `env` looks a variable up (the process environment in the agent, a table in tests).
pub(crate) fn resolve(
    signal: Signal,
    flags: &OtlpFlags,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<SignalTarget>, TargetError> {
    let (upper, path) = signal.names();
    let protocol = match flags.protocol {
        Some(protocol) => protocol,
        None => match setting(env, upper, "PROTOCOL") {
            (_, None) => OtlpProtocol::HttpProtobuf,
            (name, Some(value)) => parse_protocol(&name, &value)?,
        },
    };
    let Some(url) = resolve_url(upper, path, protocol, flags, env)? else {
        return Ok(None);
    };
    Ok(Some(SignalTarget {
        url,
        protocol,
        headers: resolve_headers(upper, flags, env)?,
        tls: resolve_tls(upper, flags, env)?,
    }))
}

/// A setting from the signal's own variable (`OTEL_EXPORTER_OTLP_{SIGNAL}_{suffix}`), else the
/// general one (`OTEL_EXPORTER_OTLP_{suffix}`): the variable's name and its value, if set.
fn setting(
    env: &dyn Fn(&str) -> Option<String>,
    upper: &str,
    suffix: &str,
) -> (String, Option<String>) {
    let signal_var = format!("OTEL_EXPORTER_OTLP_{upper}_{suffix}");
    match env(&signal_var).filter(|v| !v.trim().is_empty()) {
        Some(value) => (signal_var, Some(value)),
        None => {
            let general = format!("OTEL_EXPORTER_OTLP_{suffix}");
            let value = env(&general).filter(|v| !v.trim().is_empty());
            (general, value)
        }
    }
}

/// The collector's URL for the signal, `None` when no endpoint is configured. A base URL gets
/// the signal's path (HTTP); a signal's own variable is a full URL.
fn resolve_url(
    upper: &str,
    path: &str,
    protocol: OtlpProtocol,
    flags: &OtlpFlags,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<String>, TargetError> {
    let (url, url_source) = if let Some(base) = flags.endpoint.as_ref().filter(|e| !e.is_empty()) {
        (with_signal_path(base, path, protocol), "--otlp-endpoint")
    } else {
        let signal_var = format!("OTEL_EXPORTER_OTLP_{upper}_ENDPOINT");
        if let Some(full) = env(&signal_var).filter(|v| !v.trim().is_empty()) {
            (full.trim().to_string(), "signal")
        } else if let Some(base) = env("OTEL_EXPORTER_OTLP_ENDPOINT").filter(|v| !v.is_empty()) {
            (
                with_signal_path(base.trim(), path, protocol),
                "OTEL_EXPORTER_OTLP_ENDPOINT",
            )
        } else {
            return Ok(None);
        }
    };
    let url_source = if url_source == "signal" {
        format!("OTEL_EXPORTER_OTLP_{upper}_ENDPOINT")
    } else {
        url_source.to_string()
    };
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(error(
            &url_source,
            format!("'{url}' is not an http:// or https:// URL (e.g. http://otel-collector:4318)"),
        ));
    }

    Ok(Some(url))
}

/// The headers: `OTEL_EXPORTER_OTLP_HEADERS`, then the signal's, then `--otlp-header`, each
/// replacing a header of the same name.
fn resolve_headers(
    upper: &str,
    flags: &OtlpFlags,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<(String, String)>, TargetError> {
    let mut headers: Vec<(String, String)> = Vec::new();
    for name in [
        "OTEL_EXPORTER_OTLP_HEADERS".to_string(),
        format!("OTEL_EXPORTER_OTLP_{upper}_HEADERS"),
    ] {
        if let Some(list) = env(&name) {
            for header in parse_header_list(&list).map_err(|m| error(&name, m))? {
                merge_header(&mut headers, header);
            }
        }
    }
    for (name, value) in &flags.headers {
        merge_header(&mut headers, (name.to_ascii_lowercase(), value.clone()));
    }

    Ok(headers)
}

/// The CA and the client identity: from the flags, else the variables.
fn resolve_tls(
    upper: &str,
    flags: &OtlpFlags,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<TlsFiles, TargetError> {
    let file = |flag: &Option<PathBuf>, flag_name: &str, suffix: &str| {
        let (name, path) = match flag {
            Some(path) => (flag_name.to_string(), Some(path.clone())),
            None => {
                let (name, value) = setting(env, upper, suffix);
                (name, value.map(PathBuf::from))
            }
        };
        path.map(|path| {
            std::fs::read(&path).map_err(|e| {
                error(
                    &name,
                    format!(
                        "cannot read {}: {e}; give a readable PEM file",
                        path.display()
                    ),
                )
            })
        })
        .transpose()
    };
    let ca_pem = file(&flags.ca_file, "--otlp-ca-file", "CERTIFICATE")?;
    let client_cert = file(
        &flags.client_certificate,
        "--otlp-client-certificate",
        "CLIENT_CERTIFICATE",
    )?;
    let client_key = file(&flags.client_key, "--otlp-client-key", "CLIENT_KEY")?;
    let client_identity = match (client_cert, client_key) {
        (Some(cert), Some(key)) => Some((cert, key)),
        (None, None) => None,
        _ => return Err(error(
            "--otlp-client-certificate",
            "a client certificate needs its key and a key its certificate: give both or neither",
        )),
    };
    Ok(TlsFiles {
        ca_pem,
        client_identity,
    })
}

fn parse_protocol(source_name: &str, value: &str) -> Result<OtlpProtocol, TargetError> {
    match value.trim() {
        "http/protobuf" | "http" => Ok(OtlpProtocol::HttpProtobuf),
        "grpc" => Ok(OtlpProtocol::Grpc),
        other => Err(error(
            source_name,
            format!("protocol '{other}' is not supported: use http/protobuf or grpc"),
        )),
    }
}

fn with_signal_path(base: &str, path: &str, protocol: OtlpProtocol) -> String {
    let base = base.trim_end_matches('/');
    match protocol {
        OtlpProtocol::HttpProtobuf => format!("{base}/v1/{path}"),
        OtlpProtocol::Grpc => base.to_string(),
    }
}

fn merge_header(headers: &mut Vec<(String, String)>, header: (String, String)) {
    match headers.iter_mut().find(|(name, _)| *name == header.0) {
        Some(existing) => existing.1 = header.1,
        None => headers.push(header),
    }
}

/// Parses `name=value,name2=value2` (values percent-encoded, as the OpenTelemetry
/// specification writes them). Names are lower-cased.
pub(crate) fn parse_header_list(list: &str) -> Result<Vec<(String, String)>, String> {
    list.split(',')
        .filter(|item| !item.trim().is_empty())
        .map(|item| {
            let header = parse_header(item)?;
            Ok((header.0, percent_decode(&header.1)?))
        })
        .collect()
}

/// Parses one `NAME=VALUE` header (as `--otlp-header` takes it: the value verbatim).
pub(crate) fn parse_header(text: &str) -> Result<(String, String), String> {
    let (name, value) = text.split_once('=').ok_or_else(|| {
        "a header is not NAME=VALUE (it is not shown: it may hold a secret)".to_string()
    })?;
    let name = name.trim();
    let valid_name = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if !valid_name {
        // Not shown: a header written the wrong way round may have its secret before '='.
        return Err(
            "the text before '=' is not a valid header name (letters, digits and !#$%&'*+-.^_`|~ only; it is not shown: it may hold a secret)"
                .to_string(),
        );
    }
    let value = value.trim();
    if value.bytes().any(|b| b.is_ascii_control()) {
        return Err(format!(
            "the value of header '{name}' has control characters"
        ));
    }
    Ok((name.to_ascii_lowercase(), value.to_string()))
}

fn percent_decode(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or("a '%' is not followed by two hex digits")?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "a percent-encoded value is not UTF-8".to_string())
}

/// An HTTP client for the collector: its CA and client identity if given, the system's roots
/// otherwise. Also used by the span exporter, so both signals trust the same roots.
pub(crate) fn http_client(tls: &TlsFiles) -> Result<reqwest::Client, String> {
    install_crypto_provider();
    let mut builder = reqwest::Client::builder().timeout(REQUEST_TIMEOUT);
    if let Some(pem) = &tls.ca_pem {
        let certs = reqwest::Certificate::from_pem_bundle(pem)
            .map_err(|e| format!("the CA file is not PEM certificates: {e}"))?;
        for cert in certs {
            builder = builder.add_root_certificate(cert);
        }
    }
    if let Some((cert, key)) = &tls.client_identity {
        let mut pem = cert.clone();
        pem.push(b'\n');
        pem.extend_from_slice(key);
        builder = builder.identity(
            reqwest::Identity::from_pem(&pem)
                .map_err(|e| format!("the client certificate or key is not usable: {e}"))?,
        );
    }
    builder.build().map_err(|e| e.to_string())
}

/// A gRPC channel to the collector (TLS when the URL is https://), connecting lazily and
/// reconnecting by itself when the collector comes back.
pub(crate) fn grpc_channel(target: &SignalTarget) -> Result<tonic::transport::Channel, String> {
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
    install_crypto_provider();
    let mut endpoint = Endpoint::from_shared(target.url.clone())
        .map_err(|e| format!("'{}' is not a gRPC endpoint: {e}", target.url))?
        .timeout(REQUEST_TIMEOUT)
        .connect_timeout(REQUEST_TIMEOUT);
    if target.url.starts_with("https://") {
        let mut tls = ClientTlsConfig::new().with_native_roots();
        if let Some(pem) = &target.tls.ca_pem {
            tls = tls.ca_certificate(Certificate::from_pem(pem));
        }
        if let Some((cert, key)) = &target.tls.client_identity {
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        endpoint = endpoint
            .tls_config(tls)
            .map_err(|e| format!("TLS for {}: {e}", target.url))?;
    }
    Ok(endpoint.connect_lazy())
}

/// The headers as gRPC metadata.
pub(crate) fn grpc_metadata(
    headers: &[(String, String)],
) -> Result<tonic::metadata::MetadataMap, String> {
    let mut metadata = tonic::metadata::MetadataMap::new();
    for (name, value) in headers {
        let key = tonic::metadata::MetadataKey::from_bytes(name.as_bytes())
            .map_err(|_| format!("header {name} is not a valid gRPC metadata name"))?;
        let value = value.parse().map_err(|_| {
            format!("the value of header {name} is not valid gRPC metadata (ASCII only)")
        })?;
        metadata.insert(key, value);
    }
    Ok(metadata)
}

/// rustls is built with ring only (no C toolchain needed beyond cc); it must be the
/// process's provider before the first TLS client is made.
pub(crate) fn install_crypto_provider() {
    // Err means one is installed already: fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn resolve_with(
        signal: Signal,
        flags: &OtlpFlags,
        vars: &[(&str, &str)],
    ) -> Result<Option<SignalTarget>, TargetError> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        resolve(signal, flags, &|name| vars.get(name).cloned())
    }

    #[test]
    fn nothing_configured_means_no_export() {
        assert_eq!(
            resolve_with(Signal::Traces, &OtlpFlags::default(), &[]),
            Ok(None)
        );
    }

    #[test]
    fn a_base_url_gets_the_signal_path_for_http_only() {
        let flags = OtlpFlags {
            endpoint: Some("http://c:4318/".into()),
            ..OtlpFlags::default()
        };
        let t = resolve_with(Signal::Metrics, &flags, &[]).unwrap().unwrap();
        assert_eq!(t.url, "http://c:4318/v1/metrics");
        let t = resolve_with(
            Signal::Traces,
            &OtlpFlags::default(),
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ],
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            (t.url.as_str(), t.protocol),
            ("http://c:4317", OtlpProtocol::Grpc)
        );
    }

    #[test]
    fn signal_variables_beat_general_ones_and_flags_beat_both() {
        let vars = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://general:4318"),
            (
                "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
                "http://m:9/custom/path",
            ),
            ("OTEL_EXPORTER_OTLP_HEADERS", "a=1,b=2"),
            ("OTEL_EXPORTER_OTLP_METRICS_HEADERS", "b=3"),
        ];
        let t = resolve_with(Signal::Metrics, &OtlpFlags::default(), &vars)
            .unwrap()
            .unwrap();
        assert_eq!(t.url, "http://m:9/custom/path");
        assert_eq!(
            t.headers,
            vec![("a".into(), "1".into()), ("b".into(), "3".into())]
        );
        let traces = resolve_with(Signal::Traces, &OtlpFlags::default(), &vars)
            .unwrap()
            .unwrap();
        assert_eq!(traces.url, "http://general:4318/v1/traces");
        assert_eq!(traces.headers.len(), 2);
        let flags = OtlpFlags {
            endpoint: Some("https://flag:4318".into()),
            headers: vec![("B".into(), "flag".into())],
            ..OtlpFlags::default()
        };
        let t = resolve_with(Signal::Metrics, &flags, &vars)
            .unwrap()
            .unwrap();
        assert_eq!(t.url, "https://flag:4318/v1/metrics");
        assert_eq!(t.headers[1], ("b".into(), "flag".into()));
    }

    #[test]
    fn header_lists_are_percent_decoded() {
        assert_eq!(
            parse_header_list("Authorization=Bearer%20abc, x-tenant = t1 ,"),
            Ok(vec![
                ("authorization".into(), "Bearer abc".into()),
                ("x-tenant".into(), "t1".into())
            ])
        );
        assert!(parse_header_list("a=%zz").is_err());
    }

    #[test]
    fn mistakes_name_their_source() {
        let err = resolve_with(
            Signal::Traces,
            &OtlpFlags::default(),
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
                ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/json"),
            ],
        )
        .unwrap_err();
        assert_eq!(err.source_name, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL");
        assert!(err.message.contains("http/protobuf or grpc"), "{err}");
        let err = resolve_with(
            Signal::Traces,
            &OtlpFlags::default(),
            &[("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318")],
        )
        .unwrap_err();
        assert_eq!(err.source_name, "OTEL_EXPORTER_OTLP_ENDPOINT");
        let err = resolve_with(
            Signal::Traces,
            &OtlpFlags::default(),
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c"),
                ("OTEL_EXPORTER_OTLP_HEADERS", "novalue"),
            ],
        )
        .unwrap_err();
        assert_eq!(err.source_name, "OTEL_EXPORTER_OTLP_HEADERS");
        let flags = OtlpFlags {
            endpoint: Some("https://c".into()),
            ca_file: Some("/nonexistent/ca.pem".into()),
            ..OtlpFlags::default()
        };
        let err = resolve_with(Signal::Traces, &flags, &[]).unwrap_err();
        assert_eq!(err.source_name, "--otlp-ca-file");
        assert!(err.message.contains("/nonexistent/ca.pem"));
    }

    #[test]
    fn header_errors_do_not_echo_secret_values() {
        for text in [
            "Authorization: Bearer sekrit-token-1234",
            "Authorization: Bearer sekrit=1",
        ] {
            let err = parse_header(text).unwrap_err();
            assert!(!err.contains("sekrit"), "{err}");
        }
    }
}
