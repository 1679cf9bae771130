//! Small HTML helpers for the console: escaping (every value that comes from the store goes
//! through [`escape`]), links, tables and the page frame. The frame and the sign-in page are
//! `maud` templates, which escape every value unless it is wrapped in `PreEscaped` by name;
//! the pages' own markup (`pages.rs`, `panels.rs`) still passes through [`escape`] by hand and
//! moves to templates next.

use maud::{html, Markup, PreEscaped, DOCTYPE};

/// Text made safe for HTML element content and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for character in text.chars() {
        match character {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            other => out.push(other),
        }
    }
    out
}

/// `<a href="HREF">TEXT</a>`, both escaped.
pub fn link(href: &str, text: &str) -> String {
    format!("<a href=\"{}\">{}</a>", escape(href), escape(text))
}

/// A table; `cells` are HTML already (escape text before passing it).
pub fn table(id: &str, headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut out = format!("<table id=\"{}\"><thead><tr>", escape(id));
    for header in headers {
        out.push_str(&format!("<th>{}</th>", escape(header)));
    }
    out.push_str("</tr></thead><tbody>");
    for row in rows {
        out.push_str("<tr>");
        for cell in row {
            out.push_str(&format!("<td>{cell}</td>"));
        }
        out.push_str("</tr>");
    }
    if rows.is_empty() {
        out.push_str(&format!("<tr><td colspan=\"{}\" class=\"none\">none</td></tr>", headers.len().max(1)));
    }
    out.push_str("</tbody></table>");
    out
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
    pub after: String,
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
/// `main` and `frame.after` are HTML already (made by the pages).
pub fn page(frame: &Frame<'_>, main: &str) -> String {
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
                main id="main" { (PreEscaped(main)) }
                (PreEscaped(&frame.after))
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
    fn everything_from_the_store_is_escaped() {
        assert_eq!(
            escape(r#"<script>alert("x&y")</script>'"#),
            "&lt;script&gt;alert(&quot;x&amp;y&quot;)&lt;/script&gt;&#39;"
        );
        assert_eq!(link("/ui?a=\"b\"", "<b>"), "<a href=\"/ui?a=&quot;b&quot;\">&lt;b&gt;</a>");
        let frame =
            Frame { title: "<x>", watch: "*", revision: 3, events_head: Some("7:\"".into()), after: String::new() };
        let page = page(&frame, "<p>main</p>");
        assert!(page.contains("<title>&lt;x&gt; · minicloud</title>") && page.contains("data-revision=\"3\""));
        assert!(page.contains("data-events-head=\"7:&quot;\""), "{page}");
        assert!(page.contains("<main id=\"main\"><p>main</p></main>"), "main is HTML already: {page}");
        let without = Frame { events_head: None, ..frame };
        assert!(!super::page(&without, "").contains("data-events-head"), "an absent head is no attribute");
    }
}
