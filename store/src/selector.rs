//! Label selectors as kubectl writes them: `app=web,tier!=db,env in (prod,staging),
//! env notin (dev),has-key,!lacks-key`. Parsing reports what is wrong; matching is pure.

use std::collections::BTreeMap;
use std::fmt;

/// One requirement on one label.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

/// All requirements must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selector(pub Vec<Requirement>);

/// A selector that cannot be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid label selector {selector:?}: {reason}; write e.g. \"app=web,tier!=db\"")]
pub struct SelectorError {
    selector: String,
    reason: String,
}

impl Selector {
    /// Parses a selector; the empty string selects everything.
    pub fn parse(text: &str) -> Result<Selector, SelectorError> {
        let fail = |reason: String| SelectorError { selector: text.to_owned(), reason };
        let mut requirements = Vec::new();
        for term in split_terms(text) {
            let term = term.trim();
            if term.is_empty() {
                continue;
            }
            let requirement = if let Some(key) = term.strip_prefix('!') {
                Requirement::NotExists(check_key(key.trim()).map_err(fail)?)
            } else if let Some((key, value)) = term.split_once("!=") {
                Requirement::NotEquals(check_key(key.trim()).map_err(fail)?, check_value(value.trim()).map_err(fail)?)
            } else if let Some((key, value)) = term.split_once("==").or_else(|| term.split_once('=')) {
                Requirement::Equals(check_key(key.trim()).map_err(fail)?, check_value(value.trim()).map_err(fail)?)
            } else if let Some((key, values)) = split_set(term, " notin ") {
                Requirement::NotIn(check_key(key).map_err(fail)?, parse_set(values).map_err(fail)?)
            } else if let Some((key, values)) = split_set(term, " in ") {
                Requirement::In(check_key(key).map_err(fail)?, parse_set(values).map_err(fail)?)
            } else {
                Requirement::Exists(check_key(term).map_err(fail)?)
            };
            requirements.push(requirement);
        }
        Ok(Selector(requirements))
    }

    /// Whether labels satisfy every requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|requirement| match requirement {
            Requirement::Equals(key, value) => labels.get(key) == Some(value),
            Requirement::NotEquals(key, value) => labels.get(key) != Some(value),
            Requirement::In(key, values) => labels.get(key).is_some_and(|v| values.contains(v)),
            Requirement::NotIn(key, values) => labels.get(key).is_none_or(|v| !values.contains(v)),
            Requirement::Exists(key) => labels.contains_key(key),
            Requirement::NotExists(key) => !labels.contains_key(key),
        })
    }

    /// True when the selector selects everything.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let terms: Vec<String> = self
            .0
            .iter()
            .map(|requirement| match requirement {
                Requirement::Equals(k, v) => format!("{k}={v}"),
                Requirement::NotEquals(k, v) => format!("{k}!={v}"),
                Requirement::In(k, vs) => format!("{k} in ({})", vs.join(",")),
                Requirement::NotIn(k, vs) => format!("{k} notin ({})", vs.join(",")),
                Requirement::Exists(k) => k.clone(),
                Requirement::NotExists(k) => format!("!{k}"),
            })
            .collect();
        f.write_str(&terms.join(","))
    }
}

/// Splits on commas outside parentheses.
fn split_terms(text: &str) -> Vec<&str> {
    let mut terms = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (index, character) in text.char_indices() {
        match character {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                terms.push(&text[start..index]);
                start = index + 1;
            }
            _ => {}
        }
    }
    terms.push(&text[start..]);
    terms
}

fn split_set<'t>(term: &'t str, operator: &str) -> Option<(&'t str, &'t str)> {
    let (key, values) = term.split_once(operator)?;
    Some((key.trim(), values.trim()))
}

fn parse_set(text: &str) -> Result<Vec<String>, String> {
    let inner = text
        .strip_prefix('(')
        .and_then(|rest| rest.strip_suffix(')'))
        .ok_or_else(|| format!("set {text:?} must be written in parentheses, e.g. (a,b)"))?;
    inner.split(',').map(|value| check_value(value.trim())).collect()
}

fn check_key(key: &str) -> Result<String, String> {
    minicloud_crds::validation::check_label_key(key)?;
    Ok(key.to_owned())
}

fn check_value(value: &str) -> Result<String, String> {
    minicloud_crds::validation::check_label_value(value)?;
    Ok(value.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn parses_and_matches_every_operator() {
        let selector = Selector::parse("app=web,tier!=db,env in (prod, staging),track notin (canary),owner,!legacy")
            .expect("valid");
        assert_eq!(selector.0.len(), 6);
        assert!(selector.matches(&labels(&[("app", "web"), ("env", "prod"), ("owner", "x")])));
        assert!(!selector.matches(&labels(&[("app", "web"), ("env", "dev"), ("owner", "x")])));
        assert!(!selector.matches(&labels(&[("app", "web"), ("env", "prod"), ("owner", "x"), ("legacy", "")])));
        assert!(!selector.matches(&labels(&[("app", "web"), ("env", "prod"), ("owner", "x"), ("tier", "db")])));
        assert!(!selector.matches(&labels(&[("app", "web"), ("env", "prod"), ("owner", "x"), ("track", "canary")])));
    }

    #[test]
    fn empty_selects_everything_and_errors_are_clear() {
        assert!(Selector::parse("").expect("empty").matches(&BTreeMap::new()));
        let error = Selector::parse("app=we b").expect_err("space in value");
        assert!(error.to_string().contains("invalid label selector"));
        assert!(Selector::parse("env in prod").is_err());
    }
}
