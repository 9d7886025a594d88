//! Kubernetes quantity strings for bandwidth (`100M`, `1Gi`, `500k`, `2.5G`): the format of
//! `kubernetes.io/*-bandwidth` and the CNI bandwidth capability.

/// Parses a quantity into an integer (bits/s for bandwidth). Decimal suffixes k M G T P E and
/// binary suffixes Ki Mi Gi Ti Pi Ei; fractions are allowed when the result is whole.
pub fn parse_quantity(text: &str) -> Result<u64, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("empty quantity".to_owned());
    }
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let multiplier: u128 = match suffix {
        "" => 1,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "P" => 1_000_000_000_000_000,
        "E" => 1_000_000_000_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "Pi" => 1 << 50,
        "Ei" => 1 << 60,
        other => {
            return Err(format!(
                "unknown suffix {other:?} (use k, M, G, T, P, E or Ki, Mi, Gi, Ti, Pi, Ei)"
            ));
        }
    };
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && fraction.is_empty() {
        return Err(format!("{text:?} has no number"));
    }
    if fraction.contains('.') || fraction.len() > 18 {
        return Err(format!("{text:?} is not a number"));
    }
    let whole: u128 = if whole.is_empty() {
        0
    } else {
        whole
            .parse()
            .map_err(|_| format!("{text:?} is not a number"))?
    };
    let scale = 10u128.pow(fraction.len() as u32);
    let fraction: u128 = if fraction.is_empty() {
        0
    } else {
        fraction
            .parse()
            .map_err(|_| format!("{text:?} is not a number"))?
    };
    let scaled = (whole * scale + fraction)
        .checked_mul(multiplier)
        .ok_or_else(|| format!("{text:?} is too large"))?;
    if scaled % scale != 0 {
        return Err(format!("{text:?} is not a whole number"));
    }
    u64::try_from(scaled / scale).map_err(|_| format!("{text:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::parse_quantity;

    #[test]
    fn accepts_kubernetes_quantities() {
        assert_eq!(parse_quantity("100M"), Ok(100_000_000));
        assert_eq!(parse_quantity("1G"), Ok(1_000_000_000));
        assert_eq!(parse_quantity("10k"), Ok(10_000));
        assert_eq!(parse_quantity("1Mi"), Ok(1 << 20));
        assert_eq!(parse_quantity("2.5G"), Ok(2_500_000_000));
        assert_eq!(parse_quantity("12345"), Ok(12345));
    }

    #[test]
    fn rejects_garbage_with_a_reason() {
        for bad in ["", "M", "10X", "1.5", "1.2.3M", "-5M", "99999999999999E"] {
            assert!(parse_quantity(bad).is_err(), "{bad} should be rejected");
        }
        assert!(
            parse_quantity("10X")
                .unwrap_err()
                .contains("unknown suffix")
        );
    }
}
