//! Request metrics of the API: how many requests each route answered, by method and status
//! code, and how long it took to answer them (for watches, log follows and the console's live
//! stream: until the stream began), plus the watches open now.
//!
//! Labels stay bounded whatever clients send: the route is the matched route template
//! (`/apis/minicloud.dev/v1/namespaces/{namespace}/{plural}`), never the path itself, and
//! `unmatched` for a path no route serves; a method outside the standard ones is `other`.

use std::time::Instant;

use axum::body::Body;
use axum::extract::{MatchedPath, State};
use axum::http::{Method, Request};
use axum::middleware::Next;
use axum::response::Response;
use minicloud_controllers::metrics::Metrics;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    method: String,
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AnswerLabels {
    method: String,
    route: String,
    code: String,
}

/// The API's request metrics; cheap to clone (the series are shared).
#[derive(Clone, Debug)]
pub struct RequestMetrics {
    requests: Family<AnswerLabels, Counter>,
    duration: Family<RouteLabels, Histogram>,
    watches_open: Gauge,
}

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

impl Default for RequestMetrics {
    fn default() -> RequestMetrics {
        RequestMetrics {
            requests: Family::default(),
            duration: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            watches_open: Gauge::default(),
        }
    }
}

impl RequestMetrics {
    /// Adds these metrics to what `/metrics` serves.
    pub fn register(&self, metrics: &mut Metrics) {
        metrics.register(
            "minicloud_api_requests",
            "API requests answered, by method, route and status code",
            self.requests.clone(),
        );
        metrics.register(
            "minicloud_api_request_duration_seconds",
            "Time to answer an API request (for streams: until the stream began), by method and route",
            self.duration.clone(),
        );
        metrics.register("minicloud_api_watches_open", "Watch streams open now", self.watches_open.clone());
    }

    /// Sets the number of open watches (read when `/metrics` is served).
    pub fn set_watches_open(&self, open: usize) {
        self.watches_open.set(i64::try_from(open).unwrap_or(i64::MAX));
    }

    fn record(&self, method: &str, route: &str, code: u16, seconds: f64) {
        let route_labels = RouteLabels { method: method.to_owned(), route: route.to_owned() };
        self.duration.get_or_create(&route_labels).observe(seconds);
        let answer = AnswerLabels { method: method.to_owned(), route: route.to_owned(), code: code.to_string() };
        self.requests.get_or_create(&answer).inc();
    }
}

/// The method as a label: one of the standard methods, else `other`.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// Outermost layer: times every request and records it under the route [`mark_route`] left
/// on the response.
pub async fn record(State(metrics): State<RequestMetrics>, request: Request<Body>, next: Next) -> Response {
    let started = Instant::now();
    let method = method_label(request.method());
    let response = next.run(request).await;
    let route = response.extensions().get::<MatchedPath>().map_or("unmatched", MatchedPath::as_str);
    metrics.record(method, route, response.status().as_u16(), started.elapsed().as_secs_f64());
    response
}

/// Route layer: hands the matched route template to [`record`] on the response (the outer
/// layer runs before routing, so it cannot see it on the request).
pub async fn mark_route(request: Request<Body>, next: Next) -> Response {
    let route = request.extensions().get::<MatchedPath>().cloned();
    let mut response = next.run(request).await;
    if let Some(route) = route {
        response.extensions_mut().insert(route);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unusual_methods_share_one_label() {
        assert_eq!(method_label(&Method::GET), "GET");
        let invented = Method::from_bytes(b"BREW").expect("a valid method token");
        assert_eq!(method_label(&invented), "other");
    }
}
