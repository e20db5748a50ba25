//! Durations in the configuration file: a bare integer of seconds, or a string
//! such as `"30"`, `"30s"`, `"5m"`, `"2h"`, `"1d"` or `"250ms"`.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};

const EXPECTED: &str =
    "a duration: an integer number of seconds, or a string such as \"30s\", \"5m\", \"2h\", \"1d\" or \"250ms\"";

/// Parses the string form. Kept separate from serde so the CLI and tests can
/// use the same rules.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    if digits.is_empty() {
        return Err(format!("invalid duration `{text}`: expected {EXPECTED}"));
    }
    let value: u64 = digits
        .parse()
        .map_err(|_| format!("invalid duration `{text}`: number too large"))?;
    // Units are matched case-insensitively because pgagroal users write "30S".
    let millis_per_unit: u64 = match unit.trim_start().to_ascii_lowercase().as_str() {
        "" | "s" => 1_000,
        "ms" => 1,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => {
            return Err(format!(
                "invalid duration `{text}`: unknown unit `{unit}`, expected ms, s, m, h or d"
            ))
        }
    };
    value
        .checked_mul(millis_per_unit)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("invalid duration `{text}`: too large"))
}

/// Renders a duration in the shortest unit that represents it exactly, so that
/// a value read back through [`parse_duration`] is unchanged.
pub fn format_duration(duration: Duration) -> String {
    let millis = duration.as_millis();
    if millis == 0 {
        return "0".to_string();
    }
    for (unit, size) in [
        ("d", 86_400_000u128),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
    ] {
        if millis.is_multiple_of(size) {
            return format!("{}{unit}", millis / size);
        }
    }
    format!("{millis}ms")
}

/// `#[serde(deserialize_with = "duration::deserialize")]`.
pub fn deserialize<'de, D>(deserializer: D) -> Result<Duration, D::Error>
where
    D: Deserializer<'de>,
{
    deserializer.deserialize_any(DurationVisitor)
}

struct DurationVisitor;

impl Visitor<'_> for DurationVisitor {
    type Value = Duration;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(EXPECTED)
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<Duration, E> {
        // Same bound as the string form, so that every value the file
        // accepts can be shown by `conf get` and given back to `conf set`.
        parse_duration(&value.to_string()).map_err(E::custom)
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<Duration, E> {
        let value = u64::try_from(value)
            .map_err(|_| E::custom(format!("invalid duration `{value}`: must not be negative")))?;
        self.visit_u64(value)
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<Duration, E> {
        parse_duration(value).map_err(E::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Deserialize)]
    struct Holder {
        #[serde(deserialize_with = "deserialize")]
        d: Duration,
    }

    fn from_toml(value: &str) -> Result<Duration, String> {
        toml::from_str::<Holder>(&format!("d = {value}"))
            .map(|h| h.d)
            .map_err(|e| e.message().to_string())
    }

    #[test]
    fn every_accepted_form() {
        let cases = [
            ("0", Duration::ZERO),
            ("30", Duration::from_secs(30)),
            ("\"0\"", Duration::ZERO),
            ("\"30\"", Duration::from_secs(30)),
            ("\"30s\"", Duration::from_secs(30)),
            ("\"5m\"", Duration::from_secs(300)),
            ("\"2h\"", Duration::from_secs(7200)),
            ("\"1d\"", Duration::from_secs(86_400)),
            ("\"250ms\"", Duration::from_millis(250)),
            ("\"30S\"", Duration::from_secs(30)),
            ("\" 10 s \"", Duration::from_secs(10)),
        ];
        for (text, expected) in cases {
            assert_eq!(from_toml(text), Ok(expected), "{text}");
        }
    }

    #[test]
    fn rejected_forms() {
        for text in [
            "-1",
            "1.5",
            "\"\"",
            "\"s\"",
            "\"10x\"",
            "\"1.5s\"",
            "\"-5s\"",
            "\"5 m s\"",
            "true",
            "\"99999999999999999999\"",
            "\"18446744073709551615d\"",
            // As seconds, more milliseconds than a u64 holds.
            "9223372036854775807",
        ] {
            let err = from_toml(text).expect_err(text);
            assert!(!err.is_empty(), "{text}");
        }
        assert!(from_toml("\"10x\"")
            .unwrap_err()
            .contains("unknown unit `x`"));
        assert!(from_toml("-1").unwrap_err().contains("negative"));
    }

    #[test]
    fn format_round_trips() {
        for text in ["0", "30s", "5m", "2h", "1d", "250ms", "90s", "1500ms"] {
            let d = parse_duration(text).unwrap();
            assert_eq!(format_duration(d), text);
            assert_eq!(parse_duration(&format_duration(d)).unwrap(), d);
        }
    }
}
