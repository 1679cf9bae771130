//! The console's markup helpers: the page frame, the shared `<head>`, tables and links, as
//! `maud` templates. maud escapes every value it is given; raw HTML has to be asked for by
//! name (`PreEscaped`), and the console never asks for it: every page is a [`Markup`] built
//! from templates, so nothing read from the store or a request can become markup.

use maud::{html, Markup, DOCTYPE};

/// `<a href="HREF">TEXT</a>`.
pub fn link(href: &str, text: &str) -> Markup {
    html! { a href=(href) { (text) } }
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
    /// What the script watches: `*`, a kind, or `Kind/namespace/name`.
    pub watch: &'a str,
    /// The revision `main` was read at.
    pub revision: i64,
    /// For a page that shows events: the events head read before them (see
    /// [`crate::store::Store::events_head`]); the script reloads `main` when it moves.
    pub events_head: Option<String>,
    /// Follows `main` and is never swapped (an Instance's followed logs).
    pub after: Markup,
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
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            (head(frame.title))
            body data-watch=(frame.watch) data-revision=(frame.revision) data-events-head=[frame.events_head.as_deref()] {
                header {
                    strong { "minicloud" } " "
                    a href="/ui" { "Summary" }
                    @for kind in minicloud_crds::Kind::ALL {
                        " " a href={ "/ui/" (kind.plural()) } { (kind.as_str()) }
                    }
                    " " a href="/ui/events" { "Activity" }
                    span id="live" class="live" { "connecting…" }
                }
                main id="main" { (main) }
                (frame.after)
                script type="module" src="/ui/assets/app.js" {}
            }
        }
    };
    markup.into_string() + "\n"
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
        let frame = Frame { title: "<x>", watch: "*", revision: 3, events_head: Some("7:\"".into()), after: html! {} };
        let page = page(&frame, &html! { p { "main" } });
        assert!(page.contains("<title>&lt;x&gt; · minicloud</title>") && page.contains("data-revision=\"3\""));
        assert!(page.contains("data-events-head=\"7:&quot;\""), "{page}");
        assert!(page.contains("<main id=\"main\"><p>main</p></main>"), "{page}");
        let without = Frame { events_head: None, ..frame };
        assert!(!super::page(&without, &html! {}).contains("data-events-head"), "an absent head is no attribute");
    }
}
