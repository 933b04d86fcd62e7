//! The DLQ filter as it travels in query strings and forms (every field text, since a form
//! sends empty fields), and a reader for form bodies with repeated keys (the selected ids).

use maud::{Markup, html};
use queues::dlq::{DlqFilter, FilterSpec};
use serde::Deserialize;

use crate::WebError;
use crate::layout::q;

/// The filter fields of the DLQ pages.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct FilterQuery {
    pub kind: Option<String>,
    pub error: Option<String>,
    pub since: Option<String>,
    pub until: Option<String>,
    pub min_attempts: Option<String>,
}

impl FilterQuery {
    /// The shared filter text (`worker dlq list` parses the same).
    pub fn spec(&self) -> Result<FilterSpec, WebError> {
        let min_attempts = match self.min_attempts.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(s) => Some(s.parse::<u32>().map_err(|_| {
                WebError::BadRequest(format!("min attempts `{s}` is not a whole number"))
            })?),
        };
        Ok(FilterSpec {
            kind: self.kind.clone(),
            error: self.error.clone(),
            since: self.since.clone(),
            until: self.until.clone(),
            min_attempts,
        })
    }

    /// Parsed; a bad regex or time is a 400 naming the value.
    pub fn parse(&self) -> Result<DlqFilter, WebError> {
        self.spec()?
            .parse()
            .map_err(|e| WebError::BadRequest(e.to_string()))
    }

    fn pairs(&self) -> Vec<(&'static str, &str)> {
        [
            ("kind", &self.kind),
            ("error", &self.error),
            ("since", &self.since),
            ("until", &self.until),
            ("min_attempts", &self.min_attempts),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.as_deref().filter(|v| !v.is_empty()).map(|v| (k, v)))
        .collect()
    }

    /// `kind=...&error=...` for links that keep the filter.
    pub fn query_string(&self) -> String {
        self.pairs()
            .into_iter()
            .map(|(k, v)| format!("{k}={}", q(v)))
            .collect::<Vec<_>>()
            .join("&")
    }

    /// The filter as hidden fields of a form.
    pub fn hidden(&self) -> Markup {
        html! {
            @for (k, v) in self.pairs() { input type="hidden" name=(k) value=(v); }
        }
    }

    /// Reads the filter fields of a form body.
    pub fn from_fields(f: &Fields) -> FilterQuery {
        let get = |k: &str| f.get(k).map(str::to_owned);
        FilterQuery {
            kind: get("kind"),
            error: get("error"),
            since: get("since"),
            until: get("until"),
            min_attempts: get("min_attempts"),
        }
    }
}

/// A form body as key/value pairs, in order, keys repeating.
#[derive(Debug, Default)]
pub struct Fields(Vec<(String, String)>);

impl Fields {
    pub fn parse(body: &[u8]) -> Fields {
        Fields(
            form_urlencoded::parse(body)
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        )
    }

    /// The first value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of `key`.
    pub fn all(&self, key: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .collect()
    }
}

/// The filter form of the DLQ pages (GET, so the URL can be shared).
pub fn filter_form(action: &str, f: &FilterQuery) -> Markup {
    let v = |o: &Option<String>| o.clone().unwrap_or_default();
    html! {
        form.filters method="get" action=(action) {
            label { "kind " input name="kind" value=(v(&f.kind)) size="14"; }
            label { "error regex " input name="error" value=(v(&f.error)) size="22"; }
            label { "since " input name="since" value=(v(&f.since)) placeholder="2h or RFC 3339" size="14"; }
            label { "until " input name="until" value=(v(&f.until)) placeholder="30m or RFC 3339" size="14"; }
            label { "min attempts " input name="min_attempts" value=(v(&f.min_attempts)) size="3"; }
            button type="submit" { "Filter" }
        }
    }
}
