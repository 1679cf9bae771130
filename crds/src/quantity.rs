//! Parsing of resource quantities: CPU in cores or millicores (`0.5`, `500m`) and byte sizes
//! with binary or decimal suffixes (`128Mi`, `1G`).

/// CPU in thousandths of a core: `500m` → 500, `1.5` → 1500.
pub fn parse_cpu_millis(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let millis = if let Some(number) = text.strip_suffix('m') {
        number
            .parse::<u64>()
            .map_err(|_| format!("invalid CPU quantity {text:?}: write cores (`0.5`, `2`) or millicores (`500m`)"))?
    } else {
        let cores: f64 = text
            .parse()
            .map_err(|_| format!("invalid CPU quantity {text:?}: write cores (`0.5`, `2`) or millicores (`500m`)"))?;
        if !cores.is_finite() || cores < 0.0 {
            return Err(format!("invalid CPU quantity {text:?}: must be a positive number"));
        }
        (cores * 1000.0).round() as u64
    };
    if millis == 0 {
        return Err(format!("CPU quantity {text:?} is zero: give at least `1m`"));
    }
    if millis > 1_024_000 {
        return Err(format!("CPU quantity {text:?} is larger than 1024 cores"));
    }
    Ok(millis)
}

/// A size in bytes: plain bytes or with a suffix Ki, Mi, Gi, Ti (powers of 1024) or k, K, M, G,
/// T (powers of 1000).
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let text = text.trim();
    const SUFFIXES: [(&str, u64); 9] = [
        ("Ki", 1 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("Ti", 1 << 40),
        ("k", 1_000),
        ("K", 1_000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
        ("T", 1_000_000_000_000),
    ];
    let (number, multiplier) = SUFFIXES
        .iter()
        .find_map(|(suffix, multiplier)| text.strip_suffix(suffix).map(|number| (number, *multiplier)))
        .unwrap_or((text, 1));
    let value: u64 = number.parse().map_err(|_| {
        format!("invalid size {text:?}: write a whole number with an optional suffix (`512Mi`, `1Gi`, `100M`)")
    })?;
    value
        .checked_mul(multiplier)
        .filter(|bytes| *bytes > 0)
        .ok_or_else(|| format!("size {text:?} must be greater than zero and below 16 EiB"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_quantities() {
        assert_eq!(parse_cpu_millis("500m"), Ok(500));
        assert_eq!(parse_cpu_millis("1.5"), Ok(1500));
        assert_eq!(parse_cpu_millis("2"), Ok(2000));
        assert!(parse_cpu_millis("0").is_err());
        assert!(parse_cpu_millis("-1").is_err());
        assert!(parse_cpu_millis("lots").is_err());
        assert!(parse_cpu_millis("NaN").is_err());
    }

    #[test]
    fn byte_quantities() {
        assert_eq!(parse_bytes("128Mi"), Ok(128 << 20));
        assert_eq!(parse_bytes("1G"), Ok(1_000_000_000));
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert!(parse_bytes("0").is_err());
        assert!(parse_bytes("1Xi").is_err());
        assert!(parse_bytes("99999999999Ti").is_err());
    }
}
