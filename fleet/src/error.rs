//! Why a control-state operation failed.

/// A failed read or write of the fleet's control state.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The database could not be reached or refused the statement; `what` says which operation.
    #[error("fleet control state ({what}): {source}")]
    Database {
        what: &'static str,
        #[source]
        source: sqlx::Error,
    },
    /// The operator asked for something that makes no sense; the message names the value.
    #[error("{0}")]
    Invalid(String),
}

impl Error {
    /// Wraps a database error with the operation it failed in.
    pub fn db(what: &'static str) -> impl FnOnce(sqlx::Error) -> Error {
        move |source| Error::Database { what, source }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
