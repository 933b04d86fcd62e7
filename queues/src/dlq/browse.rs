//! Reading a DLQ the way an operator browses it: the entries matching a filter, one page at a
//! time, with a cursor that resumes exactly after the last entry shown; and the count of entries
//! per distinct reason, which tells which bug to fix first. `worker dlq list` and the dashboard
//! both call these, so the page and the command never disagree.

use std::collections::HashMap;
use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use regex::Regex;
use serde::Serialize;

use super::DlqFilter;
use crate::broker::{DeadLetters, DlqEntry};
use crate::error::{QueueError, Result};

/// Entries fetched from the backend per round trip while browsing.
const FETCH: usize = 500;

/// One page of matching entries.
#[derive(Debug, Clone, Default, Serialize)]
pub struct MatchPage {
    /// Matching entries, oldest first.
    pub entries: Vec<DlqEntry>,
    /// Resumes after the last entry of this page; `None` when nothing follows.
    pub next_cursor: Option<String>,
    /// Entries looked at to fill this page.
    pub scanned: u64,
}

/// Our cursor is `<skip>.<backend cursor>`: the backend page to re-read (its own opaque cursor,
/// empty for the start) and how many of its entries were shown already. Backend cursors only
/// mark page boundaries, and a page may end in the middle of one of them.
fn parse_cursor(c: Option<&str>) -> Result<(usize, Option<String>)> {
    let Some(c) = c.filter(|c| !c.is_empty()) else {
        return Ok((0, None));
    };
    let bad = || {
        QueueError::Config(format!(
            "bad DLQ cursor `{c}` (use the link of the previous page)"
        ))
    };
    let (skip, base) = c.split_once('.').ok_or_else(bad)?;
    let skip = skip.parse().map_err(|_| bad())?;
    Ok((skip, (!base.is_empty()).then(|| base.to_owned())))
}

fn cursor(skip: usize, base: Option<&str>) -> String {
    format!("{skip}.{}", base.unwrap_or(""))
}

/// Up to `limit` entries of `queue`'s DLQ that match `filter`, after `cursor` (a `next_cursor`
/// of an earlier page; `None` for the first page), oldest first.
pub async fn list_matching(
    dl: &(impl DeadLetters + ?Sized),
    queue: &str,
    filter: &DlqFilter,
    limit: usize,
    cursor_in: Option<&str>,
) -> Result<MatchPage> {
    let limit = limit.max(1);
    let (mut skip, mut base) = parse_cursor(cursor_in)?;
    let mut out = MatchPage::default();
    loop {
        let page = dl.dlq_list(queue, FETCH, base.as_deref()).await?;
        let n = page.entries.len();
        for (i, e) in page.entries.into_iter().enumerate().skip(skip) {
            out.scanned += 1;
            if !filter.matches(&e) {
                continue;
            }
            out.entries.push(e);
            if out.entries.len() == limit {
                out.next_cursor = if i + 1 < n {
                    Some(cursor(i + 1, base.as_deref()))
                } else {
                    page.next_cursor.as_deref().map(|c| cursor(0, Some(c)))
                };
                return Ok(out);
            }
        }
        match page.next_cursor {
            Some(c) if n > 0 => {
                skip = skip.saturating_sub(n);
                base = Some(c);
            }
            _ => return Ok(out),
        }
    }
}

/// Entries that share one reason (numbers and ids in it collapsed, see [`signature`]).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ErrorGroup {
    /// The reason with its variable parts replaced: what the group is keyed on.
    pub signature: String,
    /// One full reason of the group, as it was written.
    pub example: String,
    /// The id of that example entry.
    pub example_id: String,
    /// Entries in the group.
    pub count: u64,
    /// Job kinds in the group and their counts, most first.
    pub kinds: Vec<(String, u64)>,
    /// The oldest and newest dead-letter time in the group, where known.
    pub first: Option<DateTime<Utc>>,
    pub last: Option<DateTime<Utc>>,
}

/// The DLQ grouped by reason, biggest group first.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ErrorGroups {
    pub groups: Vec<ErrorGroup>,
    /// Entries looked at.
    pub scanned: u64,
    /// Entries that passed the filter (the sum of the counts).
    pub matched: u64,
}

static UUID: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
        .expect("valid regex")
});
static HEX: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\b[0-9a-fA-F]{8,}\b").expect("valid regex"));
static DIGITS: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"\d+").expect("valid regex"));

/// What a reason is grouped by: uuids become `<id>`, hex tokens `<hex>`, digit runs `#`, so
/// `attempts exhausted (3/3): document 42 does not exist` and the same for document 43 are
/// one bug, and `timed out after 30s` stays apart from `permanent: ...`.
pub fn signature(reason: &str) -> String {
    let s = UUID.replace_all(reason, "<id>");
    // Only tokens with a digit in them: an all-letter word like `deadline` stays.
    let s = HEX.replace_all(&s, |c: &regex::Captures<'_>| {
        if c[0].bytes().any(|b| b.is_ascii_digit()) {
            "<hex>".to_owned()
        } else {
            c[0].to_owned()
        }
    });
    DIGITS.replace_all(&s, "#").into_owned()
}

#[derive(Default)]
struct Acc {
    example: String,
    example_id: String,
    count: u64,
    kinds: HashMap<String, u64>,
    first: Option<DateTime<Utc>>,
    last: Option<DateTime<Utc>>,
}

/// Every entry of `queue`'s DLQ that matches `filter`, counted per [`signature`] of its reason.
pub async fn group_by_error(
    dl: &(impl DeadLetters + ?Sized),
    queue: &str,
    filter: &DlqFilter,
) -> Result<ErrorGroups> {
    let mut acc: HashMap<String, Acc> = HashMap::new();
    let mut out = ErrorGroups::default();
    let mut base: Option<String> = None;
    loop {
        let page = dl.dlq_list(queue, FETCH, base.as_deref()).await?;
        let n = page.entries.len();
        for e in page.entries {
            out.scanned += 1;
            if !filter.matches(&e) {
                continue;
            }
            out.matched += 1;
            let a = acc.entry(signature(&e.reason)).or_default();
            if a.count == 0 {
                a.example = e.reason.clone();
                a.example_id = e.id.clone();
            }
            a.count += 1;
            let kind = e
                .envelope
                .as_ref()
                .map_or("(malformed)", |env| env.kind.as_str());
            *a.kinds.entry(kind.to_owned()).or_default() += 1;
            if let Some(t) = e.dead_lettered_at {
                a.first = Some(a.first.map_or(t, |f| f.min(t)));
                a.last = Some(a.last.map_or(t, |l| l.max(t)));
            }
        }
        match page.next_cursor {
            Some(c) if n > 0 => base = Some(c),
            _ => break,
        }
    }
    out.groups = acc
        .into_iter()
        .map(|(signature, a)| {
            let mut kinds: Vec<(String, u64)> = a.kinds.into_iter().collect();
            kinds.sort_by(|x, y| y.1.cmp(&x.1).then_with(|| x.0.cmp(&y.0)));
            ErrorGroup {
                signature,
                example: a.example,
                example_id: a.example_id,
                count: a.count,
                kinds,
                first: a.first,
                last: a.last,
            }
        })
        .collect();
    out.groups.sort_by(|x, y| {
        y.count
            .cmp(&x.count)
            .then_with(|| x.signature.cmp(&y.signature))
    });
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_collapse_numbers_and_ids() {
        assert_eq!(
            signature("attempts exhausted (3/3): document 42 does not exist"),
            signature("attempts exhausted (5/5): document 43 does not exist")
        );
        assert_eq!(
            signature("job 0190a3c4-7e2b-7c1d-9f00-123456789abc lost"),
            "job <id> lost"
        );
        assert_ne!(
            signature("timed out after 30s"),
            signature("permanent: bad payload")
        );
        assert_eq!(signature("deadbeef1 failed"), "<hex> failed");
        assert_eq!(signature("no handler"), "no handler");
    }
    // Paging and grouping against every backend: conformance case
    // `dlq_browse_filtered_pages_and_groups`.
}
