//! SQL identifiers and database-error classification shared by the handlers.
//!
//! Names that come from config or payloads are checked against a strict pattern here, then
//! always emitted double-quoted; names that come from payloads are additionally resolved against
//! the catalog by the handler before use.

use std::fmt;

use sha2::{Digest, Sha256};

use crate::JobError;

/// Longest identifier PostgreSQL keeps (NAMEDATALEN - 1).
pub const MAX_IDENT_LEN: usize = 63;

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentError {
    #[error("empty identifier")]
    Empty,
    #[error("identifier '{0}' is longer than 63 bytes")]
    TooLong(String),
    #[error(
        "identifier '{0}' must start with a letter or '_' and contain only letters, digits, '_' or '$'"
    )]
    BadChars(String),
    #[error("name '{0}' must be `table` or `schema.table`")]
    TooManyParts(String),
}

/// Checks one identifier: `[A-Za-z_][A-Za-z0-9_$]*`, at most 63 bytes. Case is kept (the name
/// is quoted when used), so `Events` and `events` are different tables.
pub fn check_ident(s: &str) -> Result<(), IdentError> {
    let mut chars = s.chars();
    let Some(first) = chars.next() else {
        return Err(IdentError::Empty);
    };
    if s.len() > MAX_IDENT_LEN {
        return Err(IdentError::TooLong(s.to_owned()));
    }
    let ok_first = first.is_ascii_alphabetic() || first == '_';
    if !ok_first || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$') {
        return Err(IdentError::BadChars(s.to_owned()));
    }
    Ok(())
}

/// `ident` as a double-quoted SQL identifier.
pub fn quote_ident(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// `schema.name` or a bare `name`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct QualifiedName {
    /// `None`: resolved through `search_path`.
    pub schema: Option<String>,
    /// The relation name.
    pub name: String,
}

impl QualifiedName {
    /// Parses and checks `schema.name` / `name`.
    pub fn parse(s: &str) -> Result<QualifiedName, IdentError> {
        let parts: Vec<&str> = s.split('.').collect();
        match parts.as_slice() {
            [name] => {
                check_ident(name)?;
                Ok(QualifiedName {
                    schema: None,
                    name: (*name).to_owned(),
                })
            }
            [schema, name] => {
                check_ident(schema)?;
                check_ident(name)?;
                Ok(QualifiedName {
                    schema: Some((*schema).to_owned()),
                    name: (*name).to_owned(),
                })
            }
            _ => Err(IdentError::TooManyParts(s.to_owned())),
        }
    }

    /// A schema-qualified name.
    pub fn new(schema: &str, name: &str) -> QualifiedName {
        QualifiedName {
            schema: Some(schema.to_owned()),
            name: name.to_owned(),
        }
    }

    /// The quoted form for SQL text (and for `to_regclass`).
    pub fn quoted(&self) -> String {
        match &self.schema {
            Some(s) => format!("{}.{}", quote_ident(s), quote_ident(&self.name)),
            None => quote_ident(&self.name),
        }
    }
}

impl fmt::Display for QualifiedName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.schema {
            Some(s) => write!(f, "{s}.{}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

/// A 64-bit advisory-lock key for `(namespace, name)`, stable across processes and releases
/// (unlike `hashtext`, which PostgreSQL does not promise to keep).
pub fn lock_key(namespace: &str, name: &str) -> i64 {
    let mut h = Sha256::new();
    h.update(namespace.as_bytes());
    h.update([0]);
    h.update(name.as_bytes());
    let d = h.finalize();
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    i64::from_be_bytes(b)
}

/// PostgreSQL's "undefined_table".
const UNDEFINED_TABLE: &str = "42P01";

/// Appended to an undefined-table error: the one command that creates jobfleet's tables.
pub const MIGRATE_HINT: &str = " (if it is one of jobfleet's tables, the database schema is missing or behind: run `worker migrate`; `worker migrate --status` lists what is applied)";

/// Maps a database error to a retry decision: errors that another attempt cannot fix
/// (undefined table/column, bad data, permission) are permanent; the rest (connection loss,
/// deadlock, serialization failure, timeouts) are retried.
pub fn db_error(context: &str, e: sqlx::Error) -> JobError {
    let mut msg = format!("{context}: {e}");
    match &e {
        sqlx::Error::Database(db) => {
            let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
            if code == UNDEFINED_TABLE {
                // The worker does not migrate at start (docs/decisions.md, "One migrator"):
                // name the command, since a missing jobfleet table means exactly that.
                msg.push_str(MIGRATE_HINT);
            }
            // Class 42: syntax/undefined objects/privileges (a config pointing at the wrong
            // table); class 22: data exceptions; 23: integrity violations other than the
            // races that a retry resolves.
            let permanent = code.starts_with("42")
                || code.starts_with("22")
                || (code.starts_with("23") && code != "23505" && code != "23503");
            if permanent {
                JobError::Permanent(msg)
            } else {
                JobError::Retry(msg)
            }
        }
        sqlx::Error::ColumnDecode { .. } | sqlx::Error::ColumnNotFound(_) => {
            JobError::Permanent(msg)
        }
        _ => JobError::Retry(msg),
    }
}

/// Whether `e` is PostgreSQL giving up on a lock: `lock_timeout` expired (55P03) or the
/// statement was chosen as a deadlock victim (40P01). Both leave nothing half done and are
/// worth another attempt after a pause.
pub fn is_lock_conflict(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => matches!(db.code().as_deref(), Some("55P03" | "40P01")),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_and_quoted() {
        let q = QualifiedName::parse("app.Events").unwrap();
        assert_eq!(q.quoted(), "\"app\".\"Events\"");
        assert_eq!(q.to_string(), "app.Events");
        assert_eq!(QualifiedName::parse("t").unwrap().quoted(), "\"t\"");
        for bad in [
            "",
            "a.b.c",
            "a;drop",
            "x\"y",
            "1abc",
            "a.",
            ".a",
            "a b",
            &"x".repeat(64),
        ] {
            assert!(QualifiedName::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }

    #[test]
    fn refusals_quote_the_name_plainly() {
        assert_eq!(
            check_ident("a;drop").unwrap_err().to_string(),
            "identifier 'a;drop' must start with a letter or '_' and contain only letters, \
             digits, '_' or '$'"
        );
        assert_eq!(
            QualifiedName::parse("a.b.c").unwrap_err().to_string(),
            "name 'a.b.c' must be `table` or `schema.table`"
        );
        assert_eq!(
            check_ident(&"x".repeat(64)).unwrap_err().to_string(),
            format!("identifier '{}' is longer than 63 bytes", "x".repeat(64))
        );
    }

    #[test]
    fn lock_keys_are_stable_and_distinct() {
        assert_eq!(lock_key("a", "b"), lock_key("a", "b"));
        assert_ne!(lock_key("a", "b"), lock_key("a", "c"));
        assert_ne!(lock_key("ab", ""), lock_key("a", "b"));
    }
}
