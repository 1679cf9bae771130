//! The small checks every kind's rules are built from — DNS labels, label keys and values,
//! HTTP paths — and the [`Errors`] they are collected in. A leaf: [`crate::validation`] and the
//! kinds' own modules (routes, certificates) build on it.

use crate::{FieldError, FieldPath};

/// Collects field errors.
#[derive(Debug, Default)]
pub struct Errors(pub Vec<FieldError>);

impl Errors {
    pub fn add(&mut self, path: FieldPath, message: impl Into<String>) {
        self.0.push(FieldError::new(path, message));
    }
}

/// Checks a DNS-1123 label: at most 63 characters of `a-z`, `0-9` and `-`, starting and
/// ending with a letter or digit. Returns what is wrong.
pub fn check_dns_label(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err("must not be empty".into());
    }
    if value.len() > 63 {
        return Err(format!("{value:?} is {} characters long; at most 63 are allowed", value.len()));
    }
    let valid_chars = value.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    let valid_ends = !value.starts_with('-') && !value.ends_with('-');
    if !valid_chars || !valid_ends {
        return Err(format!(
            "{value:?} is not a DNS-1123 label: use lower-case letters, digits and '-', starting and ending with a letter or digit (e.g. \"my-app-1\")"
        ));
    }
    Ok(())
}

/// Longest health-check path accepted.
const MAX_HTTP_PATH_LEN: usize = 1024;

/// Checks an HTTP path that ends up in generated configuration (a LoadBalancer's health-check
/// path): it starts with `/` and holds only URL path characters (letters, digits and
/// `-._~/?=&%+,;:@!`), so no space, `#`, quote, `$`, backslash or control character can end a
/// configuration token early. Returns what is wrong.
pub fn check_http_path(value: &str) -> Result<(), String> {
    if !value.starts_with('/') {
        return Err(format!("{value:?} must start with '/'"));
    }
    if value.len() > MAX_HTTP_PATH_LEN {
        return Err(format!("the path is {} characters long; at most {MAX_HTTP_PATH_LEN} are allowed", value.len()));
    }
    if let Some(bad) = value.chars().find(|c| !(c.is_ascii_alphanumeric() || "-._~/?=&%+,;:@!".contains(*c))) {
        return Err(format!(
            "{value:?} contains {bad:?}; use only letters, digits and -._~/?=&%+,;:@! (percent-encode anything else)"
        ));
    }
    Ok(())
}

fn is_label_name(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 63
        && text.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && text.as_bytes()[0].is_ascii_alphanumeric()
        && text.as_bytes()[text.len() - 1].is_ascii_alphanumeric()
}

fn is_dns_subdomain(text: &str) -> bool {
    !text.is_empty() && text.len() <= 253 && text.split('.').all(|part| check_dns_label(part).is_ok())
}

/// Checks a label key: an optional DNS subdomain prefix and '/', then a name of at most 63
/// alphanumerics, '-', '_' and '.'.
pub fn check_label_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if prefix.is_some_and(|prefix| !is_dns_subdomain(prefix)) || !is_label_name(name) {
        return Err(format!(
            "label key {key:?} is invalid: use an optional DNS prefix and '/', then at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit"
        ));
    }
    Ok(())
}

/// Checks a label value: empty, or at most 63 alphanumerics, '-', '_' and '.', starting and
/// ending with an alphanumeric.
pub fn check_label_value(value: &str) -> Result<(), String> {
    if value.is_empty() || is_label_name(value) {
        Ok(())
    } else {
        Err(format!(
            "label value {value:?} is invalid: at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit"
        ))
    }
}
