//! The console's markup helpers: the page frame, the shared `<head>`, tables and links, as
//! `maud` templates. maud escapes every value it is given; raw HTML has to be asked for by
//! name (`PreEscaped`), and the console never asks for it: every page is a [`Markup`] built
//! from templates, so nothing read from the store or a request can become markup.

use maud::{html, Markup, DOCTYPE};

/// `<a href="HREF">TEXT</a>`.
pub fn link(href: &str, text: &str) -> Markup {
    html! { a href=(href) { (text) } }
}

/// A web address as a link to itself; any other text as text.
pub fn text_or_link(text: &str) -> Markup {
    if text.starts_with("http://") || text.starts_with("https://") {
        return link(text, text);
    }
    html! { (text) }
}

/// A table with a header row; an empty one says "none".
pub fn table(id: &str, headers: &[&str], rows: &[Vec<Markup>]) -> Markup {
    html! {
        table id=(id) {
            thead { tr { @for header in headers { th { (header) } } } }
            tbody {
                @for row in rows { tr { @for cell in row { td { (cell) } } } }
                @if rows.is_empty() { tr { td colspan=(headers.len().max(1)) class="none" { "none" } } }
            }
        }
    }
}

/// What surrounds a page's `main`.
pub struct Frame<'a> {
    pub title: &'a str,
    /// What the script watches: `*`, a kind, or `Kind/namespace/name`; empty for a page that
    /// follows nothing (an error, a form).
    pub watch: &'a str,
    /// The revision `main` was read at.
    pub revision: i64,
    /// For a page that shows events: the events head read before them (see
    /// [`crate::store::Store::events_head`]); the script reloads `main` when it moves.
    pub events_head: Option<String>,
    /// Follows `main` and is never swapped (an Instance's followed logs).
    pub after: Markup,
    pub chrome: &'a Chrome,
}

/// The header's parts that depend on who is looking: the namespace picker and sign-out.
#[derive(Debug, Default)]
pub struct Chrome {
    /// The signed-in token's name; `None` when the server has no authentication.
    pub signed_in: Option<String>,
    /// The namespaces to pick from; empty when the token is bound to one.
    pub namespaces: Vec<String>,
    /// The namespace the pages show (`None`: every one).
    pub namespace: Option<String>,
}

impl Chrome {
    /// The header for `principal` alone (no namespace picker): the pages that follow nothing.
    pub fn signed_in_as(principal: &crate::auth::Principal) -> Chrome {
        Chrome { signed_in: (!principal.is_anonymous()).then(|| principal.name.clone()), ..Chrome::default() }
    }

    /// `path` with the picked namespace as its query (the links of the header keep it).
    pub fn href(&self, path: &str) -> String {
        match &self.namespace {
            Some(namespace) if !self.namespaces.is_empty() => format!("{path}?namespace={namespace}"),
            _ => path.to_owned(),
        }
    }
}

/// The `<head>` of every console page.
pub fn head(title: &str) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            title { (title) " · minicloud" }
            meta name="viewport" content="width=device-width, initial-scale=1";
            link rel="icon" href="data:,";
            link rel="stylesheet" href="/ui/assets/style.css";
        }
    }
}

/// The whole page: navigation, `main` (what `?fragment=1` answers alone) and the live-update
/// script, which watches from the frame's revision and reloads `main` when something changes.
pub fn page(frame: &Frame<'_>, main: &Markup) -> String {
    let chrome = frame.chrome;
    let watch = Some(frame.watch).filter(|watch| !watch.is_empty());
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            (head(frame.title))
            body data-watch=[watch] data-revision=(frame.revision) data-events-head=[frame.events_head.as_deref()] {
                header {
                    nav aria-label="Sections" {
                        strong { "minicloud" } " "
                        a href=(chrome.href("/ui")) { "Summary" }
                        @for kind in minicloud_crds::Kind::ALL {
                            " " a href=(chrome.href(&format!("/ui/{}", kind.plural()))) { (kind.as_str()) }
                        }
                        " " a href=(chrome.href("/ui/templates")) { "Templates" }
                        " " a href=(chrome.href("/ui/events")) { "Activity" }
                    }
                    @if !chrome.namespaces.is_empty() {
                        form id="namespace-picker" method="get" {
                            label for="namespace" { "Namespace" } " "
                            select id="namespace" name="namespace" {
                                option value="" selected[chrome.namespace.is_none()] { "every namespace" }
                                @for namespace in &chrome.namespaces {
                                    option selected[chrome.namespace.as_deref() == Some(namespace.as_str())] { (namespace) }
                                }
                            }
                            " " button type="submit" { "Show" }
                        }
                    }
                    @if watch.is_some() { span id="live" class="live" role="status" { "connecting…" } }
                    @if let Some(name) = &chrome.signed_in {
                        form id="sign-out" method="post" action="/ui/logout" {
                            @if !name.is_empty() { span class="who" { "signed in as " (name) } " " }
                            button type="submit" { "Sign out" }
                        }
                    }
                }
                main id="main" { (main) }
                (frame.after)
                script type="module" src="/ui/assets/app.js" {}
            }
        }
    };
    markup.into_string() + "\n"
}

/// A page in the console's frame saying why what was asked for cannot be shown (404, 403, …).
pub fn problem(status: u16, message: &str, chrome: &Chrome) -> String {
    let title = match status {
        403 => "Forbidden",
        404 => "Not found",
        401 => "Not signed in",
        _ if status >= 500 => "Server error",
        _ => "Cannot do that",
    };
    let frame = Frame { title, watch: "", revision: 0, events_head: None, after: html! {}, chrome };
    let main = html! {
        h1 { (title) }
        p id="problem" class="problem" role="alert" { (message) }
        p { a href=(chrome.href("/ui")) { "Back to the summary" } }
    };
    page(&frame, &main)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn everything_given_is_escaped() {
        assert_eq!(link("/ui?a=\"b\"", "<b>").into_string(), "<a href=\"/ui?a=&quot;b&quot;\">&lt;b&gt;</a>");
        let cells = vec![vec![html! { "<i>" }, link("/x", "x")]];
        let table = table("t", &["<th>"], &cells).into_string();
        assert!(table.contains("<th>&lt;th&gt;</th>") && table.contains("<td>&lt;i&gt;</td>"), "{table}");
        assert!(super::table("t", &["A", "B"], &[]).into_string().contains("colspan=\"2\" class=\"none\""));
        let chrome = Chrome::default();
        let frame = Frame {
            title: "<x>",
            watch: "*",
            revision: 3,
            events_head: Some("7:\"".into()),
            after: html! {},
            chrome: &chrome,
        };
        let page = page(&frame, &html! { p { "main" } });
        assert!(page.contains("<title>&lt;x&gt; · minicloud</title>") && page.contains("data-revision=\"3\""));
        assert!(page.contains("data-events-head=\"7:&quot;\""), "{page}");
        assert!(page.contains("<main id=\"main\"><p>main</p></main>"), "{page}");
        let without = Frame { events_head: None, ..frame };
        assert!(!super::page(&without, &html! {}).contains("data-events-head"), "an absent head is no attribute");
    }

    #[test]
    fn the_header_offers_namespaces_and_sign_out_and_problems_stay_text() {
        let chrome = Chrome {
            signed_in: Some("<ops>".into()),
            namespaces: vec!["default".into(), "shop".into()],
            namespace: Some("shop".into()),
        };
        let page = problem(404, "no <b>web</b>", &chrome);
        assert!(page.contains("<title>Not found · minicloud</title>"), "{page}");
        assert!(page.contains("no &lt;b&gt;web&lt;/b&gt;") && !page.contains("<b>"), "{page}");
        assert!(page.contains("href=\"/ui/instances?namespace=shop\""), "links keep the namespace: {page}");
        assert!(page.contains("<option selected>shop</option>"), "{page}");
        assert!(page.contains("signed in as &lt;ops&gt;") && page.contains("action=\"/ui/logout\""), "{page}");
        assert!(!page.contains("data-watch") && !page.contains("id=\"live\""), "a problem follows nothing: {page}");
        let anonymous = problem(403, "no", &Chrome::default());
        assert!(!anonymous.contains("sign-out") && !anonymous.contains("namespace-picker"), "{anonymous}");
    }
}
