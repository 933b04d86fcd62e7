//! The v1 job envelope: the JSON document every backend carries as its message body.
//!
//! The format is documented in `docs/envelope.md` (with a JSON Schema) so that an API written in
//! any language can enqueue a job by writing this JSON to the broker. Fields this version does not
//! know are kept in [`Envelope::extra`] and written back unchanged, so a newer producer's fields
//! survive a trip through an older worker, the DLQ and a replay.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::queue_name::QueueName;

/// The only wire version this crate reads and writes.
pub const ENVELOPE_VERSION: u32 = 1;

/// Attempts a job gets when the producer does not say.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 8;

/// How long a `dedup_key` stays taken when the envelope carries no `unique_for`. The broker-side
/// code that native producers rely on (the PostgreSQL trigger, the Redis script) uses the same
/// figure.
pub const DEFAULT_UNIQUE_FOR: std::time::Duration = std::time::Duration::from_secs(3600);

/// One job, as it travels on every broker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// Wire version; always [`ENVELOPE_VERSION`].
    pub v: u32,
    /// Job id: a UUIDv7 (time-ordered) when jobfleet creates it; any non-empty string is accepted.
    pub id: String,
    /// Job kind, e.g. `embed_document`; picks the handler.
    pub kind: String,
    /// Source queue; a DLQ replay sends the job back here.
    pub queue: String,
    /// Handler input; validated by the handler, not here.
    #[serde(default)]
    pub payload: Value,
    /// Failed attempts so far (0 for a new job). Reset by a DLQ replay.
    #[serde(default)]
    pub attempt: u32,
    /// Attempts before the job is dead-lettered.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// When the producer enqueued it.
    pub enqueued_at: DateTime<Utc>,
    /// Not to run before this instant (`null`: at once).
    #[serde(default)]
    pub run_at: Option<DateTime<Utc>>,
    /// Producer-chosen key for de-duplication (the scheduler uses `schedule@tick`): a job with
    /// a key is accepted once per key and queue within `unique_for` ([`Envelope::dedup`]).
    #[serde(default)]
    pub dedup_key: Option<String>,
    /// Seconds (fractions allowed) the `dedup_key` stays taken from acceptance; `None`:
    /// [`DEFAULT_UNIQUE_FOR`]. Written by the producer, since native producers have no config.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unique_for: Option<f64>,
    /// When a DLQ replay last sent it back; a replayed job is never a duplicate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replayed_at: Option<DateTime<Utc>>,
    /// One entry per failed attempt, oldest first: the job's whole history.
    #[serde(default)]
    pub errors: Vec<ErrorRecord>,
    /// Fields a newer producer added; kept verbatim.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// One failed attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorRecord {
    /// The attempt that failed (1-based).
    pub attempt: u32,
    /// When it failed.
    pub at: DateTime<Utc>,
    /// What went wrong, as the handler or the worker said it.
    pub error: String,
    /// Which worker ran it (`host/pid`).
    #[serde(default)]
    pub worker: String,
    /// Fields a newer producer added; kept verbatim.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

fn default_max_attempts() -> u32 {
    DEFAULT_MAX_ATTEMPTS
}

/// Why a body is not a valid v1 envelope. The text is what lands in the DLQ as the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("body is not valid JSON: {0}")]
    NotJson(String),
    #[error("body is JSON but not an object")]
    NotAnObject,
    #[error("unsupported envelope {} (this worker reads v1)", version_text(.0.as_ref()))]
    Version(Option<Value>),
    #[error("envelope field `{field}` is invalid: {reason}")]
    Field { field: String, reason: String },
}

/// `version 2`, `version '2'`, `version null`, or that `v` is missing: the value as a producer
/// wrote it, not as Rust debug-prints it.
fn version_text(v: Option<&Value>) -> String {
    match v {
        None => "version: field `v` is missing".into(),
        Some(Value::String(s)) => format!("version '{s}'"),
        Some(other) => format!("version {other}"),
    }
}

impl Envelope {
    /// A new job for `queue`, with a fresh time-ordered id and defaults for the rest.
    pub fn new(kind: impl Into<String>, queue: impl Into<String>, payload: Value) -> Self {
        Envelope {
            v: ENVELOPE_VERSION,
            id: uuid::Uuid::now_v7().to_string(),
            kind: kind.into(),
            queue: queue.into(),
            payload,
            attempt: 0,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            enqueued_at: Utc::now(),
            run_at: None,
            dedup_key: None,
            unique_for: None,
            replayed_at: None,
            errors: Vec::new(),
            extra: Map::new(),
        }
    }

    /// Builder: do not run before `at`.
    pub fn with_run_at(mut self, at: DateTime<Utc>) -> Self {
        self.run_at = Some(at);
        self
    }

    /// Builder: attempts before dead-lettering.
    pub fn with_max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n;
        self
    }

    /// Builder: de-duplication key.
    pub fn with_dedup_key(mut self, key: impl Into<String>) -> Self {
        self.dedup_key = Some(key.into());
        self
    }

    /// Builder: how long the de-duplication key stays taken (see [`Envelope::dedup`]).
    pub fn with_unique_for(mut self, window: std::time::Duration) -> Self {
        self.unique_for = Some(window.as_secs_f64());
        self
    }

    /// The key and window this envelope must be checked against before it is written, or
    /// `None` when it is not subject to de-duplication: no `dedup_key`, or a job that was
    /// already accepted once (it carries a failure history: a retry or a DLQ replay), which is
    /// never dropped as a duplicate of itself or of a newer job.
    pub fn dedup(&self) -> Option<(&str, std::time::Duration)> {
        let key = self.dedup_key.as_deref()?;
        if !self.errors.is_empty() || self.replayed_at.is_some() {
            return None;
        }
        let window = self
            .unique_for
            .and_then(|s| std::time::Duration::try_from_secs_f64(s).ok())
            .filter(|d| !d.is_zero())
            .unwrap_or(DEFAULT_UNIQUE_FOR);
        Some((key, window))
    }

    /// Parses and validates a message body. Checks the version first so a v2 body says so
    /// instead of failing on a field it renamed.
    pub fn parse(body: &[u8]) -> Result<Envelope, EnvelopeError> {
        // Hot path: one pass straight into the struct. Only a body that fails it (or breaks a
        // rule serde can't express) takes the slower path below, which finds the precise reason.
        if let Ok(env) = serde_json::from_slice::<Envelope>(body)
            && env.v == ENVELOPE_VERSION
            && [&env.id, &env.kind, &env.queue]
                .iter()
                .all(|s| !s.trim().is_empty())
            && QueueName::is_valid(&env.queue)
            && env.unique_for.is_none_or(unique_for_ok)
        {
            return Ok(env);
        }
        Self::parse_diagnosed(body)
    }

    fn parse_diagnosed(body: &[u8]) -> Result<Envelope, EnvelopeError> {
        let value: Value =
            serde_json::from_slice(body).map_err(|e| EnvelopeError::NotJson(e.to_string()))?;
        let obj = value.as_object().ok_or(EnvelopeError::NotAnObject)?;
        match obj.get("v") {
            Some(Value::Number(n)) if n.as_u64() == Some(u64::from(ENVELOPE_VERSION)) => {}
            other => return Err(EnvelopeError::Version(other.cloned())),
        }
        for field in ["id", "kind", "queue"] {
            match obj.get(field) {
                // The queue is named in broker-side names: checked here, where it enters.
                Some(Value::String(s)) if field == "queue" && !s.trim().is_empty() => {
                    if let Err(e) = QueueName::new(s.as_str()) {
                        return Err(EnvelopeError::Field {
                            field: field.into(),
                            reason: e.to_string(),
                        });
                    }
                }
                Some(Value::String(s)) if !s.trim().is_empty() => {}
                Some(Value::String(_)) => {
                    return Err(EnvelopeError::Field {
                        field: field.into(),
                        reason: "must not be empty".into(),
                    });
                }
                Some(_) => {
                    return Err(EnvelopeError::Field {
                        field: field.into(),
                        reason: "must be a string".into(),
                    });
                }
                None => {
                    return Err(EnvelopeError::Field {
                        field: field.into(),
                        reason: "is missing".into(),
                    });
                }
            }
        }
        if let Some(v) = obj
            .get("unique_for")
            .filter(|v| !v.is_null() && !v.is_number())
        {
            return Err(EnvelopeError::Field {
                field: "unique_for".into(),
                reason: format!("must be a positive number of seconds, not {v}"),
            });
        }
        let env: Envelope =
            serde_json::from_value(value).map_err(|e| field_error(&e.to_string()))?;
        if let Some(s) = env.unique_for.filter(|s| !unique_for_ok(*s)) {
            return Err(EnvelopeError::Field {
                field: "unique_for".into(),
                reason: format!("must be a positive number of seconds, not {s}"),
            });
        }
        Ok(env)
    }

    /// The JSON body written to the broker.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an Envelope always serializes")
    }

    /// Appends a failure to the history and counts the attempt.
    pub fn record_failure(&mut self, error: impl Into<String>, worker: impl Into<String>) {
        self.attempt += 1;
        self.errors.push(ErrorRecord {
            attempt: self.attempt,
            at: Utc::now(),
            error: error.into(),
            worker: worker.into(),
            extra: Map::new(),
        });
    }

    /// Whether no attempt is left after the ones already failed.
    pub fn attempts_exhausted(&self) -> bool {
        self.attempt >= self.max_attempts
    }

    /// The envelope as a DLQ replay sends it back: attempts reset, history kept, due now,
    /// marked replayed (so its `dedup_key` can't make it a duplicate).
    pub fn for_replay(&self) -> Envelope {
        let mut e = self.clone();
        e.attempt = 0;
        e.run_at = None;
        e.replayed_at = Some(Utc::now());
        e
    }

    /// The delay until `run_at`, or zero when it is due.
    pub fn delay(&self) -> std::time::Duration {
        self.run_at
            .and_then(|at| (at - Utc::now()).to_std().ok())
            .unwrap_or_default()
    }
}

/// A window the broker-side code can use: positive, finite, at most ten years.
fn unique_for_ok(secs: f64) -> bool {
    secs.is_finite() && secs > 0.0 && secs <= 10.0 * 365.0 * 86_400.0
}

/// serde's messages read like "missing field `enqueued_at` at line 1 column 80": pull out the
/// field name so the DLQ reason names it.
fn field_error(msg: &str) -> EnvelopeError {
    let field = msg
        .split('`')
        .nth(1)
        .map(str::to_owned)
        .unwrap_or_else(|| "?".into());
    EnvelopeError::Field {
        field,
        reason: msg.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn round_trip_keeps_unknown_fields() {
        let body = json!({"v":1,"id":"a","kind":"k","queue":"q","payload":{"x":1},
            "attempt":2,"max_attempts":5,"enqueued_at":"2026-11-22T10:00:00Z","run_at":null,
            "dedup_key":null,"errors":[{"attempt":1,"at":"2026-11-22T10:00:01Z","error":"boom",
            "worker":"w","trace":"t1"}],"tenant":"acme","nested":{"a":[1,2]}});
        let env = Envelope::parse(body.to_string().as_bytes()).unwrap();
        assert_eq!(env.extra.get("tenant"), Some(&json!("acme")));
        assert_eq!(env.errors[0].extra.get("trace"), Some(&json!("t1")));
        let back: Value = serde_json::from_slice(&env.to_bytes()).unwrap();
        assert_eq!(back, body);
    }

    #[test]
    fn minimal_body_gets_defaults() {
        let env = Envelope::parse(
            br#"{"v":1,"id":"a","kind":"k","queue":"q","enqueued_at":"2026-11-22T10:00:00Z"}"#,
        )
        .unwrap();
        assert_eq!(env.attempt, 0);
        assert_eq!(env.max_attempts, DEFAULT_MAX_ATTEMPTS);
        assert!(env.errors.is_empty());
        assert_eq!(env.payload, Value::Null);
    }

    #[test]
    fn rejects_bad_bodies_with_reasons() {
        let cases: &[(&[u8], &str)] = &[
            (b"not json", "not valid JSON"),
            (b"[1,2]", "not an object"),
            (br#"{"v":2,"id":"a","kind":"k","queue":"q"}"#, "version 2 "),
            (br#"{"id":"a","kind":"k","queue":"q"}"#, "`v` is missing"),
            (
                br#"{"v":1,"kind":"k","queue":"q"}"#,
                "`id` is invalid: is missing",
            ),
            (
                br#"{"v":1,"id":"a","kind":"","queue":"q"}"#,
                "`kind` is invalid: must not be empty",
            ),
            (
                br#"{"v":1,"id":"a","kind":7,"queue":"q"}"#,
                "`kind` is invalid: must be a string",
            ),
            (
                br#"{"v":1,"id":"a","kind":"k","queue":"q"}"#,
                "`enqueued_at`",
            ),
            (
                br#"{"v":1,"id":"a","kind":"k","queue":"q","enqueued_at":"yesterday"}"#,
                "input contains invalid characters",
            ),
        ];
        for (body, want) in cases {
            let err = Envelope::parse(body).unwrap_err().to_string();
            assert!(
                err.contains(want),
                "{:?}: {err}",
                String::from_utf8_lossy(body)
            );
        }
    }

    /// The reason lands in the DLQ, so it shows the value as the producer wrote it.
    #[test]
    fn version_reason_shows_the_value_plainly() {
        let cases: &[(&[u8], &str)] = &[
            (
                br#"{"v":2,"id":"a","kind":"k","queue":"q"}"#,
                "unsupported envelope version 2 (this worker reads v1)",
            ),
            (
                br#"{"v":"2","id":"a","kind":"k","queue":"q"}"#,
                "unsupported envelope version '2' (this worker reads v1)",
            ),
            (
                br#"{"v":null,"id":"a","kind":"k","queue":"q"}"#,
                "unsupported envelope version null (this worker reads v1)",
            ),
            (
                br#"{"id":"a","kind":"k","queue":"q"}"#,
                "unsupported envelope version: field `v` is missing (this worker reads v1)",
            ),
        ];
        for (body, want) in cases {
            assert_eq!(Envelope::parse(body).unwrap_err().to_string(), *want);
        }
    }

    #[test]
    fn queue_is_checked_where_it_enters() {
        let body =
            br#"{"v":1,"id":"a","kind":"k","queue":"a b","enqueued_at":"2026-11-22T10:00:00Z"}"#;
        let err = Envelope::parse(body).unwrap_err();
        assert_eq!(
            err.to_string(),
            "envelope field `queue` is invalid: queue name `a b` must be 1-64 characters of [A-Za-z0-9_-]"
        );
        let long = format!(
            r#"{{"v":1,"id":"a","kind":"k","queue":"{}","enqueued_at":"2026-11-22T10:00:00Z"}}"#,
            "q".repeat(65)
        );
        assert!(matches!(
            Envelope::parse(long.as_bytes()),
            Err(EnvelopeError::Field { field, .. }) if field == "queue"
        ));
    }

    /// docs/envelope.schema.json is what other languages code against: keep it in step.
    #[test]
    fn json_schema_matches_the_type() {
        let schema: Value =
            serde_json::from_str(include_str!("../../docs/envelope.schema.json")).unwrap();
        let props = schema["properties"].as_object().unwrap();
        let mut env = Envelope::new("k", "q", json!({"a": 1}));
        env.record_failure("e", "w");
        let written = serde_json::to_value(&env).unwrap();
        for key in written.as_object().unwrap().keys() {
            assert!(props.contains_key(key), "schema lacks `{key}`");
        }
        let item_props = props["errors"]["items"]["properties"].as_object().unwrap();
        for key in written["errors"][0].as_object().unwrap().keys() {
            assert!(item_props.contains_key(key), "schema lacks errors[].{key}");
        }
        // Exactly the schema's required fields are needed to parse.
        let required: Vec<&str> = schema["required"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        let minimal =
            json!({"v":1,"id":"a","kind":"k","queue":"q","enqueued_at":"2026-11-22T10:00:00Z"});
        assert!(Envelope::parse(minimal.to_string().as_bytes()).is_ok());
        for field in &required {
            let mut body = minimal.clone();
            body.as_object_mut().unwrap().remove(*field);
            assert!(
                Envelope::parse(body.to_string().as_bytes()).is_err(),
                "`{field}` is required by the schema but not by the parser"
            );
        }
        assert_eq!(required.len(), minimal.as_object().unwrap().len());
    }

    #[test]
    fn failure_history_and_replay() {
        let mut env = Envelope::new("k", "q", json!({})).with_max_attempts(2);
        env.record_failure("one", "w1");
        assert!(!env.attempts_exhausted());
        env.record_failure("two", "w2");
        assert!(env.attempts_exhausted());
        assert_eq!(
            env.errors.iter().map(|e| e.attempt).collect::<Vec<_>>(),
            [1, 2]
        );
        let replay = env.for_replay();
        assert!(replay.replayed_at.is_some());
        assert_eq!(replay.attempt, 0);
        assert_eq!(replay.errors.len(), 2);
        assert_eq!(replay.id, env.id);
    }

    #[test]
    fn dedup_applies_to_jobs_not_yet_accepted() {
        use std::time::Duration;
        let plain = Envelope::new("k", "q", json!({}));
        assert_eq!(plain.dedup(), None);
        let keyed = plain.clone().with_dedup_key("doc-42");
        assert_eq!(keyed.dedup(), Some(("doc-42", DEFAULT_UNIQUE_FOR)));
        let short = keyed.clone().with_unique_for(Duration::from_millis(2500));
        assert_eq!(short.dedup(), Some(("doc-42", Duration::from_millis(2500))));
        let mut retried = short.clone();
        retried.record_failure("boom", "w");
        assert_eq!(retried.dedup(), None, "a retry is never a duplicate");
        assert_eq!(short.for_replay().dedup(), None, "nor is a replay");
        // The field is written only when set, and read back.
        let body = String::from_utf8(short.to_bytes()).unwrap();
        assert!(body.contains(r#""unique_for":2.5"#), "{body}");
        assert!(
            !String::from_utf8(keyed.to_bytes())
                .unwrap()
                .contains("unique_for")
        );
        assert_eq!(Envelope::parse(body.as_bytes()).unwrap(), short);
    }

    #[test]
    fn bad_unique_for_is_rejected_naming_the_field() {
        for (v, want) in [
            ("0", "must be a positive number of seconds, not 0"),
            ("-3", "must be a positive number of seconds, not -3"),
            ("1e12", "must be a positive number of seconds"),
            (r#""1h""#, "unique_for"),
        ] {
            let body = format!(
                r#"{{"v":1,"id":"a","kind":"k","queue":"q","enqueued_at":"2026-11-22T10:00:00Z","dedup_key":"d","unique_for":{v}}}"#
            );
            let err = Envelope::parse(body.as_bytes()).unwrap_err();
            assert!(
                matches!(&err, EnvelopeError::Field { field, .. } if field == "unique_for"),
                "{v}: {err}"
            );
            assert!(err.to_string().contains(want), "{v}: {err}");
        }
    }
}
