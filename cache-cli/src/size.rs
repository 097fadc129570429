//! Byte sizes as people type them: `10GiB`, `500MB`, `1.5G`, `4096`.
//!
//! Units with an `i` are binary (`KiB` = 1024), without are decimal (`KB` = 1000), as
//! in the SI/IEC convention. Units are case-insensitive (`10gib` works). A plain number
//! is bytes. The result is exact (no floating point): `1.5KiB` is 1536.

/// Parses a size; the error says what was wrong and what is accepted.
pub fn parse_size(raw: &str) -> Result<u64, String> {
    let help = "give a size such as 10GiB, 500MB, 1.5G or a plain number of bytes";
    let s = raw.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = (&s[..split], s[split..].trim_start());
    if number.is_empty() {
        return Err(format!("{raw:?} is not a size: {help}"));
    }
    let multiplier: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "m" | "mb" => 1_000_000,
        "g" | "gb" => 1_000_000_000,
        "t" | "tb" => 1_000_000_000_000,
        "ki" | "kib" => 1 << 10,
        "mi" | "mib" => 1 << 20,
        "gi" | "gib" => 1 << 30,
        "ti" | "tib" => 1 << 40,
        _ => {
            return Err(format!(
                "{raw:?} has an unknown unit {unit:?}: {help} (units: B, KB, MB, GB, TB, KiB, MiB, GiB, TiB)"
            ));
        }
    };
    let (int, frac) = match number.split_once('.') {
        Some((i, f)) => (i, f),
        None => (number, ""),
    };
    if frac.contains('.') || (int.is_empty() && frac.is_empty()) {
        return Err(format!("{raw:?} is not a size: {help}"));
    }
    if frac.len() > 9 {
        return Err(format!(
            "{raw:?} has more decimals than a size needs: {help}"
        ));
    }
    let too_big = || format!("{raw:?} is too large (the limit is {} bytes)", u64::MAX);
    let int_value: u128 = if int.is_empty() {
        0
    } else {
        int.parse().map_err(|_| too_big())?
    };
    let frac_value: u128 = if frac.is_empty() {
        0
    } else {
        frac.parse()
            .map_err(|_| format!("{raw:?} is not a size: {help}"))?
    };
    let scale = 10u128.pow(u32::try_from(frac.len()).unwrap_or(9));
    let bytes = int_value
        .checked_mul(u128::from(multiplier))
        .and_then(|whole| whole.checked_add(frac_value * u128::from(multiplier) / scale))
        .ok_or_else(too_big)?;
    u64::try_from(bytes).map_err(|_| too_big())
}

/// Formats a byte count for people, in binary units with one decimal (`1.5 GiB`).
pub fn format_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut unit = 0;
    let mut scaled = u128::from(bytes) * 10 / 1024;
    while scaled >= 10 * 1024 && unit + 1 < UNITS.len() {
        scaled /= 1024;
        unit += 1;
    }
    format!("{}.{} {}", scaled / 10, scaled % 10, UNITS[unit])
}

/// Formats a duration for people: `340ms`, `4.2s`, `1m 13s`, `2h 05m`.
pub fn format_duration(d: std::time::Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        return format!("{ms}ms");
    }
    if ms < 60_000 {
        // Tenths, truncated: 59.99s stays under a minute.
        return format!("{}.{}s", ms / 1000, ms % 1000 / 100);
    }
    let s = d.as_secs();
    if s < 3600 {
        return format!("{}m {}s", s / 60, s % 60);
    }
    format!("{}h {:02}m", s / 3600, s % 3600 / 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_documented_forms() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("10GiB"), Ok(10 << 30));
        assert_eq!(parse_size("10gib"), Ok(10 << 30));
        assert_eq!(parse_size("500MB"), Ok(500_000_000));
        assert_eq!(parse_size("500 MB"), Ok(500_000_000));
        assert_eq!(parse_size("1.5KiB"), Ok(1536));
        assert_eq!(parse_size("1.5G"), Ok(1_500_000_000));
        assert_eq!(parse_size(".5k"), Ok(500));
        assert_eq!(parse_size("12B"), Ok(12));
        assert_eq!(parse_size("16TiB"), Ok(16 << 40));
    }

    #[test]
    fn refuses_garbage_with_a_hint() {
        for bad in [
            "",
            "GiB",
            "ten",
            "10 gigs",
            "1.2.3",
            ".",
            "-5",
            "10XB",
            "1e9",
            "1.0000000001G",
        ] {
            let err = parse_size(bad).unwrap_err();
            assert!(
                err.contains("10GiB") || err.contains("decimals"),
                "{bad}: {err}"
            );
        }
        assert!(
            parse_size("99999999999999999999")
                .unwrap_err()
                .contains("too large")
        );
        assert!(parse_size("20000000TiB").unwrap_err().contains("too large"));
    }

    #[test]
    fn formats_for_people() {
        assert_eq!(format_size(0), "0 B");
        assert_eq!(format_size(1023), "1023 B");
        assert_eq!(format_size(1536), "1.5 KiB");
        assert_eq!(format_size(10 << 30), "10.0 GiB");
        assert_eq!(format_size(u64::MAX), "16383.9 PiB");
    }

    #[test]
    fn durations_for_people() {
        use std::time::Duration;
        assert_eq!(format_duration(Duration::from_millis(0)), "0ms");
        assert_eq!(format_duration(Duration::from_millis(340)), "340ms");
        assert_eq!(format_duration(Duration::from_millis(4_250)), "4.2s");
        assert_eq!(format_duration(Duration::from_millis(59_999)), "59.9s");
        assert_eq!(format_duration(Duration::from_secs(73)), "1m 13s");
        assert_eq!(format_duration(Duration::from_secs(3599)), "59m 59s");
        assert_eq!(format_duration(Duration::from_secs(7500)), "2h 05m");
    }
}
