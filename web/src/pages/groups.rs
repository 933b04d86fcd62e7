//! The DLQ grouped by error: how many entries share each reason (numbers and ids collapsed),
//! which kinds, since when — the view that says which bug to fix first. Each group links to the
//! browser filtered to it.

use axum::Extension;
use axum::extract::{Path, Query, State};
use axum::response::Html;
use maud::html;

use crate::WebError;
use crate::auth::Viewer;
use crate::layout::{Nav, page, q, when};
use crate::pages::form::{FilterQuery, filter_form};
use crate::state::AppState;

/// A regex that matches exactly the reasons of a group: the signature with its placeholders
/// opened up again.
pub fn group_regex(signature: &str) -> String {
    let mut out = String::from("^");
    let mut rest = signature;
    while !rest.is_empty() {
        let next = ["#", "<id>", "<hex>"]
            .iter()
            .filter_map(|p| rest.find(p).map(|i| (i, *p)))
            .min();
        match next {
            Some((i, p)) => {
                out.push_str(&regex_escape(&rest[..i]));
                out.push_str(match p {
                    "#" => r"\d+",
                    "<id>" => r"[0-9a-fA-F-]{36}",
                    _ => r"[0-9a-fA-F]+",
                });
                rest = &rest[i + p.len()..];
            }
            None => {
                out.push_str(&regex_escape(rest));
                rest = "";
            }
        }
    }
    out.push('$');
    out
}

fn regex_escape(s: &str) -> String {
    let mut o = String::new();
    for c in s.chars() {
        if "\\.+*?()|[]{}^$#&-~".contains(c) {
            o.push('\\');
        }
        o.push(c);
    }
    o
}

/// The DLQ browser filtered to one group (and the kind filter, when one was set).
fn browse_link(base: &str, signature: &str, kind: Option<&str>) -> String {
    let mut link = format!("{base}?error={}", q(&group_regex(signature)));
    if let Some(k) = kind.filter(|k| !k.is_empty()) {
        link += &format!("&kind={}", q(k));
    }
    link
}

/// `GET /queues/{queue}/dlq/groups`.
pub async fn show(
    State(st): State<AppState>,
    Extension(viewer): Extension<Viewer>,
    Path(queue): Path<String>,
    Query(f): Query<FilterQuery>,
) -> Result<Html<String>, WebError> {
    st.queue(&queue)?;
    let filter = f.parse()?;
    let g = queues::dlq::group_by_error(&*st.broker, &queue, &filter).await?;
    let base = format!("/queues/{}/dlq", q(&queue));
    let body = html! {
        p { a href=(base) { "← DLQ of " (queue) } }
        (filter_form(&format!("{base}/groups"), &f))
        p.muted { (g.matched) " entries in " (g.groups.len()) " groups (" (g.scanned) " looked at; filter " code { (filter.describe()) } ")" }
        table.groups {
            thead { tr { th.num { "count" } th { "reason" } th { "kinds" } th { "first" } th { "last" } th {} } }
            tbody {
                @for grp in &g.groups {
                    tr {
                        td.num.count { (grp.count) }
                        td.reason { (grp.signature) @if grp.example != grp.signature { br; span.muted { "e.g. " (grp.example) } } }
                        td { @for (k, n) in &grp.kinds { (k) " " span.muted { "(" (n) ")" } " " } }
                        td { (when(grp.first)) }
                        td { (when(grp.last)) }
                        td { a href=(browse_link(&base, &grp.signature, f.kind.as_deref())) { "browse" } }
                    }
                }
                @if g.groups.is_empty() { tr { td.muted colspan="6" { "no matching entries" } } }
            }
        }
    };
    Ok(page(
        &viewer,
        &format!("DLQ of {queue} by error"),
        Nav::None,
        body,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use queues::dlq::signature;

    #[test]
    fn the_group_regex_matches_its_members_only() {
        let a = "attempts exhausted (3/3): document 42 does not exist (x.y)";
        let re = regex::Regex::new(&group_regex(&signature(a))).unwrap();
        assert!(re.is_match(a));
        assert!(re.is_match("attempts exhausted (5/5): document 7 does not exist (x.y)"));
        assert!(!re.is_match("permanent: document 42 does not exist (x.y)"));
    }
}
