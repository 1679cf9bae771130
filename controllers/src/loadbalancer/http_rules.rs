//! The HTTP part of a frontend: forwarding headers, then the routing entries of the attached
//! routes ([`super::routing`]) as HAProxy rules.
//!
//! Routing is decided in one pass of `http-request` rules, in precedence order: the first
//! entry whose conditions all hold stores its number in `txn.route`, and every later rule —
//! redirect, header changes, rewrite, the choice of backend, the response's headers — is
//! conditioned on that number. So an entry's filters apply exactly when it is the entry that
//! routes the request, whatever the order HAProxy evaluates rule kinds in. Weighted backends
//! split on one random number per request (`txn.pick`).
//!
//! Values are matched literally: `-m str`, `-m beg`, `-m end` after `--` (a value that looks
//! like a flag stays a value), quoted with single quotes (in which HAProxy interprets nothing),
//! never a regex; a value written into a header or a path is a log-format string, so its `%`
//! are doubled. [`check_entry`] refuses, once more, everything that could still break out.

use std::fmt::Write as _;

use minicloud_crds::http::{
    check_header_name, check_hostname, check_method, check_query_name, check_route_path, check_value,
};
use minicloud_crds::route::{FilterType, HeaderModifier, PathMatchType, PathModifierType, RequestRedirect};

use super::layout::ListenerLayout;
use super::naming::{ACME_MAP_FILE, MOUNT};
use super::routing::{normalised_prefix, Entry};

/// The scale weighted backends split on: `rand(PICK_SCALE)` per request.
const PICK_SCALE: u64 = 1_000_000;

/// Checks everything user-written in an entry. Returns what is wrong.
pub(crate) fn check_entry(entry: &Entry) -> Result<(), String> {
    if let Some(host) = &entry.host {
        check_hostname(host, true)?;
    }
    check_route_path(&entry.path.value)?;
    for header in &entry.headers {
        check_header_name(&header.name)?;
        check_value(&header.value)?;
    }
    for query in &entry.query {
        check_query_name(&query.name)?;
        check_value(&query.value)?;
    }
    if let Some(method) = &entry.method {
        check_method(method)?;
    }
    for filter in &entry.filters {
        if let Some(redirect) = &filter.request_redirect {
            if let Some(scheme) = &redirect.scheme {
                if scheme != "http" && scheme != "https" {
                    return Err(format!("redirect scheme {scheme:?}"));
                }
            }
            if let Some(host) = &redirect.hostname {
                check_hostname(host, false)?;
            }
        }
        for modifier in [&filter.request_header_modifier, &filter.response_header_modifier].into_iter().flatten() {
            for pair in modifier.set.iter().chain(&modifier.add) {
                check_header_name(&pair.name)?;
                check_value(&pair.value)?;
            }
            for name in &modifier.remove {
                check_header_name(name)?;
            }
        }
        if let Some(rewrite) = &filter.url_rewrite {
            if let Some(host) = &rewrite.hostname {
                check_hostname(host, false)?;
            }
            if let Some(path) = &rewrite.path {
                for value in [&path.replace_prefix_match, &path.replace_full_path].into_iter().flatten() {
                    check_route_path(value)?;
                }
            }
        }
    }
    Ok(())
}

/// Writes the HTTP rules of `listener` (scheme `http` or `https`) into its frontend.
pub(crate) fn render(out: &mut String, listener: &ListenerLayout, scheme: &str) {
    // The front door is the first proxy: what a client claims about earlier hops is dropped.
    let _ = writeln!(out, "    http-request del-header X-Forwarded-For");
    let _ = writeln!(out, "    http-request del-header Forwarded");
    let _ = writeln!(out, "    option forwardfor");
    // On a reload, an idle keep-alive connection of the old worker is closed only after
    // answering one more request (with `Connection: close`), so a client that does not retry a
    // request sent on a connection closed under it (wrk, many libraries) loses nothing.
    let _ = writeln!(out, "    option idle-close-on-response");
    let _ = writeln!(out, "    http-request set-header X-Forwarded-Proto {scheme}");
    let _ =
        writeln!(out, "    http-request set-header X-Forwarded-Host %[req.hdr(host)] if {{ req.hdr(host) -m found }}");
    let _ = writeln!(out, "    http-request set-header Forwarded for=%[src];proto={scheme} if {{ src 0.0.0.0/0 }}");
    let _ =
        writeln!(out, "    http-request set-header Forwarded for=\"[%[src]]\";proto={scheme} if !{{ src 0.0.0.0/0 }}");
    if scheme == "http" {
        // ACME HTTP-01: before any route (a redirect to HTTPS included), so issuance works
        // whatever the listener routes.
        let answer = format!("path,field(4,/),map({MOUNT}/{ACME_MAP_FILE})");
        let _ = writeln!(
            out,
            "    http-request return status 200 content-type text/plain lf-string \"%[{answer}]\" if {{ path -m beg /.well-known/acme-challenge/ }} {{ {answer} -m found }}"
        );
    }
    if let Some(hsts) = &listener.hsts {
        let age = hsts.max_age_seconds.unwrap_or(31_536_000);
        let subdomains = if hsts.include_subdomains { "; includeSubDomains" } else { "" };
        let _ =
            writeln!(out, "    http-after-response set-header Strict-Transport-Security \"max-age={age}{subdomains}\"");
    }
    if listener.entries.is_empty() {
        if listener.default_backend.is_none() {
            let _ =
                writeln!(out, "    http-request return status 404 content-type text/plain string \"no route matches\"");
        }
        return;
    }
    let _ = writeln!(out, "    http-request set-var(txn.host) req.hdr(host),field(1,:),lower");
    if listener.entries.iter().any(|entry| weighted(entry).len() > 1) {
        let _ = writeln!(out, "    http-request set-var(txn.pick) rand({PICK_SCALE})");
    }
    for (index, entry) in listener.entries.iter().enumerate() {
        let _ = writeln!(out, "    # {} rule {}", entry.route, entry.rule);
        let _ = writeln!(
            out,
            "    http-request set-var(txn.route) int({index}) if !{{ var(txn.route) -m found }}{}",
            conditions(entry)
        );
    }
    if listener.default_backend.is_none() {
        let _ = writeln!(
            out,
            "    http-request return status 404 content-type text/plain string \"no route matches\" if !{{ var(txn.route) -m found }}"
        );
    }
    for (index, entry) in listener.entries.iter().enumerate() {
        render_filters(out, listener, scheme, index, entry);
    }
    for (index, entry) in listener.entries.iter().enumerate() {
        let chosen = chosen(index);
        let backends = weighted(entry);
        let total: u64 = backends.iter().map(|(_, weight)| u64::from(*weight)).sum();
        let mut cumulative = 0;
        for (position, (backend, weight)) in backends.iter().enumerate() {
            if position + 1 == backends.len() {
                let _ = writeln!(out, "    use_backend {backend} if {chosen}");
            } else {
                cumulative += u64::from(*weight);
                let below = cumulative * PICK_SCALE / total;
                let _ = writeln!(out, "    use_backend {backend} if {chosen} {{ var(txn.pick) -m int lt {below} }}");
            }
        }
    }
}

/// The condition "entry `index` routes this request".
fn chosen(index: usize) -> String {
    format!("{{ var(txn.route) -m int eq {index} }}")
}

/// The backends of an entry that receive requests (weight above zero).
fn weighted(entry: &Entry) -> Vec<(String, u32)> {
    entry.backends.iter().filter(|(_, weight)| *weight > 0).cloned().collect()
}

/// The conditions of an entry, each ` { ... }`.
fn conditions(entry: &Entry) -> String {
    let mut text = String::new();
    if let Some(host) = entry.host.as_deref() {
        match host.strip_prefix('*') {
            Some(suffix) => text.push_str(&format!(" {{ var(txn.host) -m end -- {suffix} }}")),
            None => text.push_str(&format!(" {{ var(txn.host) -m str -- {host} }}")),
        }
    }
    match entry.path.type_ {
        PathMatchType::Exact => text.push_str(&format!(" {{ path -m str -- {} }}", entry.path.value)),
        PathMatchType::PathPrefix => {
            let prefix = normalised_prefix(&entry.path);
            if !prefix.is_empty() {
                // Whole segments: `/api` matches `/api` and `/api/x`, not `/apix`.
                text.push_str(&format!(" {{ path,concat(/) -m beg -- {prefix}/ }}"));
            }
        }
    }
    if let Some(method) = &entry.method {
        text.push_str(&format!(" {{ method {method} }}"));
    }
    for header in &entry.headers {
        text.push_str(&format!(" {{ req.hdr({}) -m str -- '{}' }}", header.name, header.value));
    }
    for query in &entry.query {
        text.push_str(&format!(" {{ url_param({}) -m str -- '{}' }}", query.name, query.value));
    }
    text
}

/// A value written into a log-format string: `%` doubled.
fn log_format(value: &str) -> String {
    value.replace('%', "%%")
}

/// The redirect, header changes and rewrite of entry `index`, or its 500 when it has nowhere
/// to send the request.
fn render_filters(out: &mut String, listener: &ListenerLayout, scheme: &str, index: usize, entry: &Entry) {
    let chosen = chosen(index);
    let mut redirects = false;
    for filter in &entry.filters {
        match filter.type_ {
            FilterType::RequestRedirect => {
                if let Some(redirect) = &filter.request_redirect {
                    redirects = true;
                    let code = redirect.status_code.unwrap_or(302);
                    let location = location(redirect, listener, scheme);
                    let _ = writeln!(out, "    http-request redirect location {location} code {code} if {chosen}");
                }
            }
            FilterType::RequestHeaderModifier => {
                if let Some(modifier) = &filter.request_header_modifier {
                    modify_headers(out, "http-request", modifier, &chosen);
                }
            }
            FilterType::ResponseHeaderModifier => {
                if let Some(modifier) = &filter.response_header_modifier {
                    modify_headers(out, "http-response", modifier, &chosen);
                }
            }
            FilterType::UrlRewrite => {
                let Some(rewrite) = &filter.url_rewrite else { continue };
                if let Some(host) = &rewrite.hostname {
                    let _ = writeln!(out, "    http-request set-header Host {host} if {chosen}");
                }
                let Some(path) = &rewrite.path else { continue };
                match (path.type_, &path.replace_full_path, &path.replace_prefix_match) {
                    (PathModifierType::ReplaceFullPath, Some(full), _) => {
                        let _ = writeln!(out, "    http-request set-path '{}' if {chosen}", log_format(full));
                    }
                    (PathModifierType::ReplacePrefixMatch, _, Some(replacement)) => {
                        rewrite_prefix(out, entry, replacement, &chosen);
                    }
                    _ => {}
                }
            }
        }
    }
    if !redirects && weighted(entry).is_empty() {
        let _ = writeln!(
            out,
            "    http-request return status 500 content-type text/plain string \"the route has no backend to send to\" if {chosen}"
        );
    }
}

/// Header changes in the request or the response.
fn modify_headers(out: &mut String, phase: &str, modifier: &HeaderModifier, chosen: &str) {
    for pair in &modifier.set {
        let _ = writeln!(out, "    {phase} set-header {} '{}' if {chosen}", pair.name, log_format(&pair.value));
    }
    for pair in &modifier.add {
        let _ = writeln!(out, "    {phase} add-header {} '{}' if {chosen}", pair.name, log_format(&pair.value));
    }
    for name in &modifier.remove {
        let _ = writeln!(out, "    {phase} del-header {name} if {chosen}");
    }
}

/// Replaces the matched prefix of the path (`/api/x` with prefix `/api` and replacement `/v2`
/// becomes `/v2/x`), without a regex: the rest of the path is cut off by its length.
fn rewrite_prefix(out: &mut String, entry: &Entry, replacement: &str, chosen: &str) {
    let prefix = normalised_prefix(&entry.path);
    let replacement = replacement.trim_end_matches('/');
    if replacement.is_empty() {
        if prefix.is_empty() {
            return;
        }
        // `/api` itself becomes `/`; `/api/x` becomes `/x`.
        let _ = writeln!(out, "    http-request set-path / if {chosen} {{ path -m str -- {prefix} }}");
        let _ = writeln!(
            out,
            "    http-request set-path %[path,bytes({})] if {chosen} {{ path,concat(/) -m beg -- {prefix}/ }}",
            prefix.len()
        );
    } else {
        let _ = writeln!(
            out,
            "    http-request set-path '{}%[path,bytes({})]' if {chosen}",
            log_format(replacement),
            prefix.len()
        );
    }
}

/// The `Location` of a redirect: the scheme, host and port asked for (the request's
/// otherwise), with the request's path and query.
fn location(redirect: &RequestRedirect, listener: &ListenerLayout, scheme: &str) -> String {
    let target_scheme = redirect.scheme.as_deref().unwrap_or(scheme);
    let well_known = |port: u16| (target_scheme == "http" && port == 80) || (target_scheme == "https" && port == 443);
    let authority = match (&redirect.hostname, redirect.port, &redirect.scheme) {
        (host, Some(port), _) => {
            let host = host.clone().unwrap_or_else(|| "%[var(txn.host)]".into());
            if well_known(port) {
                host
            } else {
                format!("{host}:{port}")
            }
        }
        (Some(host), None, Some(_)) => host.clone(),
        (None, None, Some(_)) => "%[var(txn.host)]".into(),
        (Some(host), None, None) => match listener.host_port {
            Some(port) if !well_known(port) => format!("{host}:{port}"),
            _ => host.clone(),
        },
        (None, None, None) => "%[req.hdr(host)]".into(),
    };
    format!("{target_scheme}://{authority}%[pathq]")
}
