//! How `taskscope top` writes figures: short, with units, the same width whatever the size.

/// A count or a rate: `0`, `12`, `250`, `1.2k`, `34M` (`-`: none yet).
pub(crate) fn count(value: Option<f64>) -> String {
    let Some(value) = value.filter(|v| v.is_finite()) else {
        return "-".into();
    };
    scaled(value, 1000.0, &["", "k", "M", "G", "T"])
}

/// Bytes (or bytes a second): `512`, `1.5Ki`, `20Mi` (`-`: none yet).
pub(crate) fn bytes(value: Option<f64>) -> String {
    let Some(value) = value.filter(|v| v.is_finite()) else {
        return "-".into();
    };
    scaled(value, 1024.0, &["", "Ki", "Mi", "Gi", "Ti"])
}

fn scaled(mut value: f64, step: f64, units: &[&str]) -> String {
    let mut unit = 0;
    while value.abs() >= step && unit + 1 < units.len() {
        value /= step;
        unit += 1;
    }
    if unit == 0 && value.fract() == 0.0 {
        format!("{value:.0}")
    } else if value.abs() < 10.0 {
        format!("{value:.1}{}", units[unit])
    } else {
        format!("{value:.0}{}", units[unit])
    }
}

/// A duration in ns: `850ns`, `64µs`, `4.2ms`, `1.07s` (`-`: none).
pub(crate) fn ns(value: Option<u64>) -> String {
    let Some(value) = value else {
        return "-".into();
    };
    let v = value as f64;
    if value < 1_000 {
        format!("{value}ns")
    } else if value < 1_000_000 {
        short(v / 1e3, "µs")
    } else if value < 1_000_000_000 {
        short(v / 1e6, "ms")
    } else {
        format!("{:.2}s", v / 1e9)
    }
}

fn short(value: f64, unit: &str) -> String {
    if value < 10.0 {
        format!("{value:.1}{unit}")
    } else {
        format!("{value:.0}{unit}")
    }
}

/// A share as a percentage: `12.5%` (`-`: none).
pub(crate) fn percent(share: Option<f64>) -> String {
    share.map_or_else(|| "-".into(), |s| format!("{:.1}%", s * 100.0))
}

/// Unix ns as `HH:MM:SS` UTC (`-`: none).
pub(crate) fn unix_time(value: Option<u64>) -> String {
    match value.filter(|&v| v > 0) {
        Some(ns) => {
            let seconds = ns / 1_000_000_000;
            let day = seconds % 86_400;
            format!("{:02}:{:02}:{:02}", day / 3600, day % 3600 / 60, day % 60)
        }
        None => "-".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_are_short_and_keep_their_unit() {
        assert_eq!(count(None), "-");
        assert_eq!(count(Some(0.0)), "0");
        assert_eq!(count(Some(0.5)), "0.5");
        assert_eq!(count(Some(250.0)), "250");
        assert_eq!(count(Some(1234.0)), "1.2k");
        assert_eq!(count(Some(34_000_000.0)), "34M");
        assert_eq!(bytes(Some(1536.0)), "1.5Ki");
        assert_eq!(ns(Some(850)), "850ns");
        assert_eq!(ns(Some(65_536)), "66µs");
        assert_eq!(ns(Some(4_194_304)), "4.2ms");
        assert_eq!(ns(Some(1_073_741_824)), "1.07s");
        assert_eq!(percent(Some(0.125)), "12.5%");
        assert_eq!(unix_time(Some(3_723_000_000_000)), "01:02:03");
    }
}
