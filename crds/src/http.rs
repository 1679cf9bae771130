//! The HTTP values users write into routes and listeners — host names, paths, header names and
//! values, methods, query parameters — and the rules each must pass. They end up in HAProxy's
//! configuration, so each rule is written to keep a value one literal token: no space where a
//! token would end, no quote, backslash, `#` or control character, nothing a regex engine or
//! a log-format string would read as syntax. The renderer checks them again before writing.

/// Longest header or query-parameter value accepted.
pub const MAX_VALUE_LEN: usize = 1024;
/// Longest route path accepted.
pub const MAX_PATH_LEN: usize = 1024;

/// The methods a route may match (the Gateway API's list).
pub const METHODS: [&str; 9] = ["GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"];

/// Checks a host name: lower-case DNS labels joined by `.`, at most 253 characters, no IP
/// address; with `wildcard`, the first label may be `*` (`*.example.com`: any name ending in
/// `.example.com`). Returns what is wrong.
pub fn check_hostname(value: &str, wildcard: bool) -> Result<(), String> {
    let rest = match value.strip_prefix("*.") {
        Some(_) if !wildcard => {
            return Err(format!("{value:?}: a wildcard is not allowed here; give a full host name"))
        }
        Some(rest) => rest,
        None => value,
    };
    if value.len() > 253 {
        return Err(format!("{value:?} is {} characters long; at most 253 are allowed", value.len()));
    }
    if value.parse::<std::net::IpAddr>().is_ok() {
        return Err(format!("{value:?} is an IP address; give a host name"));
    }
    let fits = !rest.is_empty()
        && rest.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    if !fits {
        let hint = if wildcard { " (a wildcard is `*.` followed by a name)" } else { "" };
        return Err(format!(
            "{value:?} is not a host name: use lower-case letters, digits and '-' in labels joined by '.'{hint}, e.g. \"shop.example.com\""
        ));
    }
    Ok(())
}

/// Checks a path a route matches or rewrites to: it starts with `/`, holds only URL path
/// characters (letters, digits and `-._~/%+,;:@!=&`), and has no `//`, `/./`, `/../` or
/// encoded `/` (which would make the match depend on how a backend normalises it).
pub fn check_route_path(value: &str) -> Result<(), String> {
    if !value.starts_with('/') {
        return Err(format!("{value:?} must start with '/'"));
    }
    if value.len() > MAX_PATH_LEN {
        return Err(format!("the path is {} characters long; at most {MAX_PATH_LEN} are allowed", value.len()));
    }
    if let Some(bad) = value.chars().find(|c| !(c.is_ascii_alphanumeric() || "-._~/%+,;:@!=&".contains(*c))) {
        return Err(format!(
            "{value:?} contains {bad:?}; use only letters, digits and -._~/%+,;:@!=& (percent-encode anything else; a query is matched with queryParams)"
        ));
    }
    let lower = value.to_ascii_lowercase();
    for bad in ["//", "/./", "/../", "%2f", "%5c"] {
        if lower.contains(bad) {
            return Err(format!("{value:?} contains {bad:?}; give the path as a backend sees it, normalised"));
        }
    }
    if lower.ends_with("/.") || lower.ends_with("/..") {
        return Err(format!("{value:?} ends with a dot segment; give the path normalised"));
    }
    Ok(())
}

/// Checks a header name: 1 to 256 letters, digits, `-` and `_`.
pub fn check_header_name(value: &str) -> Result<(), String> {
    if value.is_empty() || value.len() > 256 {
        return Err("a header name has 1 to 256 characters".into());
    }
    if let Some(bad) = value.chars().find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_')) {
        return Err(format!("header name {value:?} contains {bad:?}; use letters, digits, '-' and '_'"));
    }
    Ok(())
}

/// Checks a header or query-parameter value: printable ASCII (spaces inside allowed), no
/// quote or backslash, no leading or trailing space, at most [`MAX_VALUE_LEN`] characters.
pub fn check_value(value: &str) -> Result<(), String> {
    if value.len() > MAX_VALUE_LEN {
        return Err(format!("the value is {} characters long; at most {MAX_VALUE_LEN} are allowed", value.len()));
    }
    if let Some(bad) = value.chars().find(|c| !(' '..='~').contains(c) || matches!(c, '"' | '\'' | '\\')) {
        return Err(format!("{value:?} contains {bad:?}; use printable ASCII without quotes or backslashes"));
    }
    if value.starts_with(' ') || value.ends_with(' ') {
        return Err(format!("{value:?} starts or ends with a space"));
    }
    Ok(())
}

/// Checks a query parameter name: 1 to 256 letters, digits and `-._~`.
pub fn check_query_name(value: &str) -> Result<(), String> {
    if value.is_empty() || value.len() > 256 {
        return Err("a query parameter name has 1 to 256 characters".into());
    }
    if let Some(bad) = value.chars().find(|c| !(c.is_ascii_alphanumeric() || "-._~".contains(*c))) {
        return Err(format!("query parameter {value:?} contains {bad:?}; use letters, digits and -._~"));
    }
    Ok(())
}

/// Checks a method: one of [`METHODS`].
pub fn check_method(value: &str) -> Result<(), String> {
    if METHODS.contains(&value) {
        Ok(())
    } else {
        Err(format!("{value:?} is not a method; use one of {}", METHODS.join(", ")))
    }
}

/// Whether a request for `host` is one `pattern` names: equal, or for `*.suffix` any name
/// ending in `.suffix`.
pub fn hostname_matches(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix('*') {
        Some(suffix) => host.len() > suffix.len() && host.ends_with(suffix),
        None => pattern == host,
    }
}

/// The host names a route serves on a listener: its own names narrowed by the listener's (the
/// Gateway API's intersection). `None` when they have nothing in common; `Some(vec![])` means
/// every host.
pub fn intersect_hostnames(listener: Option<&str>, route: &[String]) -> Option<Vec<String>> {
    let Some(listener) = listener else { return Some(route.to_vec()) };
    if route.is_empty() {
        return Some(vec![listener.to_owned()]);
    }
    let mut names: Vec<String> = route
        .iter()
        .filter_map(|name| {
            if hostname_matches(listener, name) || listener == name {
                Some(name.clone())
            } else if hostname_matches(name, listener.trim_start_matches("*.")) || hostname_matches(name, listener) {
                // The route's wildcard is wider: the listener's name is what is served.
                Some(listener.to_owned())
            } else {
                None
            }
        })
        .collect();
    names.sort();
    names.dedup();
    if names.is_empty() {
        None
    } else {
        Some(names)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostnames() {
        for good in ["shop.example.com", "a", "x-1.y"] {
            assert_eq!(check_hostname(good, false), Ok(()), "{good}");
        }
        assert_eq!(check_hostname("*.example.com", true), Ok(()));
        for bad in [
            "*.example.com",
            "Shop.example.com",
            "a..b",
            "-a.b",
            "a b",
            "a\nb",
            "a#b",
            "127.0.0.1",
            "",
            "a.",
            "shop.example.com:80",
        ] {
            assert!(check_hostname(bad, false).is_err(), "{bad:?}");
        }
        for bad in ["*", "*.", "**.a", "a.*.b", "*a.b"] {
            assert!(check_hostname(bad, true).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn paths_headers_values() {
        assert_eq!(check_route_path("/api/v1"), Ok(()));
        for bad in
            ["api", "/a b", "/a#b", "/a?b", "/a\"", "/a'", "/a\\b", "/a//b", "/a/../b", "/a%2Fb", "/a/.", "/(x)", "/a$"]
        {
            assert!(check_route_path(bad).is_err(), "{bad:?}");
        }
        assert_eq!(check_header_name("X-Canary_1"), Ok(()));
        for bad in ["", "x y", "x:y", "x\r\ny", "x(y)", "x,y"] {
            assert!(check_header_name(bad).is_err(), "{bad:?}");
        }
        assert_eq!(check_value("a b; c=%41"), Ok(()));
        for bad in ["a\nb", "a\"b", "a'b", "a\\b", " a", "a ", "é"] {
            assert!(check_value(bad).is_err(), "{bad:?}");
        }
        assert!(check_method("GET").is_ok() && check_method("get").is_err() && check_method("GET\n").is_err());
        assert!(check_query_name("page").is_ok() && check_query_name("a=b").is_err());
    }

    #[test]
    fn wildcards_and_intersections() {
        assert!(hostname_matches("*.example.com", "a.example.com"));
        assert!(hostname_matches("*.example.com", "a.b.example.com"));
        assert!(!hostname_matches("*.example.com", "example.com"));
        assert!(!hostname_matches("*.example.com", "aexample.com"));
        let names = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(intersect_hostnames(None, &names(&["a.b"])), Some(names(&["a.b"])));
        assert_eq!(intersect_hostnames(Some("*.ex.com"), &[]), Some(names(&["*.ex.com"])));
        assert_eq!(
            intersect_hostnames(Some("*.ex.com"), &names(&["shop.ex.com", "other.org"])),
            Some(names(&["shop.ex.com"]))
        );
        assert_eq!(intersect_hostnames(Some("shop.ex.com"), &names(&["*.ex.com"])), Some(names(&["shop.ex.com"])));
        assert_eq!(intersect_hostnames(Some("*.ex.com"), &names(&["*.ex.com"])), Some(names(&["*.ex.com"])));
        assert_eq!(intersect_hostnames(Some("*.a.ex.com"), &names(&["*.ex.com"])), Some(names(&["*.a.ex.com"])));
        assert_eq!(intersect_hostnames(Some("shop.ex.com"), &names(&["other.org"])), None);
    }
}
